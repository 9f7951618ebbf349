"""famfs-agent one-shot play: the reference images give upstream's trees, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.shadowdir import state_path
from tests.agent_util import (
    AGENT,
    agent_state,
    append,
    file_entry,
    logged_dirs,
    make_device,
    mkdir_entry,
    run_agent,
    snapshot,
)
from tests.conftest import REFERENCE_IMAGES, reference_info
from tests.fuse_util import wait_for
from tests.reference import reference_shadow_files

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
    assert files == reference_shadow_files(name)
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
    expected = reference_shadow_files("b_mixed")
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
    assert (shadow / "root/.meta/.log").read_bytes() == reference_shadow_files("a_empty")[".meta/.log"]


def test_status_reports_cursor_and_lag(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/f", 0)])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    append(image, [file_entry("d/g", 1), file_entry("d/h", 2)])
    text = run_agent("status", "--shadow", shadow, check=True).stdout
    assert "applied index:   1" in text and "log next_index:  4" in text and "lag:             2 entries not applied yet" in text
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
        wait_for(lambda: state_path(shadow).exists(), "the first agent to write its state")
        second = run_agent("--shadow", shadow, image)
        assert second.returncode == 2
        assert f"pid {follower.pid}" in second.stderr and "another famfs-agent" in second.stderr
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert follower.returncode == 0



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
    missing = {"path": None, "state": "missing", "reason": "no candidate path holds its superblock"}
    assert table == [
        {"index": 0, "uuid": str(superblock.dev_uuid), "size": superblock.dev_size, "path": str(image), "log_index": None,
         "state": "found", "reason": ""},
        {"index": 1, "uuid": str(second), "size": 8 << 30, "log_index": 0, **missing},
        {"index": 2, "uuid": str(third), "size": 4 << 30, "log_index": 2, **missing},
    ]
    # A restart resumes with the same table; a repeated UUID is refused.
    append(image, [fmt.AddDaxdevEntry(dev_size=1 << 30, dev_uuid=second, dev_index=3)])
    result = run_agent("--shadow", shadow, image)
    assert result.returncode == 1 and f"daxdev UUID {second} is already in the table" in result.stderr
    assert json.loads((shadow / ".agent" / "daxdevs.json").read_text())["daxdevs"] == table


def test_a_failed_start_takes_back_the_shadow_directory_it_made(tmp_path: Path, system_uuid_file: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(4 << 20))  # holds no famfs
    (tmp_path / "there").mkdir()
    shadow = tmp_path / "there" / "new" / "shadow"
    done = subprocess.run([*AGENT, "--shadow", str(shadow), str(junk)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a famfs device" in done.stderr, done.stderr
    assert not (tmp_path / "there" / "new").exists() and (tmp_path / "there").is_dir()  # only what it made
