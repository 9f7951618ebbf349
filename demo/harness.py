"""Harness pieces shared by the demo, the tests and the benchmarks: upstream-made reference
images (kept in tests/data, read here as data), bounded waits, shadow directories laid out the
agent's way, and famfs-fuse-mount as a child process that is always unmounted."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.ownership import OwnerMap
from famfs import listing
from famfs.shadowdir import DIR_XATTR, FILE_XATTR, LISTINGS_DIR, OWNERS_FILE, DirRecord, encode_file_record
from famfs.shadowyaml import emit_file_yaml
from famfs.units import parse_size

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"  # upstream-made reference images (tests/data/README.md)
REFERENCE_IMAGES = ("a_empty", "b_mixed", "c_full", "d_striped")
BIN = Path(sys.executable).parent
MOUNT_CLI = str(BIN / "famfs-fuse-mount")
WAIT_S = 10.0  # bounded waits only: never a timing assertion

T = TypeVar("T")


def reference_info(name: str) -> dict[str, str]:
    """The key=value pairs of a reference image's info.txt."""
    pairs: dict[str, str] = {}
    for word in (DATA / name / "info.txt").read_text().split():
        if "=" in word:
            key, value = word.split("=", 1)
            pairs[key] = value
    return pairs


def materialize_reference(name: str, target: Path) -> Path:
    """A whole sparse device image of reference image `name`."""
    with gzip.open(DATA / name / "meta.bin.gz") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.truncate(target, parse_size(reference_info(name)["devsize"]))
    return target


