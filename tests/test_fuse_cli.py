"""famfs-fuse-mount's life cycle: clean unmount and exit 0 on SIGTERM, SIGINT and fusermount3 -u;
daemon mode; device and options from the agent's state and the config file; interop xattr and
statfs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import writer
from tests.famfsctl_util import famfsctl, make_image
from tests.fuse_util import (
    MOUNT_CLI,
    WAIT_S,
    Mount,
    client_env,
    client_uuid_file,
    mount_status,
    play,
    unmount,
    wait_for,
)


@pytest.fixture
def tree(tmp_path: Path, system_uuid_file: Path) -> tuple[Path, Path]:
    device = make_image(tmp_path / "dev.img", "8g")
    famfsctl("creat", "--device", device, "-s", "5m", "-r", "-S", "4", "file")
    shadow = tmp_path / "shadow"
    play(device, shadow)
    return shadow, device


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3 -u"])
def test_clean_unmount_and_exit_zero(tmp_path: Path, tree: tuple[Path, Path], how: str) -> None:
    shadow, device = tree
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        assert (mount.mountpoint / "file").stat().st_size == 5 << 20
        if how == "fusermount3 -u":
            subprocess.run(["fusermount3", "-u", str(mount.mountpoint)], check=True)
        else:
            mount.signal(signal.Signals[how])
        assert mount.wait() == 0
        assert not os.path.ismount(mount.mountpoint)
    assert "unmounted" in mount.log() and "Traceback" not in mount.log()


def test_daemon_mode_device_from_state_and_config(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    shadow, device = tree
    state = json.loads((shadow / ".agent" / "state.json").read_text())
    assert os.path.abspath(state["device"]) == str(device)
    config = tmp_path / "famfs-agent.toml"
    config.write_text(f'[agent]\nshadow = "{shadow}"\n\n[mount]\ncache = "direct"\nfallback_rescan_s = 0.0\n')
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "daemon.log"
    # No --device, no [agent] device: the agent's state.json names it.
    done = subprocess.run([MOUNT_CLI, "--config", str(config), "--log-file", str(log), str(mountpoint)],
                          capture_output=True, text=True, timeout=WAIT_S)
    try:
        assert done.returncode == 0, done.stderr + log.read_text()
        assert os.path.ismount(mountpoint)  # live when the parent returns
        pid = int(re.search(r"pid (\d+)", done.stdout).group(1))
        assert str(log) in done.stdout
        assert os.getxattr(mountpoint, "user.famfs.shadow") == os.fsencode(shadow)
        assert mount_status(mountpoint)["inodes"] == 5  # root, .meta, .superblock, .log, file
        assert "cache='direct'" in log.read_text()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.ismount(mountpoint), "the daemon to unmount")
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "the daemon to exit")
    finally:
        unmount(mountpoint)


def test_mkdir_warnings_and_the_first_eperm_explained(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    """--mkdir makes the mount point; a tree no agent follows and a non-empty mount point are
    mounted with a warning each; a client's create is EPERM, explained once in the log."""
    shadow, device = tree
    mountpoint = tmp_path / "made" / "mnt"
    log = tmp_path / "daemon.log"
    client = client_env(tmp_path)
    play(device, shadow, "--system-uuid-file", client_uuid_file(tmp_path))  # the agent is this client's
    done = subprocess.run([MOUNT_CLI, "--mkdir", "--shadow", str(shadow), "--device", str(device), "--log-file",
                           str(log), str(mountpoint)], capture_output=True, text=True, timeout=WAIT_S, env=client)
    try:
        assert done.returncode == 0 and os.path.ismount(mountpoint), done.stderr
        assert done.stderr == f"famfs-fuse-mount: warning: no famfs-agent is running on {shadow}: the mount shows " \
            f"the tree as it is and changes only when an agent plays the log (famfs-agent --follow --shadow {shadow})\n"
        for attempt in range(2):
            with pytest.raises(PermissionError):
                (mountpoint / f"new{attempt}").touch()
        with pytest.raises(PermissionError):
            (mountpoint / "dir").mkdir()
        with Device(device) as opened:
            master = str(FamfsLog(opened).superblock.system_uuid)
        explained = [line for line in log.read_text().splitlines() if "namespace_change_refused" in line]
        assert len(explained) == 1 and f"master_system_uuid='{master}'" in explained[0]
    finally:
        unmount(mountpoint)
    (mountpoint / "left-here").write_text("")
    with Mount(shadow, device, mountpoint, env=client) as mount:
        assert f"mount point {mountpoint} is not empty: its files are hidden while famfs is mounted" in mount.log()


def test_statfs_reports_the_device(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    shadow, device = tree
    with Device(device) as dev:
        famfs_log = FamfsLog(dev)
        units = writer.load(famfs_log).units
        sb = famfs_log.superblock
        header = famfs_log.header()
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        fs = os.statvfs(mount.mountpoint)
        assert fs.f_frsize == sb.alloc_unit
        assert fs.f_blocks * fs.f_frsize == sb.dev_size
        assert fs.f_bfree == units.free_units and fs.f_bavail == units.free_units
        assert fs.f_ffree == header.slots - header.next_index
        famfsctl("creat", "--device", device, "-s", "9m", "more")
        fs_after = os.statvfs(mount.mountpoint)
        assert fs_after.f_bfree == units.free_units - 5  # 9 MiB in 2 MiB units
        assert fs_after.f_ffree == fs.f_ffree - 1


def test_a_refused_mount_takes_back_the_directories_its_mkdir_made(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    shadow, _ = tree
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(4 << 20))  # holds no famfs: the mount is refused after --mkdir made the mount point
    (tmp_path / "there").mkdir()
    mountpoint = tmp_path / "there" / "made" / "mnt"
    done = subprocess.run([MOUNT_CLI, "--mkdir", "--shadow", str(shadow), "--device", str(junk), str(mountpoint)],
                          capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 1 and "not a famfs device" in done.stderr, done.stderr
    assert not (tmp_path / "there" / "made").exists() and (tmp_path / "there").is_dir()  # only what it made
