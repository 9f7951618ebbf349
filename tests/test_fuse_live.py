"""Live updates: the shadow tree changes under a mount that had cached the old state (negative
lookups, open handles, listed directories, long timeouts) and the mount shows the change at once.
Every wait is bounded polling; nothing here times anything."""

from __future__ import annotations

import errno
import mmap
import os
import signal
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs.master import prng
from famfs.shadowyaml import emit_file_yaml
from tests.famfsctl_util import famfsctl, make_image
from tests.fuse_util import (
    Mount,
    empty_shadow,
    mount_status,
    own_dir,
    own_file,
    play,
    proc_setting,
    put_dir,
    put_file,
    wait_for,
    write_device,
)

MiB = 1 << 20
UNIT = 2 * MiB
DATA_START = fmt.data_start(fmt.DEFAULT_LOG_LEN)


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    return make_image(tmp_path / "dev.img", "8g")


def file_at(relpath: str, unit: int, size: int = UNIT, mode: int = 0o644) -> fmt.FileEntry:
    """A file at data unit `unit`: live files of one tree need units of their own (the mount
    refuses a file whose memory another live file holds)."""
    return fmt.FileEntry(relpath=relpath, size=size, mode=mode, uid=0, gid=0,
                         extents=(fmt.Extent(offset=DATA_START + unit * UNIT, length=fmt.round_up(size, UNIT)),))


def exists(path: Path) -> bool:
    try:
        path.stat()
        return True
    except FileNotFoundError:
        return False


def test_agent_changes_reach_a_mount_with_cached_state(tmp_path: Path, device: Path) -> None:
    famfsctl("mkdir", "--device", device, "dir")
    famfsctl("creat", "--device", device, "-s", "70000", "-r", "-S", "1", "dir/old")
    shadow = tmp_path / "shadow"
    play(device, shadow)
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        new = mount.mountpoint / "dir" / "new"
        old = mount.mountpoint / "dir" / "old"
        assert not exists(new)  # cached as a negative lookup for an hour
        assert os.listdir(mount.mountpoint / "dir") == ["old"]
        assert old.stat().st_size == 70000
        famfsctl("creat", "--device", device, "-s", "5000", "-r", "-S", "2", "dir/new")
        famfsctl("rm", "--device", device, "dir/old")
        play(device, shadow)
        wait_for(lambda: exists(new), "the new file behind a cached negative lookup")
        assert prng.first_mismatch(2, [new.read_bytes()]) is None
        wait_for(lambda: not exists(old), "the deleted file to go")
        assert os.listdir(mount.mountpoint / "dir") == ["new"]
        assert mount_status(mount.mountpoint)["notifications"] >= 2


def test_hand_made_changes_under_a_mount(tmp_path: Path, device: Path) -> None:
    first, second = os.urandom(UNIT), os.urandom(UNIT)
    write_device(device, DATA_START, first)
    write_device(device, DATA_START + UNIT, second)
    shadow = empty_shadow(tmp_path / "shadow", device)
    put_file(shadow, file_at("remapped", 0, size=UNIT - 10))
    with Mount(shadow, device, tmp_path / "mnt", "cache=direct") as mount:
        root = mount.mountpoint
        remapped = root / "remapped"
        with open(remapped, "rb", buffering=0) as handle:
            assert os.pread(handle.fileno(), UNIT, 0) == first[:UNIT - 10]
            inode = os.fstat(handle.fileno()).st_ino
            # Another file at the name (other extents, another size) while the handle is open:
            # the name shows the new file, a new inode; the handle reads its own file's bytes.
            put_file(shadow, file_at("remapped", 1, size=UNIT - 20, mode=0o600))
            wait_for(lambda: os.stat(remapped).st_size == UNIT - 20, "the name shows the new file")
            assert os.stat(remapped).st_ino != inode and os.stat(remapped).st_mode & 0o777 == 0o600
            assert os.pread(handle.fileno(), UNIT, 0) == first[:UNIT - 10]  # never the new file's bytes
        assert remapped.read_bytes() == second[:UNIT - 20]
        # A directory that appears already populated (inotify cannot report its contents).
        staged = shadow / ".agent" / "staging" / "tree"
        (staged / "inner").mkdir(parents=True)
        own_dir(shadow, staged, "tree")
        own_dir(shadow, staged / "inner", "tree/inner")
        for n in range(20):
            own_file(shadow, file_at(f"tree/inner/f{n}", 2 + n, size=100 + n))
            (staged / "inner" / f"f{n}").write_bytes(emit_file_yaml(file_at(f"tree/inner/f{n}", 2 + n, size=100 + n)))
        assert not exists(root / "tree")
        staged.rename(shadow / "root" / "tree")
        wait_for(lambda: exists(root / "tree" / "inner" / "f19"), "files of a directory renamed into place")
        assert sorted(os.listdir(root / "tree" / "inner")) == sorted(f"f{n}" for n in range(20))
        assert (root / "tree" / "inner" / "f7").stat().st_size == 107
        # A listed directory sees a deletion.
        assert "remapped" in os.listdir(root)
        (shadow / "root" / "remapped").unlink()
        wait_for(lambda: "remapped" not in os.listdir(root), "the deletion in a listed directory")
        wait_for(lambda: not exists(remapped), "the deleted name's cached entry to go")


