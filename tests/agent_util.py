"""Helpers the agent tests share: devices made by mkfs, entries appended by the writer's own
code (or raw slots), the agent CLI as a subprocess, and shadow-tree snapshots."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from demo.harness import wait_for
from famfs import format as fmt
from famfs import hosts
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.hosts import HostRecord
from famfs.master.mkfs import create_image, mkfs
from famfs.shadowdir import DIR_XATTR, DirRecord, state_path
from tests.conftest import DATA

AGENT = [sys.executable, "-m", "agent.cli"]
IMAGE_SIZE = 64 << 30  # sparse: room for a distinct allocation unit per file in the long logs
DATA_START = fmt.data_start(fmt.DEFAULT_LOG_LEN)
AU = fmt.ALLOC_UNIT
FOLLOW_WAIT_S = 20.0  # bounded waits for a following agent (shared, loaded machines)

Snapshot = dict[str, tuple[object, ...]]


def make_device(tmp_path: Path, uuid_file: Path, name: str = "dev.img") -> Path:
    """A fresh sparse image with an empty famfs, mastered by `uuid_file`'s host."""
    image = tmp_path / name
    create_image(image, IMAGE_SIZE)
    mkfs(str(image), uuid_file=uuid_file)
    return image


def extent(n: int, units: int = 1) -> tuple[fmt.Extent, ...]:
    """The n-th allocation unit of data space (distinct n: distinct space)."""
    return (fmt.Extent(offset=DATA_START + n * AU, length=units * AU),)


def file_entry(relpath: str, n: int, size: int = 1000, mode: int = 0o644, uid: int = 0, gid: int = 0) -> fmt.FileEntry:
    return fmt.FileEntry(relpath=relpath, size=size, mode=mode, uid=uid, gid=gid, extents=extent(n))


def mkdir_entry(relpath: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> fmt.MkdirEntry:
    return fmt.MkdirEntry(relpath=relpath, mode=mode, uid=uid, gid=gid)


def append(image: Path, entries: Sequence[fmt.Entry]) -> int:
    """Append with the writer's code (entry, then header); the index of the first."""
    with Device(image, writable=True) as device, device.exclusive():
        return FamfsLog(device).append(list(entries))


def append_raw(image: Path, raw_entries: Sequence[bytes]) -> int:
    """Put arbitrary 544-byte slots at the end of the log and count them in the header."""
    with Device(image, writable=True) as device, device.exclusive():
        famfs_log = FamfsLog(device)
        first = famfs_log.header().next_index
        for n, raw in enumerate(raw_entries):
            assert len(raw) == fmt.ENTRY_SIZE
            device.write(famfs_log.slot_offset(first + n), raw)
        done = first + len(raw_entries)
        device.write(famfs_log.log_base + fmt.LOG_NEXT_SEQNUM_OFFSET, done.to_bytes(8, "little") * 2)
        return first


def run_agent(*args: str | os.PathLike[str], check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*AGENT, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"famfs-agent {args} exited {result.returncode}:\n{result.stderr}")
    return result


def snapshot(root: Path) -> Snapshot:
    """relpath -> ("d", mode, uid, gid) for directories, ("f", bytes) for files.

    A directory's mode and owner are the logged ones the agent records in its trusted.famfs.dir
    xattr (what the mount serves); the shadow directory itself must be the agent's 0755, or the
    entry says so ("d: not the agent's 0755", ...) and no comparison with a logged tree holds."""
    tree: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            info = path.lstat()
            on_disk = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
            try:
                record = DirRecord.decode(os.getxattr(path, DIR_XATTR, follow_symlinks=False))
            except OSError:
                record = None
            if record is None:  # .meta, or not the agent's: what is on disk
                tree[str(path.relative_to(root))] = ("d", *on_disk)
            elif on_disk[:2] != (0o755, os.geteuid()):
                tree[str(path.relative_to(root))] = ("d: not the agent's 0755", *on_disk)
            else:
                tree[str(path.relative_to(root))] = ("d", record.mode, record.uid, record.gid)
        for name in filenames:
            path = Path(dirpath, name)
            tree[str(path.relative_to(root))] = ("f", path.read_bytes())
    return tree


def dir_attrs(path: Path) -> tuple[int, int, int]:
    """(mode, uid, gid) the agent logged for shadow directory `path` (its trusted.famfs.dir),
    once the directory itself is checked to be the agent's 0755."""
    info = path.lstat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o755, os.geteuid()), f"{path}: not the agent's 0755"
    record = DirRecord.decode(os.getxattr(path, DIR_XATTR, follow_symlinks=False))
    assert record is not None, f"{path}: no trusted.famfs.dir"
    return record.mode, record.uid, record.gid


def agent_state(shadow: Path) -> dict[str, object]:
    return json.loads(state_path(shadow).read_text())


def record_of(image: Path, shadow: Path) -> HostRecord:
    """The record in the slot this host's agent says is its own."""
    slot = agent_state(shadow)["host_slot"]
    assert isinstance(slot, int)
    with Device(image) as opened:
        found = hosts.read_slot(opened.map, slot)
    assert isinstance(found, HostRecord), found
    return found


def current(image: Path, shadow: Path) -> HostRecord | None:
    """The agent's record once state.json and the slot agree on its incarnation."""
    if not (shadow / ".agent" / "state.json").exists():
        return None
    state = agent_state(shadow)
    if state.get("host_slot") is None:
        return None
    found = record_of(image, shadow)
    return found if found.incarnation == state["incarnation"] else None


def logged_dirs(name: str) -> dict[str, tuple[str, int, int, int]]:
    """relpath -> ("d", mode, uid, gid) as ops.tsv says each directory was logged."""
    dirs = {}
    for line in (DATA / name / "ops.tsv").read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if fields[0] == "mkdir":
            relpath = fields[1].encode()[:fmt.MAX_RELPATH_BYTES].decode()  # upstream cuts mkdir paths to 79
            dirs[relpath] = ("d", int(fields[2], 8), int(fields[3]), int(fields[4]))
    return dirs


@contextmanager
def following(image: Path, shadow: Path, *extra: str | os.PathLike[str]) -> Iterator[subprocess.Popen[str]]:
    """A --follow agent, stopped with SIGTERM (and checked to exit 0) when the block ends."""
    log_path = shadow.parent / f"{shadow.name}.log"
    with open(log_path, "w") as log_file:
        agent = subprocess.Popen([*AGENT, "--follow", "--shadow", str(shadow), *map(str, extra), str(image)],
                                 stderr=log_file, text=True)
    try:
        wait_for(lambda: (shadow / ".agent" / "state.json").exists(), "the agent starts", FOLLOW_WAIT_S)
        yield agent
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=FOLLOW_WAIT_S)
        finally:
            if agent.returncode is None:
                agent.kill()
                agent.wait()
    log = agent.log = log_path.read_text()  # type: ignore[attr-defined]
    assert agent.returncode == 0, log
