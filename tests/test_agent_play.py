"""famfs-agent one-shot play: the reference images give upstream's trees, byte for byte.

Also the helpers the other agent tests share: devices made by mkfs, entries appended by the
writer's own code, the agent CLI as a subprocess, and shadow-tree snapshots.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from agent import format as fmt
from agent.device import Device
from agent.famfslog import FamfsLog
from agent.mkfs import create_image, mkfs
from tests.conftest import DATA, REFERENCE_IMAGES, reference_info

AGENT = [sys.executable, "-m", "agent.cli"]
IMAGE_SIZE = 4 << 30
DATA_START = fmt.data_start(fmt.DEFAULT_LOG_LEN)
AU = fmt.ALLOC_UNIT

Snapshot = dict[str, tuple[object, ...]]


# --- helpers shared by the agent tests -----------------------------------------------------------


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
    """relpath -> ("d", mode, uid, gid) for directories, ("f", bytes) for files."""
    tree: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            info = path.lstat()
            tree[str(path.relative_to(root))] = ("d", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        for name in filenames:
            path = Path(dirpath, name)
            tree[str(path.relative_to(root))] = ("f", path.read_bytes())
    return tree


def agent_state(shadow: Path) -> dict[str, object]:
    return json.loads((shadow / ".agent" / "state.json").read_text())


def reference_files(name: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    with tarfile.open(DATA / name / "shadow.tar.gz") as tar:
        for member in tar.getmembers():
            content = tar.extractfile(member) if member.isfile() else None
            if content is not None:
                files[member.name.split("/root/", 1)[1]] = content.read()
    return files


def logged_dirs(name: str) -> dict[str, tuple[str, int, int, int]]:
    """relpath -> ("d", mode, uid, gid) as ops.tsv says each directory was logged."""
    dirs = {}
    for line in (DATA / name / "ops.tsv").read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if fields[0] == "mkdir":
            relpath = fields[1].encode()[:fmt.MAX_RELPATH_BYTES].decode()  # upstream cuts mkdir paths to 79
            dirs[relpath] = ("d", int(fields[2], 8), int(fields[3]), int(fields[4]))
    return dirs


# --- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
def test_reference_image_plays_to_upstreams_tree(name: str, reference_image: Callable[[str], Path], tmp_path: Path) -> None:
    image = reference_image(name)
    host = tmp_path / "master_uuid"
    host.write_text(reference_info(name)["system_uuid"])  # this host is the image's master
    shadow = tmp_path / "shadow"
    result = run_agent("--shadow", shadow, "--system-uuid-file", host, image)
    assert result.returncode == 0, result.stderr
    tree = snapshot(shadow / "root")
    files = {path: value[1] for path, value in tree.items() if value[0] == "f"}
    assert files == reference_files(name)
    dirs = {path: value for path, value in tree.items() if value[0] == "d"}
    assert dirs == {".meta": ("d", 0o755, 0, 0), **logged_dirs(name)}
    state = agent_state(shadow)
    assert state["device"] == str(image)
    assert state["fs_uuid"] == reference_info(name)["fs_uuid"]
    with Device(image) as device:
        assert state["applied_index"] == FamfsLog(device).header().next_index - 1
    assert state["rejected"] == 0 and state["last_error"] is None
    assert os.listdir(shadow / ".agent" / "staging") == []


def test_client_host_sees_log_file_read_only(reference_image: Callable[[str], Path], tmp_path: Path) -> None:
    image = reference_image("b_mixed")
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, "--system-uuid-file", tmp_path / "other_host", image, check=True)
    expected = reference_files("b_mixed")
    log_yaml = (shadow / "root" / ".meta" / ".log").read_bytes()
    assert log_yaml == expected.pop(".meta/.log").replace(b"mode: 0644", b"mode: 0444")
    files = {path: value[1] for path, value in snapshot(shadow / "root").items() if value[0] == "f"}
    del files[".meta/.log"]
    assert files == expected
    assert agent_state(shadow)["role"] == "client"


def test_role_change_rewrites_only_the_log_yaml(reference_image: Callable[[str], Path], tmp_path: Path) -> None:
    image = reference_image("a_empty")
    master = tmp_path / "master_uuid"
    master.write_text(reference_info("a_empty")["system_uuid"])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, "--system-uuid-file", tmp_path / "client_uuid", image, check=True)
    assert b"mode: 0444" in (shadow / "root/.meta/.log").read_bytes()
    run_agent("--shadow", shadow, "--system-uuid-file", master, image, check=True)
    assert (shadow / "root/.meta/.log").read_bytes() == reference_files("a_empty")[".meta/.log"]


def test_status_reports_cursor_and_lag(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/f", 0)])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    append(image, [file_entry("d/g", 1), file_entry("d/h", 2)])
    text = run_agent("status", "--shadow", shadow, check=True).stdout
    assert "applied index:   1" in text and "log next_index:  4" in text and "lag:             2 entries" in text
    report = json.loads(run_agent("status", "--shadow", shadow, "--json", check=True).stdout)
    assert report["device"] == str(image) and report["lag_entries"] == 2 and report["lag_seconds"] >= 0
    assert report["agent_running"] is False and report["rejected"] == 0


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    result = run_agent("--shadow", tmp_path / "shadow", tmp_path / "nope.img")
    assert result.returncode == 2
    assert "nope.img: no such device or image file" in result.stderr


def test_two_agents_cannot_share_a_shadow(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    follower = subprocess.Popen([*AGENT, "--follow", "--shadow", str(shadow), str(image)],
                                stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (shadow / ".agent" / "state.json").exists())
        second = run_agent("--shadow", shadow, image)
        assert second.returncode == 2
        assert f"pid {follower.pid}" in second.stderr and "another famfs-agent" in second.stderr
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert follower.returncode == 0


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the time limit")
        time.sleep(0.01)


def test_add_daxdev_entries_fill_the_daxdev_table(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    second, third = uuid.uuid4(), uuid.uuid4()
    append(image, [fmt.AddDaxdevEntry(dev_size=8 << 30, dev_uuid=second, dev_index=1), mkdir_entry("d"),
                   fmt.AddDaxdevEntry(dev_size=4 << 30, dev_uuid=third, dev_index=2)])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    table = json.loads((shadow / ".agent" / "daxdevs.json").read_text())["daxdevs"]
    with Device(image) as device:
        superblock = FamfsLog(device).superblock
    assert table == [
        {"index": 0, "uuid": str(superblock.dev_uuid), "size": superblock.dev_size, "path": str(image), "log_index": None},
        {"index": 1, "uuid": str(second), "size": 8 << 30, "path": None, "log_index": 0},
        {"index": 2, "uuid": str(third), "size": 4 << 30, "path": None, "log_index": 2},
    ]
    # A restart resumes with the same table; a repeated UUID is refused.
    append(image, [fmt.AddDaxdevEntry(dev_size=1 << 30, dev_uuid=second, dev_index=3)])
    result = run_agent("--shadow", shadow, image)
    assert result.returncode == 1 and f"daxdev UUID {second} is already in the table" in result.stderr
    assert json.loads((shadow / ".agent" / "daxdevs.json").read_text())["daxdevs"] == table