def test_lookup_counts_release_deleted_inodes(tmp_path: Path, device: Path) -> None:
    shadow = empty_shadow(tmp_path / "shadow", device)
    put_dir(shadow, "big")
    for n in range(1000):
        put_file(shadow, file_at(f"big/f{n:05}", n, size=n + 1))
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        baseline = mount_status(mount.mountpoint)["inodes"]
        names = os.listdir(mount.mountpoint / "big")  # readdirplus: a lookup per entry, in several batches
        assert sorted(names) == [f"f{n:05}" for n in range(1000)]  # each exactly once
        for n in range(1000):
            (shadow / "root" / "big" / f"f{n:05}").unlink()
        wait_for(lambda: os.listdir(mount.mountpoint / "big") == [], "the deletions")
        # The kernel forgets what it cached; exact counts let every deleted inode go.
        with open("/proc/sys/vm/drop_caches", "w") as drop:
            drop.write("2")
        wait_for(lambda: mount_status(mount.mountpoint)["inodes"] == baseline - 1000, "forget of deleted inodes")


def test_overflow_forces_a_rescan(tmp_path: Path, device: Path) -> None:
    shadow = empty_shadow(tmp_path / "shadow", device)
    mountpoint = tmp_path / "mnt"
    # The queue limit is read when the inotify instance is made: only this mount gets it.
    with proc_setting("/proc/sys/fs/inotify/max_queued_events", 16):
        mount = Mount(shadow, device, mountpoint, "rescan=0").__enter__()
    try:
        assert not exists(mountpoint / "f00399")
        mount.signal(signal.SIGSTOP)  # nothing drains inotify while we make 400 changes
        try:
            for n in range(400):
                put_file(shadow, file_at(f"f{n:05}", n, size=n + 1))
        finally:
            mount.signal(signal.SIGCONT)
        wait_for(lambda: mount_status(mountpoint)["lost_event_rescans"] >= 1, "a rescan after the overflow")
        wait_for(lambda: exists(mountpoint / "f00399"), "the last file after the rescan")
        assert len(os.listdir(mountpoint)) == 400
    finally:
        mount.__exit__(None, None, None)
    assert "overflow" in mount.log()


def test_symlinks_in_the_shadow_are_never_followed(tmp_path: Path, device: Path) -> None:
    shadow = empty_shadow(tmp_path / "shadow", device)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not famfs")
    os.symlink(outside, shadow / "root" / "escape")
    os.symlink(outside / "secret", shadow / "root" / "secretlink")
    put_file(shadow, file_at("real", 0, size=10))
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        assert os.listdir(mount.mountpoint) == ["real"]
        for name in ("escape", "secretlink"):
            with pytest.raises(OSError) as missing:
                os.stat(mount.mountpoint / name)
            assert missing.value.errno == errno.ENOENT


def test_another_file_at_an_open_files_path_leaves_the_handle_its_own_pages(tmp_path: Path, device: Path) -> None:
    """With the page cache kept across opens: the old file's cached pages stay its own (its
    handle reads them), and an open of the path reads the new file, none of the old one's pages."""
    first, second = os.urandom(UNIT), os.urandom(UNIT)
    write_device(device, DATA_START + 4 * UNIT, first)
    write_device(device, DATA_START + 5 * UNIT, second)
    shadow = empty_shadow(tmp_path / "shadow", device)
    put_file(shadow, file_at("data", 4))
    with Mount(shadow, device, tmp_path / "mnt", "cache=always") as mount:  # page cache kept across opens
        path = mount.mountpoint / "data"
        with open(path, "rb") as handle:
            assert handle.read() == first
            put_file(shadow, file_at("data", 5, mode=0o600))  # same size, other extent: another file
            wait_for(lambda: path.stat().st_mode & 0o777 == 0o600, "the name shows the new file")
            assert path.read_bytes() == second
            handle.seek(0)
            assert handle.read() == first