def wait_for(check: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """Poll until check() returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


# Hand-made shadow trees whose entries are logged on a device, as the agent would (empty_shadow
# with a device): their files and directories are then served by a mount, which serves nothing
# the log does not hold (docs/security.md).
_HAND_DEVICES: dict[Path, Path] = {}


def empty_shadow(shadow: Path, device: Path | None = None) -> Path:
    """A shadow dir with an empty root/ and a staging dir, as the agent lays it out. With
    `device`, put_file and put_dir also log what they make on it and keep the owner map, as
    the master and the agent would; without, nothing put there is ever served by a mount."""
    (shadow / "root").mkdir(parents=True, mode=0o755)
    (shadow / ".agent" / "staging").mkdir(parents=True, mode=0o700)
    (shadow / ".agent" / LISTINGS_DIR).mkdir(mode=0o700)
    shadow.chmod(0o755)
    if device is not None:
        _HAND_DEVICES[shadow] = device
        with Device(str(device)) as opened:
            sb = FamfsLog(opened).superblock
        owners = OwnerMap(sb.dev_size // sb.alloc_unit, sb.alloc_unit,
                          fmt.round_up(fmt.data_start(sb.log_len), sb.alloc_unit) // sb.alloc_unit, time.time_ns())
        (shadow / ".agent" / OWNERS_FILE).write_bytes(owners.image())
    return shadow


def _log(shadow: Path, entry: fmt.Entry) -> int | None:
    """Append `entry` to the log of the shadow's hand device, if it has one; its index."""
    device = _HAND_DEVICES.get(shadow)
    if device is None:
        return None
    with Device(str(device), writable=True) as opened:
        return FamfsLog(opened).append([entry])


def _logged_index(device: Path, entry: fmt.FileEntry) -> int:
    """The index of the last FILE entry naming entry's path (a file a writer has logged)."""
    with Device(str(device)) as opened:
        famfs_log = FamfsLog(opened)
        for index in range(famfs_log.next_index() - 1, -1, -1):
            found = famfs_log.entry(index)
            if isinstance(found, fmt.FileEntry) and found.relpath == entry.relpath:
                return index
    raise LookupError(f"{device}: no FILE entry for {entry.relpath}")


def own_file(shadow: Path, entry: fmt.FileEntry, *, logged: bool = False) -> int | None:
    """Log `entry` on the shadow's hand device (`logged`: a writer has, find it) and give its
    units to it in the owner map (what the master and then the agent do before the agent's
    shadow file appears); its log index (None without a hand device)."""
    device = _HAND_DEVICES.get(shadow)
    if device is None:
        return None
    index = _logged_index(device, entry) if logged else _log(shadow, entry)
    assert index is not None
    with Device(str(_HAND_DEVICES[shadow])) as opened:
        sb = FamfsLog(opened).superblock
    fd = os.open(shadow / ".agent" / OWNERS_FILE, os.O_RDWR)
    try:
        OwnerMap.load(fd, sb.dev_size // sb.alloc_unit, sb.alloc_unit).set(entry.all_extents(), index + 1)
    finally:
        os.close(fd)
    return index


def own_dir(shadow: Path, path: Path, relpath: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    """Log a MKDIR of `relpath` on the shadow's hand device and record it on directory `path`
    (trusted.famfs.dir), made 0755 as the agent makes it."""
    path.chmod(0o755)
    index = _log(shadow, fmt.MkdirEntry(relpath=relpath, mode=mode, uid=uid, gid=gid))
    if index is not None:
        os.setxattr(path, DIR_XATTR, DirRecord(index, mode, uid, gid).encode())


def put_file(shadow: Path, entry: fmt.FileEntry, *, logged: bool = False) -> Path:
    """Write a shadow file the agent's way: logged (`logged`: already, by a writer) and owned
    first (with a hand device), then whole, in staging, renamed into root/."""
    index = own_file(shadow, entry, logged=logged)
    return put_yaml(shadow, entry.relpath, emit_file_yaml(entry), index)


def put_dir(shadow: Path, relpath: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Path:
    """A directory made the agent's way: logged (with a hand device), 0755 with its logged
    attributes in trusted.famfs.dir, renamed into root/."""
    staged = shadow / ".agent" / "staging" / f"{os.getpid()}.{time.monotonic_ns()}"
    staged.mkdir()
    own_dir(shadow, staged, relpath, mode, uid, gid)
    target = shadow / "root" / relpath
    staged.rename(target)
    return target


def put_yaml(shadow: Path, relpath: str, text: bytes, index: int | None = None) -> Path:
    """`text` renamed into root/`relpath`; `index`: recorded in FILE_XATTR and in its directory's
    record (famfs.listing), as the agent records a file's owner-map entry."""
    staged = shadow / ".agent" / "staging" / f"{os.getpid()}.{time.monotonic_ns()}"
    staged.write_bytes(text)
    if index is not None:
        os.setxattr(staged, FILE_XATTR, encode_file_record(index))
    target = shadow / "root" / relpath
    staged.rename(target)
    if index is not None:
        directory, _, name = os.fsencode(relpath).rpartition(b"/")
        listing.append(os.fsencode(shadow / ".agent" / LISTINGS_DIR), directory, [(name, index)])
    return target


class Mount:
    """famfs-fuse-mount --foreground as a child process; always unmounted on exit."""

    def __init__(self, shadow: Path, device: Path, mountpoint: Path, *options: str, log: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.shadow, self.device, self.mountpoint = shadow, device, mountpoint
        self.options = options
        self.env = env  # None: this process's (its host identity decides master or client)
        self.log_path = log or mountpoint.parent / f"{mountpoint.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(exist_ok=True)
        args = [MOUNT_CLI, "--foreground", "--shadow", str(self.shadow), "--device", str(self.device)]
        for option in self.options:
            args += ["-o", option]
        with open(self.log_path, "ab") as log:
            process = self.process = subprocess.Popen([*args, str(self.mountpoint)], stdout=log, stderr=log,
                                                      env=self.env)
        wait_for(lambda: os.path.ismount(self.mountpoint) or process.poll() is not None, "the mount")
        assert process.poll() is None, f"famfs-fuse-mount exited: {self.log()}"
        os.listdir(self.mountpoint)  # the kernel's INIT has been answered
        return self

    def __exit__(self, *exc: object) -> None:
        unmount(self.mountpoint, self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait(timeout=WAIT_S)


def unmount(mountpoint: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    """fusermount3 -u, then the process must end; a lazy umount and a kill as a last resort."""
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=WAIT_S)
    if process is not None:
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT_S)
    if os.path.ismount(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=WAIT_S)
