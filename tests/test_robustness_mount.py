"""famfs-fuse-mount never hangs and never serves the wrong bytes (docs/consistency.md, "What the
mount never does"): stopped the instant it comes up, hostile files in the shadow tree, the file
system re-made or the image replaced under it. Real mounts, real CLIs, real images."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs import listing, rules
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.ownership import ShadowCheck
from famfs.shadowdir import AGENT_DIR, LISTINGS_DIR, OWNERS_FILE
from famfs.shadowyaml import emit_file_yaml, meta_file_entry
from fusefs.inodes import ROOT_INODE, InodeTable
from tests.agent_util import file_entry, following, make_device
from tests.famfsctl_util import entries, famfsctl, file_bytes
from tests.fuse_util import (
    MOUNT_CLI,
    WAIT_S,
    Mount,
    empty_shadow,
    own_file,
    play,
    put_yaml,
    stat_gives_eio,
    unmount,
    wait_for,
)

SHUTDOWN_TRIALS = 30
GONE_WITHIN_S = 5.0


def in_mountinfo(mountpoint: Path) -> bool:
    """Whether `mountpoint` is mounted, without a request to that mount (a stat would be one)."""
    wanted = os.fsencode(mountpoint)
    return any(line.split(b" ")[4] == wanted for line in Path("/proc/self/mountinfo").read_bytes().splitlines())


def run_bounded(argv: list[str], timeout: float = GONE_WITHIN_S) -> subprocess.CompletedProcess[bytes] | None:
    """argv as a child; None if it has not finished within `timeout`. Then it is killed but not
    waited for: a process stuck in a request to a hung mount dies only once the mount lets go."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return None
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


@pytest.fixture
def served(tmp_path: Path, system_uuid_file: Path) -> Iterator[tuple[Path, Path]]:
    """(device, shadow): a made file system played into a shadow tree."""
    device = make_device(tmp_path, system_uuid_file)
    shadow = empty_shadow(tmp_path / "shadow")
    play(device, shadow)
    yield device, shadow


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_the_instant_the_mount_appears(served: tuple[Path, Path], tmp_path: Path, signum: signal.Signals) -> None:
    """The daemon is signalled as soon as the mount shows in /proc/self/mountinfo (before or just
    after the kernel's INIT): every one unmounts and exits 0 within GONE_WITHIN_S."""
    device, shadow = served
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for trial in range(SHUTDOWN_TRIALS // 2):
        log = tmp_path / f"mount.{trial}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([MOUNT_CLI, "--foreground", "--shadow", str(shadow), "--device", str(device),
                                        str(mountpoint)], stdout=out, stderr=out)
        try:
            wait_for(lambda: in_mountinfo(mountpoint) or process.poll() is not None, "the mount")
            process.send_signal(signum)
            try:
                code = process.wait(timeout=GONE_WITHIN_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"trial {trial}: still running {GONE_WITHIN_S} s after {signum.name}: {log.read_text()}")
            assert code == 0, log.read_text()
            assert not in_mountinfo(mountpoint), f"trial {trial}: left mounted"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            unmount(mountpoint)


@pytest.mark.parametrize("first_touch", ["stat", "listing"])
@pytest.mark.parametrize("record", [False, True], ids=["no_record", "record"])
def test_fifo_in_place_of_a_shadow_file(served: tuple[Path, Path], tmp_path: Path, first_touch: str,
                                        record: bool) -> None:
    """A FIFO where the mount expects a never-read shadow YAML: the lookup (or the directory
    listing, which loads its files through a descriptor of the directory) that reads it gets an
    error at once, and the mount keeps answering. The FIFO is bind-mounted over the YAML, which
    raises no inotify event: the mount still believes a regular file is there when it opens it
    (a rename over the YAML races the same way, for as long as the watcher takes). With the
    directory's record (famfs.listing), a lookup or listing reads nothing of the file: it is
    listed from the log, and its open is what reads the FIFO, and fails at once."""
    device, shadow = served
    famfsctl("mkdir", "--device", device, "d")  # never listed: its files are read at their first lookup
    famfsctl("creat", "-s", "4k", "--device", device, "d/victim")
    famfsctl("creat", "-s", "4k", "--device", device, "d/other")
    play(device, shadow)
    if not record:  # as an agent that wrote none (or a kill before its append): file by file
        (shadow / AGENT_DIR / LISTINGS_DIR / listing.record_name(b"d")).unlink()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    victim = shadow / "root" / "d" / "victim"
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        subprocess.run(["mount", "--bind", str(fifo), str(victim)], check=True, capture_output=True)
        try:
            if first_touch == "listing":
                listed = run_bounded(["ls", str(mount.mountpoint / "d")], timeout=WAIT_S)
                assert listed is not None, "a listing of the FIFO'd name's directory hung the mount"
                # The refused file is left out; listed from the log with a record.
                assert listed.stdout.split() == ([b"other", b"victim"] if record else [b"other"])
            looked = run_bounded(["stat", str(mount.mountpoint / "d" / "victim")], timeout=WAIT_S)
            assert looked is not None, "a lookup of the FIFO'd name hung the mount"
            if record:
                assert looked.returncode == 0
                looked = run_bounded(["cat", str(mount.mountpoint / "d" / "victim")], timeout=WAIT_S)
                assert looked is not None, "an open of the FIFO'd name hung the mount"
            assert looked.returncode != 0  # EIO: a shadow file that is not a regular file
            other = run_bounded(["stat", str(mount.mountpoint / "d" / "other")], timeout=1.0)
            assert other is not None and other.returncode == 0, "the mount stopped answering"
        finally:
            # A daemon stuck in a blocking open is let go by a writer, so the test can end.
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            subprocess.run(["umount", "-l", str(victim)], capture_output=True)


