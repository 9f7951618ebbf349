"""The master's mount refuses what famfs cannot log, each with its errno, and logs nothing half:
names too long or not UTF-8, existing names, non-empty directories, rename, links, changes to a
logged file, a new file past the staging bound or the free space, a full log, and files still
open when the daemon is stopped or killed (docs/fusefs.md, "Writing the namespace on the master").

One small cluster (the master alone, a 64 MiB device, 16 MiB of staging), tests in order.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster, wait_until
from famfs import format as fmt
from tests.agent_util import append
from tests.famfsctl_util import entries, file_bytes

MiB = 1 << 20
STAGING_MIB = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    small = Cluster(tmp_path_factory.mktemp("master-errors") / "cluster", size="64m", clients=0)
    with small.master.config_file.open("a") as config:
        config.write(f"[mount]\nstaging_mib = {STAGING_MIB}\n")
    with small:
        yield small


def errno_of(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as err:
        return err.errno
    raise AssertionError("no error")


def logged_paths(cluster: Cluster) -> set[str]:
    return {entry.relpath for entry in entries(cluster.image) if isinstance(entry, fmt.FileEntry | fmt.MkdirEntry)}


def write_new(path: Path, size: int) -> tuple[int, int]:
    """Create `path`, write `size` bytes in 1 MiB writes; (errno of the first refused write or 0,
    errno of close or 0)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    refused = 0
    try:
        for start in range(0, size, MiB):
            os.write(fd, b"x" * min(MiB, size - start))
    except OSError as err:
        refused = err.errno
    try:
        os.close(fd)
    except OSError as err:
        return refused, err.errno
    return refused, 0


def test_names_the_log_cannot_hold(cluster: Cluster) -> None:
    mnt = cluster.master.view()
    assert errno_of(lambda: os.mkdir(mnt / ("d" * 80))) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.open(mnt / ("f" * 80), os.O_CREAT | os.O_WRONLY)) == errno.ENAMETOOLONG
    os.mkdir(mnt / "dir")
    assert errno_of(lambda: os.mkdir(mnt / "dir" / ("d" * 76))) == errno.ENAMETOOLONG  # 80 bytes with "dir/"
    assert errno_of(lambda: os.mkdir(os.fsencode(mnt) + b"/bad-\xff")) == errno.EINVAL
    assert errno_of(lambda: os.mkdir(mnt / "dir")) == errno.EEXIST
    assert logged_paths(cluster) == {"dir"}


def test_what_a_logged_namespace_cannot_do(cluster: Cluster) -> None:
    mnt = cluster.master.view()
    (mnt / "dir" / "file").write_bytes(b"logged")
    wait_until(lambda: "dir/file" in logged_paths(cluster), 10, "dir/file logged")
    file = mnt / "dir" / "file"
    assert errno_of(lambda: os.rmdir(mnt / "dir")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rmdir(file)) == errno.ENOTDIR
    assert errno_of(lambda: os.unlink(mnt / "dir")) in (errno.EISDIR, errno.EPERM)  # the kernel may answer first
    assert errno_of(lambda: os.rename(file, mnt / "dir" / "moved")) == errno.EXDEV
    assert errno_of(lambda: os.link(file, mnt / "dir" / "hard")) == errno.EPERM
    assert errno_of(lambda: os.mknod(mnt / "dir" / "fifo", 0o600 | stat.S_IFIFO)) == errno.EPERM
    assert errno_of(lambda: os.truncate(file, 2)) == errno.EPERM  # a FILE entry fixes the size
    os.symlink("file", mnt / "dir" / "soft")  # this mount's own, never logged (fusefs/links.py)
    assert os.readlink(mnt / "dir" / "soft") == "file" and (mnt / "dir" / "soft").read_bytes() == b"logged"
    assert errno_of(lambda: os.rmdir(mnt / "dir")) == errno.ENOTEMPTY
    os.unlink(mnt / "dir" / "soft")
    os.utime(file, (1, 2))  # kept for the mount's lifetime, not logged
    assert (os.stat(file).st_atime, os.stat(file).st_mtime) == (1, 2)
    os.chmod(file, 0o644)  # to what it is: nothing to log, answered
    os.chown(file, 0, 0)
    assert file.read_bytes() == b"logged"
    assert [type(entry) for entry in entries(cluster.image)] == [fmt.MkdirEntry, fmt.FileEntry]
    log = cluster.master.mount_log.read_text()
    assert log.count("event='symlinks_not_logged'") == 1


def test_a_new_file_past_staging_or_space_is_dropped_whole(cluster: Cluster) -> None:
    mnt = cluster.master.view()
    assert write_new(mnt / "too-big", (STAGING_MIB + 1) * MiB) == (errno.EFBIG, 0)
    cluster.ctl("creat", "-s", "40m", "filler")  # 64 MiB: 10 MiB of metadata, 2 MiB in use: 12 MiB left
    assert write_new(mnt / "no-room", 14 * MiB) == (errno.ENOSPC, 0)
    fd = os.open(mnt / "no-room-either", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert errno_of(lambda: os.ftruncate(fd, 1 << 30)) == errno.ENOSPC  # the fast path allocates at once
    finally:
        os.close(fd)
    wait_until(lambda: not (mnt / "no-room").exists() and not (mnt / "too-big").exists(), 10, "dropped files gone")
    assert logged_paths(cluster) == {"dir", "dir/file", "filler"}
    log = cluster.master.mount_log.read_text()
    assert log.count("event='file_dropped'") == 3 and "staging_mib" in log


def test_the_fast_path_allocates_then_writes_in_place(cluster: Cluster) -> None:
    mnt = cluster.master.view()
    data = os.urandom(3 * MiB + 5)
    fd = os.open(mnt / "fast", os.O_CREAT | os.O_WRONLY, 0o640)
    try:
        os.ftruncate(fd, len(data))
        assert "fast" in logged_paths(cluster)  # logged at once: its bytes follow, in place
        assert os.pwrite(fd, data, 0) == len(data)
    finally:
        os.close(fd)
    assert (mnt / "fast").read_bytes() == data
    assert file_bytes(cluster.image, "fast") == data
    assert "fsck: clean" in cluster.master.famfsctl("fsck", str(cluster.image)).stdout


def test_files_open_when_the_daemon_stops_or_dies_are_never_logged(cluster: Cluster) -> None:
    master = cluster.master
    for kill in (False, True):
        fd = os.open(master.view() / f"open-at-stop-{kill}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"half of it")
        master.stop_mount(kill=kill)  # SIGTERM (staged data dropped whole), then SIGKILL
        with pytest.raises(OSError):
            os.close(fd)
        master.start_mount()
    assert not {"open-at-stop-False", "open-at-stop-True"} & logged_paths(cluster)
    assert "reason='still open at unmount'" in master.mount_log.read_text()
    assert "fsck: clean" in master.famfsctl("fsck", str(cluster.image)).stdout


def test_a_full_log(cluster: Cluster) -> None:
    """Last: it fills the log with directories."""
    header_slots = fmt.log_capacity(fmt.DEFAULT_LOG_LEN)
    used = len(entries(cluster.image))
    append(cluster.image, [fmt.MkdirEntry(f"fill{n}", 0o755, 0, 0) for n in range(header_slots - used)])
    mnt = cluster.master.view()
    assert errno_of(lambda: os.mkdir(mnt / "one-more")) == errno.ENOSPC
    assert errno_of(lambda: os.open(mnt / "one-more", os.O_CREAT | os.O_WRONLY)) == errno.ENOSPC
    log = cluster.master.mount_log.read_text()
    assert f"{cluster.image}: log full" in log
