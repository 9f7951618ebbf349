"""mkfs: a fresh superblock and an empty log, exactly as upstream's __famfs_mkfs (docs/format.md §1)."""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from famfs import format as fmt
from famfs.device import Device, DeviceError, capacity_uuid, probe
from famfs.identity import Role, role_of, system_uuid
from famfs.units import describe_size

ZERO_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class MkfsResult:
    superblock: fmt.Superblock
    header: fmt.LogHeader


def minimum_device_size(log_len: int) -> int:
    """Superblock, log, and at least one allocation unit of data."""
    return fmt.data_start(log_len) + fmt.ALLOC_UNIT


def create_image(path: str | os.PathLike[str], size: int) -> None:
    """A sparse regular file of `size` bytes: the emulated device."""
    with open(path, "ab") as image:
        if image.tell() > size:
            raise DeviceError(errno.EEXIST, f"{path}: already {describe_size(image.tell())}, larger than --size {describe_size(size)}")
        image.truncate(size)


def mkfs(
    device_path: str,
    *,
    uuid_file: Path,
    log_len: int = fmt.DEFAULT_LOG_LEN,
    force: bool = False,
    kill: bool = False,
    dev_uuid: uuid.UUID | None = None,
    fs_uuid: uuid.UUID | None = None,
) -> MkfsResult | None:
    """Format `device_path`. With `kill` (and `force`), only invalidate an existing superblock.

    Refuses a device holding a valid famfs (or one of another version) unless `force`.
    """
    try:
        fmt.check_log_len(log_len)
    except fmt.FormatError as err:
        raise ValueError(str(err)) from None
    info = probe(device_path)
    if info.size < minimum_device_size(log_len):
        raise DeviceError(errno.ENOSPC, f"{device_path}: {describe_size(info.size)} is too small: famfs with a "
                          f"{describe_size(log_len)} log needs at least {describe_size(minimum_device_size(log_len))}")
    with Device(device_path, writable=True) as device, device.exclusive():
        holds_famfs, existing = _existing_famfs(device)
        if holds_famfs and not force:
            owner = " (owned by another host)" if existing and role_of(existing, uuid_file) is Role.CLIENT else ""
            raise FileExistsError(f"{device_path}: already holds a famfs file system{owner}; use --force to overwrite")
        if kill:
            device.write(0, b"\0" * 8)  # ts_magic only, as upstream's mkfs -k
            return None
        master = system_uuid(uuid_file, create=True)
        assert master is not None
        device_uuid = dev_uuid or default_dev_uuid(device_path)
        superblock = fmt.Superblock(
            log_len=log_len, dev_size=info.size, fs_uuid=fs_uuid or uuid.uuid4(), dev_uuid=device_uuid,
            dd_uuid=device_uuid, system_uuid=master, daxdev_name=device_path,
        )
        header = fmt.LogHeader.fresh(log_len)
        zeros = b"\0" * ZERO_CHUNK
        for offset in range(fmt.LOG_OFFSET, fmt.LOG_OFFSET + log_len, ZERO_CHUNK):
            device.write(offset, zeros)
        device.write(fmt.LOG_OFFSET, header.pack())
        # All of the superblock region beyond the struct is zero too (upstream leaves it as found).
        device.write(0, superblock.pack() + b"\0" * (ZERO_CHUNK - fmt.SUPERBLOCK.size))
        for offset in range(ZERO_CHUNK, fmt.SUPERBLOCK_SIZE, ZERO_CHUNK):
            device.write(offset, zeros)
        return MkfsResult(superblock, header)


def default_dev_uuid(device_path: str) -> uuid.UUID:
    tag = capacity_uuid(device_path)
    if tag:
        try:
            return uuid.UUID(tag)
        except ValueError:
            pass
    return uuid.uuid4()


def _existing_famfs(device: Device) -> tuple[bool, fmt.Superblock | None]:
    """Whether the device holds famfs of any version, and its superblock if it is one we read."""
    raw = device.read(0, fmt.SUPERBLOCK.size)
    try:
        return True, fmt.Superblock.unpack(raw)
    except fmt.FormatError:
        return int.from_bytes(raw[:8], "little") == fmt.SUPER_MAGIC, None