def following_mount(tmp_path: Path, device: Path) -> contextlib.ExitStack:
    """An agent following `device` and a mount of its shadow tree, both stopped at the end."""
    stack = contextlib.ExitStack()
    shadow = tmp_path / "shadow"
    stack.enter_context(following(device, shadow))
    mount = stack.enter_context(Mount(shadow, device, tmp_path / "mnt"))
    stack.mount = mount  # type: ignore[attr-defined]
    return stack


def test_handle_opened_before_mkfs_force_gets_an_error(tmp_path: Path, system_uuid_file: Path) -> None:
    """The extents a handle holds belong to another file after mkfs --force: its reads and writes
    fail, and the new file's bytes stay untouched."""
    device = make_device(tmp_path, system_uuid_file)
    famfsctl("creat", "-s", "2m", "--randomize", "--seed", "1", "--device", device, "old")
    with following_mount(tmp_path, device) as stack:
        mountpoint = stack.mount.mountpoint
        wait_for(lambda: (mountpoint / "old").exists(), "the file in the mount")
        with open(mountpoint / "old", "r+b", buffering=0) as handle:
            assert handle.read(4096) == file_bytes(device, "old")[:4096]
            famfsctl("mkfs", "--force", device)
            famfsctl("creat", "-s", "2m", "--randomize", "--seed", "2", "--device", device, "new")
            new_bytes = file_bytes(device, "new")
            with pytest.raises(OSError) as failed:
                handle.seek(0)
                handle.write(b"X" * 4096)
            assert failed.value.errno in (errno.ESTALE, errno.EIO)
            with pytest.raises(OSError) as failed:
                handle.seek(0)
                handle.read(4096)
            assert failed.value.errno in (errno.ESTALE, errno.EIO)
        assert file_bytes(device, "new") == new_bytes


def test_new_files_readable_after_mkfs_with_another_log_length(tmp_path: Path, system_uuid_file: Path) -> None:
    """No remount: the mount takes the new superblock's bounds (data start, statfs)."""
    device = make_device(tmp_path, system_uuid_file)
    famfsctl("creat", "-s", "2m", "--device", device, "before")
    with following_mount(tmp_path, device) as stack:
        mountpoint = stack.mount.mountpoint
        wait_for(lambda: (mountpoint / "before").exists(), "the first file in the mount")
        famfsctl("mkfs", "--force", "--loglen", "64m", device)
        famfsctl("creat", "-s", "3m", "--randomize", "--seed", "7", "--device", device, "after")
        wait_for(lambda: (mountpoint / "after").exists(), "the new file in the mount")
        assert (mountpoint / "after").read_bytes() == file_bytes(device, "after")
        assert not (mountpoint / "before").exists()
        statfs = os.statvfs(mountpoint)
        with Device(device) as opened:
            sb = FamfsLog(opened).superblock
        data_units = (sb.dev_size - sb.data_start) // sb.alloc_unit
        # Used: the new file's two units; the 64 MiB log takes 28 more units than the 8 MiB one.
        assert statfs.f_bfree == data_units - 2


def test_the_master_mount_writes_the_file_system_now_on_the_device(tmp_path: Path, system_uuid_file: Path) -> None:
    """mkfs --force with another log length under the master's mount: what is then written
    through the mount goes into the new log, allocated past the new log's end (a writer still on
    the old superblock would put data inside the new, longer log)."""
    device = make_device(tmp_path, system_uuid_file)
    with following_mount(tmp_path, device) as stack:
        mountpoint = stack.mount.mountpoint
        (mountpoint / "before").mkdir()
        famfsctl("mkfs", "--force", "--loglen", "64m", device)
        wait_for(lambda: not (mountpoint / "before").exists(), "the re-made file system in the mount")
        (mountpoint / "after").mkdir()
        payload = os.urandom(3 << 20)
        (mountpoint / "after" / "f").write_bytes(payload)
        wait_for(lambda: len(entries(device)) == 2, "the new file's entry")
        made = entries(device)
        assert made[0] == fmt.MkdirEntry("after", 0o755, os.getuid(), os.getgid())
        assert isinstance(made[1], fmt.FileEntry) and made[1].relpath == "after/f"
        with Device(device) as opened:
            data_start = FamfsLog(opened).superblock.data_start
        assert all(extent.offset >= data_start for extent in made[1].all_extents())
        assert file_bytes(device, "after/f") == payload
        assert famfsctl("fsck", device).returncode == 0