def test_periodic_rescan_catches_what_inotify_never_reports(tmp_path: Path, device: Path) -> None:
    shadow = empty_shadow(tmp_path / "shadow", device)
    target = put_file(shadow, file_at("quiet", 0, size=1000))
    with Mount(shadow, device, tmp_path / "mnt", "rescan=0.2") as mount:
        path = mount.mountpoint / "quiet"
        assert path.stat().st_size == 1000  # cached for an hour
        # A write through a shared mapping raises no inotify event at all; only a rescan sees it.
        own_file(shadow, file_at("quiet", 0, size=2000))  # logged, as every file served must be
        with open(target, "r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
            at = mapped.find(b"size: 1000")
            mapped[at:at + 10] = b"size: 2000"
        wait_for(lambda: path.stat().st_size == 2000, "the periodic rescan to apply the change")
        assert mount_status(mount.mountpoint)["rescans"] >= 1


def test_a_deleted_shadow_root_degrades_to_rescans(tmp_path: Path, device: Path) -> None:
    shadow = empty_shadow(tmp_path / "shadow", device)
    put_file(shadow, file_at("before", 0, size=10))
    with Mount(shadow, device, tmp_path / "mnt", "rescan=0") as mount:
        assert os.listdir(mount.mountpoint) == ["before"]
        (shadow / "root" / "before").unlink()
        (shadow / "root").rmdir()  # the watch on the root goes with it
        (shadow / "root").mkdir(mode=0o755)
        put_file(shadow, file_at("after", 0, size=20))
        wait_for(lambda: os.listdir(mount.mountpoint) == ["after"], "the new root's contents")
        assert (mount.mountpoint / "after").stat().st_size == 20
    assert "the inotify watcher stopped" in mount.log()


def inotify_watches(pid: int) -> int:
    """How many inotify watches the process holds (its inotify instances' fdinfo lists each one)."""
    watches = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:  # the mount opens and closes files meanwhile: an fd listed a moment ago may be gone
            if os.readlink(fd) == "anon_inode:inotify":
                watches += (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().count("inotify wd:")
        except FileNotFoundError:
            continue
    return watches


def test_a_mount_over_thousands_of_directories_watches_each_one(tmp_path: Path, device: Path) -> None:
    """Watches are really set up everywhere at start (the set-up used to be quadratic, so it is
    the code a fix would touch), and on directories that appear afterwards. rescan=0: only
    inotify can tell the mount about a change."""
    shadow = empty_shadow(tmp_path / "shadow", device)  # each directory logged and the agent's
    root = shadow / "root"
    for top in range(40):
        put_dir(shadow, f"d{top:02}")
        for sub in range(50):
            put_dir(shadow, f"d{top:02}/s{sub:02}")
    chain = ["deep", *("q" * 30)]  # 30 levels below deep/, the file in it within famfs's 79-byte paths
    for depth in range(1, len(chain) + 1):
        put_dir(shadow, "/".join(chain[:depth]))
    deepest = root / "/".join(chain)
    directories = sum(1 for _ in os.walk(root))  # 2,071, the root included
    with Mount(shadow, device, tmp_path / "mnt", "rescan=0") as mount:
        assert mount.process is not None
        assert inotify_watches(mount.process.pid) == directories
        mounted = mount.mountpoint
        for relpath in ("d39/s49/last", f"{deepest.relative_to(root)}/deepest"):
            assert not exists(mounted / relpath)  # cached as a negative lookup for an hour
            put_file(shadow, file_at(relpath, 0, size=10))
            wait_for(lambda relpath=relpath: exists(mounted / relpath), f"{relpath} created after the start")
            (root / relpath).unlink()
        put_dir(shadow, "new")
        wait_for(lambda: exists(mounted / "new"), "a directory made after the start")
        assert not exists(mounted / "new" / "f")
        put_file(shadow, file_at("new/f", 1, size=20))
        wait_for(lambda: exists(mounted / "new" / "f"), "a file in the directory made after the start")
        assert inotify_watches(mount.process.pid) == directories + 1


def test_an_open_of_a_file_deleted_after_its_lookup_is_enoent_not_eio(tmp_path: Path, device: Path) -> None:
    """make churn's one reader EIO a run (issue 19): a reader listed a directory and opened a
    name; the kernel still held the name's entry when the mount had already dropped the file (its
    DELETE played, the kernel's invalidation not yet through), so the open reached the mount for
    a node it no longer serves, never loaded (a lookup serves attributes from the log slot, not
    the YAML): answered EIO, unlogged ("deleted before it was read", seen by a log line added for
    the churn run that caught it). It is no such file, as when the YAML is found gone at open. An
    O_PATH descriptor holds the inode here, and the open through /proc/self/fd reaches the mount
    exactly as that racing open did."""
    shadow = empty_shadow(tmp_path / "shadow", device)
    put_file(shadow, file_at("gone", 0, size=5000))
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        held = os.open(mount.mountpoint / "gone", os.O_PATH)  # a lookup, no open, nothing parsed
        try:
            (shadow / "root" / "gone").unlink()
            wait_for(lambda: "gone" not in os.listdir(mount.mountpoint), "the mount to drop the deleted file")
            with pytest.raises(OSError) as refused:
                os.open(f"/proc/self/fd/{held}", os.O_RDONLY)
            assert refused.value.errno == errno.ENOENT, refused.value
        finally:
            os.close(held)
