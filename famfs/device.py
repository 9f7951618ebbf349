"""Device access: one abstraction over a devdax character device, a pmem block device and a
regular file (the emulated device of the demo and the tests).

The whole device is mapped once, shared; every read and write of famfs metadata and file data
goes through that mapping, so all processes on a host see one coherent copy. Between hosts whose
shared memory is not cache-coherent, the device's `coherence` policy (famfs.cacheflush: the
host's [host] coherence) writes back every write before the next and drops the lines of every read
first; readers of the raw mapping take it through `fresh()`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from famfs import cacheflush

BLKGETSIZE64 = 0x80081272
SYS_DAX = Path("/sys/bus/dax/devices")
FSDEV_DAX_DRIVER = "fsdev_dax"  # the famfs kernel's dax driver: no mmap of the character device
DEVDAX_DEFAULT_ALIGN = 0x200000  # devdax's own default; equal to famfs's allocation unit


class DeviceError(OSError):
    """A device that cannot be used; the message names the path and the reason."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    path: str
    kind: str  # "devdax", "pmem" or "file"
    size: int


def probe(path: str | os.PathLike[str]) -> DeviceInfo:
    """What kind of device `path` is and how big, with a clear error for anything unusable."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DeviceError(errno.ENOENT, f"{path}: no such device or image file") from None
    except PermissionError:
        raise DeviceError(errno.EACCES, f"{path}: permission denied") from None
    if stat.S_ISDIR(st.st_mode):
        raise DeviceError(errno.EISDIR, f"{path}: is a directory, not a device or image file")
    if stat.S_ISREG(st.st_mode):
        return DeviceInfo(path, "file", st.st_size)
    if stat.S_ISCHR(st.st_mode):
        return DeviceInfo(path, "devdax", _devdax_size(path, st))
    if stat.S_ISBLK(st.st_mode):
        return DeviceInfo(path, "pmem", _block_size(path))
    raise DeviceError(errno.ENODEV, f"{path}: not a dax device, block device or regular file")


def _devdax_size(path: str, st: os.stat_result) -> int:
    sysfs = SYS_DAX / os.path.basename(os.path.realpath(path)) / "size"
    if not sysfs.exists():
        sysfs = Path(f"/sys/dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/size")
    try:
        return int(sysfs.read_text().strip())
    except (OSError, ValueError) as err:
        raise DeviceError(errno.ENODEV, f"{path}: character device but not devdax (no size in {sysfs}: {err})") from None


def _block_size(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        raise DeviceError(errno.EACCES, f"{path}: permission denied") from None
    try:
        return struct.unpack("<Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
    finally:
        os.close(fd)


def map_alignment(info: DeviceInfo, sys_dax: Path = SYS_DAX) -> int:
    """The granule in which pieces of this device may be mapped (offset, length and address).

    Image files and pmem block devices: the page size. devdax: the device's `align` (2 MiB unless
    sysfs says otherwise). A devdax bound to fsdev_dax (the famfs kernel's driver, kernel 7.x)
    cannot be mmapped at all, and a device aligned to more than famfs's 2 MiB allocation unit
    cannot map one 2 MiB extent: both are refused here, with what to do.
    """
    if info.kind != "devdax":
        return mmap.PAGESIZE
    base = sys_dax / os.path.basename(os.path.realpath(info.path))
    driver = os.path.basename(os.readlink(base / "driver")) if (base / "driver").is_symlink() else None
    if driver == FSDEV_DAX_DRIVER:
        raise DeviceError(errno.ENOTSUP, f"{info.path}: bound to the {FSDEV_DAX_DRIVER} driver (the famfs kernel's), "
                          f"which cannot be mmapped; rebind it to device_dax (daxctl reconfigure-device "
                          f"--mode=devdax {base.name}) or use the famfs kernel mount")
    try:
        align = int((base / "align").read_text().strip())
    except FileNotFoundError:
        align = DEVDAX_DEFAULT_ALIGN  # kernels before 5.10 have no align file: devdax maps in 2 MiB
    except (OSError, ValueError) as err:
        raise DeviceError(errno.ENODEV, f"{info.path}: cannot read {base / 'align'}: {err}") from None
    if align > DEVDAX_DEFAULT_ALIGN:
        raise DeviceError(errno.EINVAL, f"{info.path}: devdax alignment is {align:#x} ({align >> 20} MiB); famfs extents "
                          f"are {DEVDAX_DEFAULT_ALIGN >> 20} MiB pieces, so this device cannot map them: "
                          f"re-create it with --align {DEVDAX_DEFAULT_ALIGN >> 20}M (daxctl create-device)")
    return max(align, mmap.PAGESIZE)


def capacity_uuid(path: str) -> str | None:
    """The capacity tag of a CXL DCD allocation, where sysfs exposes one for this dax device."""
    base = SYS_DAX / os.path.basename(os.path.realpath(path))
    for name in ("uuid", "tag"):
        try:
            text = (base / name).read_text().strip()
        except OSError:
            continue
        if text and text.strip("0-") != "":
            return text
    return None


class Device:
    """An open device (or image file) with one shared mapping of all of it."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False,
                 coherence: cacheflush.Coherence | None = None) -> None:
        self.coherence = cacheflush.host() if coherence is None else coherence
        self.info = probe(path)
        self.path = self.info.path
        self.writable = writable
        try:
            self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        except PermissionError:
            raise DeviceError(errno.EACCES, f"{self.path}: permission denied (open for {'write' if writable else 'read'})") from None
        if self.info.size == 0:
            os.close(self.fd)
            raise DeviceError(errno.EINVAL, f"{self.path}: empty device")
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        try:
            self.map = mmap.mmap(self.fd, self.info.size, mmap.MAP_SHARED, access=access)
        except OSError as err:
            os.close(self.fd)
            raise DeviceError(err.errno, f"{self.path}: cannot map {self.info.size} bytes: {err.strerror}") from None

    @property
    def size(self) -> int:
        return self.info.size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise DeviceError(errno.EINVAL, f"{self.path}: read [{offset:#x}, {offset + length:#x}) past the device end {self.size:#x}")
        self.coherence.invalidate(self.map, offset, length)
        return self.map[offset:offset + length]

    def fresh(self, offset: int, length: int) -> mmap.mmap:
        """The whole mapping, for a reader about to read [offset, offset+length) of it in place
        (the host table, the compaction record, a search of the log): those lines invalidated."""
        self.coherence.invalidate(self.map, offset, length)
        return self.map

    def flush(self, offset: int, length: int) -> None:
        """Write back [offset, offset+length), stored through another mapping of the device (a
        file's data), before anything that points at it is written."""
        self.coherence.flush(self.map, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Store bytes. On an image file this is pwrite(2) into the same page cache the mapping
        shows, which also raises inotify IN_MODIFY: followers on this host wake at once. Written
        back (coherence) before it returns: what is written next may depend on it."""
        if offset < 0 or offset + len(data) > self.size:
            raise DeviceError(errno.EINVAL, f"{self.path}: write [{offset:#x}, {offset + len(data):#x}) past the device end {self.size:#x}")
        if self.info.kind == "file":
            os.pwrite(self.fd, data, offset)
        else:
            self.map[offset:offset + len(data)] = data
        self.coherence.flush(self.map, offset, len(data))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialize writers across processes of this host: flock on the device or image."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
