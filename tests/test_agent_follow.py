"""famfs-agent --follow: picks up what other processes append (famfsctl), with the write hint and
by polling alone; rides out entries in flight; stalls on corruption and resumes when repaired;
rebuilds when the file system is re-made under it; SIGTERM ends it cleanly."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from tests import fuse_util
from tests.agent_util import (
    FOLLOW_WAIT_S,
    agent_state,
    dir_attrs,
    append,
    append_raw,
    file_entry,
    following,
    make_device,
    mkdir_entry,
    run_agent,
    snapshot,
)
from tests.famfsctl_util import famfsctl

WAIT_S = FOLLOW_WAIT_S
wait_for = functools.partial(fuse_util.wait_for, timeout=WAIT_S)


@pytest.mark.parametrize("wake_hint", [True, False], ids=["inotify-hint", "polling-only"])
def test_follow_applies_famfsctl_writes_from_other_processes(wake_hint: bool, tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("mkdir", "--device", image, "early")
    shadow = tmp_path / "shadow"
    config = tmp_path / "agent.toml"
    config.write_text(f"[agent]\nwake_hint = {str(wake_hint).lower()}\n")
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_bytes(b"alpha" * 1000)
    (source / "b.bin").write_bytes(os.urandom(5000))
    root = shadow / "root"
    with following(image, shadow, "--config", config) as agent:
        wait_for(lambda: (root / "early").is_dir(), "a directory logged before the start")
        famfsctl("mkdir", "--device", image, "-m", "2770", "-u", "1000", "-g", "0", "live")
        wait_for(lambda: (root / "live").is_dir(), "a new directory")
        famfsctl("creat", "--device", image, "-s", "3m", "live/file")
        wait_for(lambda: (root / "live" / "file").is_file(), "a new file")
        famfsctl("cp", "-r", "--device", image, source, "live/tree")
        wait_for(lambda: (root / "live" / "tree" / "sub" / "a.txt").is_file(), "a copied tree")
        famfsctl("rm", "--device", image, "live/file")
        wait_for(lambda: not (root / "live" / "file").exists(), "a removed file")
        assert agent.poll() is None
        status = run_agent("status", "--shadow", shadow, check=True).stdout
        assert f"agent:           running (pid {agent.pid}, following)" in status
    assert agent_state(shadow)["following"] is True
    assert dir_attrs(root / "live") == (0o2770, 1000, 0)
    fresh = tmp_path / "fresh"
    run_agent("--shadow", fresh, image, check=True)
    assert snapshot(root) == snapshot(fresh / "root")
    state = agent_state(shadow)
    with Device(image) as device:
        assert state["applied_index"] == FamfsLog(device).header().next_index - 1
    assert "event='stop' signal='SIGTERM'" in agent.log  # type: ignore[attr-defined]


def test_follow_picks_up_a_burst_appended_by_another_process(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    writer = (
        "import sys\n"
        "from tests.agent_util import append, file_entry, mkdir_entry\n"
        "from pathlib import Path\n"
        "image = Path(sys.argv[1])\n"
        "append(image, [mkdir_entry('burst')])\n"
        "for n in range(300):\n"
        "    append(image, [file_entry(f'burst/f{n}', n)])\n"
    )
    with following(image, shadow):
        subprocess.run([sys.executable, "-c", writer, str(image)], check=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
        wait_for(lambda: (shadow / "root" / "burst" / "f299").exists(), "the last entry of the burst")
    assert len(os.listdir(shadow / "root" / "burst")) == 300
    assert agent_state(shadow)["applied_index"] == 300


def test_entry_in_flight_is_waited_for_not_rejected(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\ninflight_retry_ms = 5000.0\n")
    good = fmt.encode_entry(file_entry("late", 0), 0)
    with following(image, shadow, "--config", config) as agent:
        # Header first, entry bytes half there: what a reader can see from upstream's writer.
        append_raw(image, [good[:300] + bytes(fmt.ENTRY_SIZE - 300)])
        time.sleep(0.05)
        with Device(image, writable=True) as device:
            device.write(FamfsLog(device).slot_offset(0), good)
        wait_for(lambda: (shadow / "root" / "late").exists(), "the entry once complete")
    state = agent_state(shadow)
    assert state["rejected"] == 0 and state["stalled_at"] is None
    assert "log_corrupt" not in agent.log  # type: ignore[attr-defined]


def test_corrupt_entry_stalls_the_follower_until_repaired(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d")])
    shadow = tmp_path / "shadow"
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\ninflight_retry_ms = 10.0\n")
    good = fmt.encode_entry(file_entry("d/x", 0), 1)
    broken = bytearray(good)
    broken[50] ^= 0x01
    with following(image, shadow, "--config", config) as agent:
        wait_for(lambda: (shadow / "root" / "d").is_dir(), "the first directory")
        append_raw(image, [bytes(broken), fmt.encode_entry(file_entry("d/y", 1), 2)])
        wait_for(lambda: agent_state(shadow)["stalled_at"] == 1, "the stall recorded in state.json")
        status = run_agent("status", "--shadow", shadow, check=True).stdout
        assert "stalled at:      1" in status and "corrupt: log entry 1: bad CRC" in status
        assert not (shadow / "root" / "d" / "y").exists()
        with Device(image, writable=True) as device:
            device.write(FamfsLog(device).slot_offset(1), good)
        wait_for(lambda: (shadow / "root" / "d" / "y").exists(), "progress after the repair")
        assert agent.poll() is None
    assert "event='log_corrupt'" in agent.log and "event='log_repaired'" in agent.log  # type: ignore[attr-defined]
    assert agent_state(shadow)["stalled_at"] is None


def test_follower_rebuilds_when_the_file_system_is_remade(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("mkdir", "--device", image, "before")
    shadow = tmp_path / "shadow"
    with following(image, shadow) as agent:
        wait_for(lambda: (shadow / "root" / "before").is_dir(), "the old file system's directory")
        famfsctl("mkfs", "--force", image)
        famfsctl("mkdir", "--device", image, "after")
        wait_for(lambda: (shadow / "root" / "after").is_dir(), "the new file system's directory")
        wait_for(lambda: not (shadow / "root" / "before").exists(), "the old directory gone")
    with Device(image) as device:
        assert agent_state(shadow)["fs_uuid"] == str(FamfsLog(device).superblock.fs_uuid)
    assert "event='rebuild'" in agent.log and "file system re-made" in agent.log  # type: ignore[attr-defined]


def test_follower_rebuilds_a_tree_changed_behind_its_back(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/a", 0)])
    shadow = tmp_path / "shadow"
    with following(image, shadow) as agent:
        wait_for(lambda: (shadow / "root" / "d" / "a").exists(), "the first file")
        (shadow / "root" / "d" / "a").unlink()
        (shadow / "root" / "d").rmdir()  # someone else's doing
        append(image, [file_entry("d/b", 1)])
        wait_for(lambda: (shadow / "root" / "d" / "b").exists(), "the tree rebuilt with the new file")
        assert agent.poll() is None
    assert sorted(p for p in snapshot(shadow / "root") if not p.startswith(".meta")) == ["d", "d/a", "d/b"]
    assert "event='shadow_write_failed'" in agent.log and "changed behind the agent's back" in agent.log  # type: ignore[attr-defined]