def test_replaced_image_is_never_served(tmp_path: Path, system_uuid_file: Path) -> None:
    """rm the image, make a new one at the same path, restart the agent: the mount serves the
    new image's bytes (the old, deleted one it holds open is never read again)."""
    device = make_device(tmp_path, system_uuid_file)
    famfsctl("creat", "-s", "2m", "--randomize", "--seed", "1", "--device", device, "old")
    shadow = tmp_path / "shadow"
    # A one-shot play: its record is no lease (docs/reclaim.md, step 6). A follower stopped here
    # would leave a lease the mount honours for its serve window only (fusefs/lease.py).
    play(device, shadow)
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        with open(mount.mountpoint / "old", "rb", buffering=0) as handle:
            old_bytes = handle.read(4096)
            device.unlink()
            famfsctl("mkfs", "--size", "1g", device)
            # Same extents as "old" had (the first allocation), other bytes.
            famfsctl("creat", "-s", "2m", "--randomize", "--seed", "2", "--device", device, "new")
            new_bytes = file_bytes(device, "new")
            assert new_bytes[:4096] != old_bytes
            with following(device, shadow):
                wait_for(lambda: (mount.mountpoint / "new").exists(), "the new image's file in the mount")
                assert (mount.mountpoint / "new").read_bytes() == new_bytes
                with pytest.raises(OSError) as failed:
                    handle.seek(0)
                    handle.read(4096)
                assert failed.value.errno in (errno.ESTALE, errno.EIO)
        assert "device changed" in mount.log()


def test_hostile_shadow_yaml_is_refused(served: tuple[Path, Path], tmp_path: Path) -> None:
    """Shadow files no agent writes: each is EIO through the mount, which keeps serving (the
    thief's extents are the live file good's, which the mount's first listing loaded)."""
    device, shadow = served
    famfsctl("creat", "-s", "4k", "--device", device, "good")
    play(device, shadow)
    good = (shadow / "root" / "good").read_bytes()
    log_extent = emit_file_yaml(meta_file_entry(".meta/evil", 4096, fmt.LOG_OFFSET, 0o644))
    hostile = {
        ".meta/evil": log_extent,  # a file under .meta/ mapping the log
        ".meta/.superblock": emit_file_yaml(meta_file_entry(".meta/.superblock", 4096, fmt.LOG_OFFSET, 0o444)),
        "negative": good.replace(b"path: good", b"path: negative").replace(b"size: 4096", b"size: -4096"),
        "huge_number": good.replace(b"path: good", b"path: huge_number").replace(b"size: 4096", b"size: " + b"9" * 4400),
        "nested": b"[" * 400 + b"]" * 400,
    }
    thief = good.replace(b"path: good", b"path: thief")  # the live file good's memory: not the log's
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        for relpath, text in hostile.items():
            put_yaml(shadow, relpath, text)
        put_yaml(shadow, "thief", thief)
        for relpath in hostile:
            target = mount.mountpoint / relpath
            wait_for(lambda: stat_gives_eio(target), f"{relpath} answered with EIO")
        wait_for(lambda: not os.path.exists(mount.mountpoint / "thief"), "thief not served (ENOENT)")
        assert "thief" not in os.listdir(mount.mountpoint)
        assert (mount.mountpoint / "good").read_bytes() == file_bytes(device, "good")
    assert "bad shadow file" in mount.log()
    assert "maps units of log entry" in mount.log()


def test_a_yaml_ahead_of_the_owner_map_is_served_once_the_agent_owns_it(tmp_path: Path, system_uuid_file: Path) -> None:
    """A YAML written before the agent gave its units to its entry (upstream's CLI writes the
    shadow file itself) is refused, and not cached as an error: once the owner map names its
    entry, the same YAML is served. A YAML of the same memory at another path never is."""
    device = make_device(tmp_path, system_uuid_file)
    shadow = empty_shadow(tmp_path / "shadow", device)
    real, thief = file_entry("real", 0), file_entry("thief", 0)  # the same allocation unit
    put_yaml(shadow, "thief", emit_file_yaml(thief))
    put_yaml(shadow, "real", emit_file_yaml(real))  # ahead of its log entry and owner
    with Device(str(device)) as opened:
        famfs_log = FamfsLog(opened)
        check = ShadowCheck(famfs_log, shadow / ".agent" / OWNERS_FILE)
        table = InodeTable(os.fsencode(shadow / "root"), rules.Geometry.of(famfs_log.superblock), check)
        root = table.get(ROOT_INODE)
        assert root is not None
        thief_node, real_node = table.child(root, b"thief"), table.child(root, b"real")
        assert thief_node is not None and real_node is not None
        assert table.file_entry(thief_node) is None and "free device space" in (thief_node.refused or "")
        assert table.file_entry(real_node) is None and real_node.error is None
        own_file(shadow, real)  # the log entry, then the agent's owner map
        assert table.file_entry(thief_node) is None and "at path 'real'" in (thief_node.refused or "")
        assert table.file_entry(real_node) == real
        check.close()
