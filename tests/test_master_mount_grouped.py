"""Grouped commits through a real master's mount (docs/fusefs.md, "Grouped commits"): files
closed at once while the device is locked are logged together once it is free, none logged or
played before; and a mount killed (SIGKILL) in the middle of a `cp -r` never logged a
half-written file, and fsck is clean.

Real parts: a cluster of the master alone (demo/cluster.py), its agent and its FUSE mount.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster, wait_until
from famfs import format as fmt
from tests.famfsctl_util import entries, file_bytes

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CLOSERS = 8
LOCK_HELD_S = 1.0  # long enough for every release to reach the mount; nothing is timed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("grouped") / "cluster", size="4g", clients=0) as running:
        yield running


def logged_files(cluster: Cluster, prefix: str) -> dict[str, fmt.FileEntry]:
    return {entry.relpath: entry for entry in entries(cluster.image)
            if isinstance(entry, fmt.FileEntry) and entry.relpath.startswith(prefix)}


def groups_logged(cluster: Cluster) -> list[int]:
    """The file count of each grouped commit in the mount's log so far."""
    return [int(count) for count in re.findall(r"event='creat_group'.* files=(\d+)", cluster.master.mount_log.read_text())]


def test_concurrent_closers_are_logged_together_once_the_lock_is_free(cluster: Cluster) -> None:
    mnt = cluster.master.view()
    os.mkdir(mnt / "together")
    before = len(groups_logged(cluster))
    contents = {f"together/f{n}": os.urandom(1000 * n + 1) for n in range(CLOSERS)}
    descriptors = {}
    for relpath, data in contents.items():
        descriptors[relpath] = os.open(mnt / relpath, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(descriptors[relpath], data)
    with open(cluster.image, "rb") as image:
        fcntl.flock(image, fcntl.LOCK_EX)  # the device lock every writer takes: no group can be logged
        try:
            closers = [threading.Thread(target=os.close, args=(fd,)) for fd in descriptors.values()]
            for closer in closers:
                closer.start()
            for closer in closers:
                closer.join(30)
            time.sleep(LOCK_HELD_S)
            # Nothing logged, nor played, while the lock is held. (Not a listing through the mount:
            # it waits for files closed just before to be logged, which this very lock holds up.)
            assert not logged_files(cluster, "together/")
            assert not list((cluster.master.shadow_root / "together").iterdir())
        finally:
            fcntl.flock(image, fcntl.LOCK_UN)
    wait_until(lambda: len(logged_files(cluster, "together/")) == CLOSERS, 30, "every closed file logged")
    for relpath, data in contents.items():
        assert file_bytes(cluster.image, relpath) == data
        assert (mnt / relpath).read_bytes() == data
    groups = groups_logged(cluster)[before:]
    assert sum(groups) == CLOSERS and max(groups) > 1, groups
    assert "fsck: clean" in cluster.master.famfsctl("fsck", str(cluster.image)).stdout


def test_a_mount_killed_during_cp_r_never_logged_a_half_written_file(cluster: Cluster, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for package in ("json", "email", "asyncio", "xml", "importlib"):
        shutil.copytree(STDLIB / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    total = sum(len(files) for _, _, files in os.walk(source))
    master = cluster.master
    started = cluster.next_index()
    copying = subprocess.Popen(master.inside(["cp", "-r", str(source), str(master.mountpoint / "killed")]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: cluster.next_index() >= started + 40, 60, "cp -r under way")
        master.stop_mount(kill=True)
        copying.wait(60)
    finally:
        if copying.poll() is None:
            copying.kill()
            copying.wait()
        if master.mount is None:
            master.start_mount()
    logged = logged_files(cluster, "killed/")
    assert 0 < len(logged) < total  # killed in the middle
    for relpath, entry in logged.items():
        data = (source / relpath.removeprefix("killed/")).read_bytes()
        assert entry.size == len(data), relpath
        assert file_bytes(cluster.image, relpath) == data, relpath
    assert "fsck: clean" in master.famfsctl("fsck", str(cluster.image)).stdout
    # The restarted mount serves what was logged, and only that.
    wait_until(lambda: all(master.view(relpath).exists() for relpath in logged), 30, "the logged files served")
