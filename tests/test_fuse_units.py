"""The mount's pure parts without a mount: the inode table against a real shadow directory,
shadow-file checks, and the data path against a real image."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
import trio

from famfs import format as fmt
from famfs.device import Device
from famfs.master.mkfs import create_image
from famfs.shadowyaml import emit_file_yaml, meta_file_entry
from fusefs import shadow_reader
from fusefs.datapath import DataError, DataPath
from fusefs import inodes
from fusefs.inodes import ROOT_INODE, InodeTable, Negatives, Node, NoticeKind
from famfs.inotify import IN_Q_OVERFLOW, Inotify
from fusefs.shadow_reader import Geometry
from fusefs.watcher import CHANNEL_SIZE, RESCAN, ShadowWatcher, Tree, watch_tree
from tests.fuse_util import TrustingChecker, empty_shadow, put_file, put_yaml

MiB = 1 << 20
UNIT = 2 * MiB
DATA_START = fmt.data_start(fmt.DEFAULT_LOG_LEN)
GEOMETRY = Geometry(dev_size=1 << 30, log_len=fmt.DEFAULT_LOG_LEN, alloc_unit=UNIT)


def entry(relpath: str, size: int = 100, unit: int = 0) -> fmt.FileEntry:
    return fmt.FileEntry(relpath=relpath, size=size, mode=0o644, uid=0, gid=0,
                         extents=(fmt.Extent(offset=DATA_START + unit * UNIT, length=UNIT),))


@pytest.fixture
def shadow(tmp_path: Path) -> Path:
    return empty_shadow(tmp_path / "shadow")


def table_of(shadow: Path, negative_timeout: float = 3600.0) -> InodeTable:
    return InodeTable(os.fsencode(shadow / "root"), GEOMETRY, TrustingChecker(), negative_timeout)


def top_level(table: InodeTable, name: bytes) -> Node:
    """The node of a name in the shadow root, which must be there."""
    root = table.get(ROOT_INODE)
    assert root is not None
    node = table.child(root, name)
    assert node is not None
    return node


def test_refresh_reports_what_the_kernel_must_forget(shadow: Path) -> None:
    put_file(shadow, entry("kept"))
    table = table_of(shadow)
    kept = top_level(table, b"kept")
    assert table.file_entry(kept) == entry("kept")
    table.remember(kept)

    put_file(shadow, entry("new"))
    table.negatives.add(ROOT_INODE, b"new")  # a lookup answered "no such name": the kernel may cache it
    (new_notice,) = table.refresh(b"new")
    assert new_notice.kind is NoticeKind.NEW_NAME and new_notice.parent == ROOT_INODE and new_notice.name == b"new"
    put_file(shadow, entry("unasked"))
    assert table.refresh(b"unasked") == []  # never looked up: the kernel holds nothing to drop

    put_file(shadow, entry("kept")._replace(mode=0o600))  # the same file written again (a SETATTR): same inode
    (changed,) = table.refresh(b"kept")
    assert changed.kind is NoticeKind.INODE and changed.ino == kept.ino
    assert table.file_entry(kept) == entry("kept")._replace(mode=0o600)
    kept.opens += 1
    put_file(shadow, entry("kept")._replace(mode=0o640))
    (while_open,) = table.refresh(b"kept")
    assert while_open.kind is NoticeKind.ATTRS and kept.data_stale
    assert table.release(kept)  # the last close drops the cached data

    (shadow / "root" / "kept").unlink()
    (deleted,) = table.refresh(b"kept")
    assert deleted.kind is NoticeKind.DELETED and deleted.ino == kept.ino
    assert table.get(kept.ino) is kept  # the kernel still knows it
    table.forget(kept.ino, 1)
    assert table.get(kept.ino) is None
    assert table.refresh(b"kept") == []


def test_another_file_at_the_path_of_an_open_one_is_a_new_inode(shadow: Path) -> None:
    """make churn's wrong bytes (2026-12-05): a reader held a file open while its DELETE and a new
    FILE of the same path were applied in one batch, so the table saw the YAML change, not go;
    the node took the new file's extents and the open handle read the new file's bytes. Another
    file at the path (other bytes or size) is a new inode: the old node keeps serving the handle
    its own file (deleted, still pinned), and the kernel is told to forget the old name."""
    put_file(shadow, entry("f"))
    table = table_of(shadow)
    held = top_level(table, b"f")
    assert table.file_entry(held) == entry("f")
    table.remember(held)  # looked up
    held.opens += 1  # and open
    (shadow / "root" / "f").unlink()  # the DELETE, then a new file at the same path, before the refresh
    put_file(shadow, entry("f", size=200, unit=1))
    (gone,) = table.refresh(b"f")
    assert gone.kind is NoticeKind.DELETED and gone.ino == held.ino
    assert table.file_entry(held) == entry("f") and not held.present  # the handle's file, as when opened
    new = top_level(table, b"f")
    assert new.ino != held.ino and table.file_entry(new) == entry("f", size=200, unit=1)


def test_a_file_deleted_before_the_table_knows_is_no_such_file(shadow: Path) -> None:
    put_file(shadow, entry("doomed"))
    table = table_of(shadow)
    doomed = top_level(table, b"doomed")
    (shadow / "root" / "doomed").unlink()  # the watcher's event not taken in yet
    assert table.file_entry(doomed) is None
    assert doomed.error is None and doomed.refused is not None  # ENOENT, not EIO
    with pytest.raises(shadow_reader.Gone):  # not a bad shadow file: one that is not there
        shadow_reader.load_file(os.fsencode(shadow / "root"), b"doomed", GEOMETRY)
    put_file(shadow, entry("doomed", size=200))  # made again: served once read
    assert table.file_entry(doomed) == entry("doomed", size=200)


def test_a_directory_renamed_in_whole_is_scanned(shadow: Path) -> None:
    table = table_of(shadow)
    staged = shadow / ".agent" / "staging" / "tree"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "leaf").write_bytes(emit_file_yaml(entry("tree/sub/leaf")))
    staged.rename(shadow / "root" / "tree")
    table.negatives.add(ROOT_INODE, b"tree")
    notices = table.refresh(b"tree")
    assert [notice.kind for notice in notices] == [NoticeKind.NEW_NAME]
    assert b"tree/sub/leaf" in table.by_path
    assert table.refresh(b"tree/sub/leaf") == []  # the later inotify event changes nothing


def test_negatives_are_the_names_the_kernel_may_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(inodes.time, "monotonic", lambda: now[0])
    negatives = Negatives(timeout=10.0)
    negatives.add(1, b"a")
    assert negatives.take(1, b"a") and not negatives.take(1, b"a")  # the notice sent drops it
    assert not negatives.take(1, b"b") and not negatives.take(2, b"a")
    negatives.add(1, b"a")
    now[0] += 10.0 + inodes.NEGATIVE_SLACK_S + 0.1
    assert not negatives.take(1, b"a")  # the kernel's timeout has passed: looked up again anyway
    zero = Negatives(timeout=0.0)
    zero.add(1, b"a")
    assert not zero.take(1, b"a")  # a zero timeout caches nothing


def test_negatives_overflowing_notify_every_name_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(inodes.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(inodes, "NEGATIVES_KEPT", 4)
    negatives = Negatives(timeout=10.0)
    for n in range(5):
        negatives.add(1, b"%d" % n)
    assert len(negatives.until) <= 4
    assert negatives.take(7, b"never-added")  # forgotten ones may still be cached: all are notified
    now[0] += 10.0 + inodes.NEGATIVE_SLACK_S + 0.1
    assert not negatives.take(7, b"never-added")


def test_reconcile_candidates_are_the_differences_parents_first(shadow: Path) -> None:
    put_file(shadow, entry("gone"))
    table = table_of(shadow)
    (shadow / "root" / "gone").unlink()
    (shadow / "root" / "d").mkdir()
    put_file(shadow, entry("d/f"))
    disk = shadow_reader.walk(os.fsencode(shadow / "root"))
    assert table.reconcile_candidates(disk) == [b"", b"d", b"gone", b"d/f"]


def test_shadow_file_checks(shadow: Path) -> None:
    root = shadow / "root"
    put_yaml(shadow, "elsewhere", emit_file_yaml(entry("other")))
    with pytest.raises(fmt.FormatError, match="path key"):
        shadow_reader.load_file(os.fsencode(root), b"elsewhere", GEOMETRY)
    (root / ".meta").mkdir()
    superblock = meta_file_entry(".meta/.superblock", fmt.SUPERBLOCK_SIZE, 0, 0o444)
    put_file(shadow, superblock)
    assert shadow_reader.load_file(os.fsencode(root), b".meta/.superblock", GEOMETRY) == superblock
    put_file(shadow, meta_file_entry(".meta/.log", 1 << 31, fmt.LOG_OFFSET, 0o444))
    with pytest.raises(fmt.FormatError, match="past the device end"):
        shadow_reader.load_file(os.fsencode(root), b".meta/.log", GEOMETRY)
    os.symlink(root / "elsewhere", root / "link")
    assert shadow_reader.signature(os.fsencode(root / "link")) is None
    assert shadow_reader.signature_beneath(os.fsencode(root), b"link") is None
    with pytest.raises(fmt.FormatError, match="symlink"):
        shadow_reader.load_file(os.fsencode(root), b"link", GEOMETRY)


def test_files_loaded_by_name_in_an_open_directory(shadow: Path) -> None:
    """A directory listing loads its files by name through one descriptor of the directory: the
    same checks as by path (a FIFO is refused at once, never waited on; a symlink is refused)."""
    root = shadow / "root"
    (root / "d").mkdir()
    put_file(shadow, entry("d/good", size=7))
    os.mkfifo(root / "d" / "fifo")
    os.symlink(root / "d" / "good", root / "d" / "link")
    put_yaml(shadow, "d/moved", emit_file_yaml(entry("d/elsewhere", unit=1)))
    dir_fd = shadow_reader.open_dir(os.fsencode(root), b"d")
    assert dir_fd is not None
    try:
        assert shadow_reader.load_file(os.fsencode(root), b"d/good", GEOMETRY, dir_fd) == entry("d/good", size=7)
        with pytest.raises(fmt.FormatError, match="not a regular file"):
            shadow_reader.load_file(os.fsencode(root), b"d/fifo", GEOMETRY, dir_fd)
        with pytest.raises(fmt.FormatError, match="symlink"):
            shadow_reader.load_file(os.fsencode(root), b"d/link", GEOMETRY, dir_fd)
        with pytest.raises(fmt.FormatError, match="path key"):
            shadow_reader.load_file(os.fsencode(root), b"d/moved", GEOMETRY, dir_fd)
        # Through the table: the node's name in its parent's descriptor.
        (root / "d" / "fifo").unlink()
        put_file(shadow, entry("d/late", unit=2))
        table = table_of(shadow)
        directory = table.child(table.nodes[ROOT_INODE], b"d")
        assert directory is not None
        late = table.child(directory, b"late")
        assert late is not None and table.file_entry(late, dir_fd) == entry("d/late", unit=2)
    finally:
        os.close(dir_fd)
    assert shadow_reader.open_dir(os.fsencode(root), b"d/good") is None  # not a directory
    assert shadow_reader.open_dir(os.fsencode(root), b"missing") is None


def test_data_path_maps_interleaved_files_and_keeps_sizes_fixed(tmp_path: Path) -> None:
    image = tmp_path / "dev.img"
    create_image(image, 64 * MiB)
    chunk = 4096
    strips = tuple(fmt.Extent(offset=(8 + 4 * n) * MiB, length=4 * chunk) for n in range(2))
    striped = fmt.FileEntry(relpath="s", size=7 * chunk + 5, mode=0o644, uid=0, gid=0,
                            stripes=(fmt.Stripe(chunk_size=chunk, strips=strips),))
    content = os.urandom(striped.size)
    with open(image, "r+b") as raw:
        for number in range(8):
            raw.seek(strips[number % 2].offset + (number // 2) * chunk)
            raw.write(content[number * chunk:(number + 1) * chunk])
    with Device(image, writable=True) as device:
        data = DataPath(device)
        assert bytes(data.read(striped, 0, striped.size + 100)) == content
        assert bytes(data.read(striped, chunk - 3, 10)) == content[chunk - 3:chunk + 7]
        assert data.read(striped, chunk - 3, 10, copy=True) == content[chunk - 3:chunk + 7]  # two pieces, joined
        assert data.read(striped, 5, 10, copy=True) == content[5:15]  # one piece: a copy, not a view
        assert isinstance(data.read(striped, 5, 10, copy=True), bytes)
        # A simple file: the one-piece path (famfs.format.one_piece), a view or a copy.
        simple = fmt.FileEntry(relpath="f", size=3 * chunk, mode=0o644, uid=0, gid=0,
                               extents=(fmt.Extent(offset=strips[0].offset, length=4 * chunk),))
        on_device = content[chunk - 3:chunk] + content[2 * chunk:2 * chunk + 7]  # chunks 0 and 2 are strip 0's
        view = data.read(simple, chunk - 3, 10)
        assert isinstance(view, memoryview) and bytes(view) == on_device
        view.release()
        assert data.read(simple, chunk - 3, 10, copy=True) == on_device
        assert data.read(simple, 3 * chunk - 2, 10, copy=True) == content[5 * chunk - 2:5 * chunk]  # short at the end
        assert data.read(simple, 3 * chunk, 10, copy=True) == b""
        assert data.read(striped, striped.size, 10) == b""
        assert data.write(striped, striped.size - 2, b"xyz") == 2
        with pytest.raises(DataError):
            data.write(striped, striped.size, b"x")
        assert bytes(data.read(striped, striped.size - 2, 2)) == b"xy"
        data.close()


def test_a_directory_the_kernel_will_not_watch_is_reported(tmp_path: Path) -> None:
    """The hook that turns a missing watch (the watch limit, in production) into a rescan: here
    the kernel refuses an empty event mask (EINVAL); a path already gone is not reported, and
    what is inside a directory is still listed."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"")
    inotify = Inotify()
    try:
        tree = watch_tree(inotify, os.fsencode(tmp_path), b"", collect=True, mask=0)
        assert len(tree.unwatched) == 2 and str(tmp_path / "sub") in tree.unwatched[1]
        assert sorted(tree.found) == [b"sub", b"sub/f"] and tree.watched == {}
        gone = watch_tree(inotify, os.fsencode(tmp_path / "gone"), b"", collect=True)
        assert gone == Tree()
        watched = watch_tree(inotify, os.fsencode(tmp_path), b"", collect=False)
        assert sorted(watched.watched.values()) == [b"", b"sub"] and not watched.unwatched
    finally:
        inotify.close()


def test_the_watcher_follows_directories_made_moved_and_moved_away(tmp_path: Path) -> None:
    """A directory moved in whole is watched with what it holds; one moved within the tree keeps
    its watches under its new name; one moved out of the tree loses them."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (outside / "in" / "deep").mkdir(parents=True)
    (outside / "in" / "deep" / "f").write_bytes(b"")

    async def main() -> None:
        send, receive = trio.open_memory_channel[bytes | None](CHANNEL_SIZE)
        watcher = ShadowWatcher(os.fsencode(root), send)
        watcher.start()

        async def until(wanted: bytes) -> None:
            with trio.fail_after(10):
                while await receive.receive() != wanted:
                    pass

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher.run)
                (outside / "in").rename(root / "in")
                await until(b"in/deep/f")
                (root / "in" / "deep" / "g").write_bytes(b"")
                await until(b"in/deep/g")
                (root / "a").rename(root / "a2")
                await until(b"a2/b")
                (root / "a2" / "b" / "h").write_bytes(b"")
                await until(b"a2/b/h")
                (root / "a2").rename(outside / "a3")
                await until(b"a2")
                (outside / "a3" / "b" / "unseen").write_bytes(b"")
                (root / "last").write_bytes(b"")
                await until(b"last")
                assert sorted(watcher._dirs.values()) == [b"", b"in", b"in/deep"]
                assert watcher.alive()
                nursery.cancel_scope.cancel()
        finally:
            watcher.stop()

    trio.run(main)


def test_after_an_overflow_every_directory_is_watched_again(tmp_path: Path) -> None:
    """The events lost in an overflow include directories made meanwhile: they get watches, and
    a rescan is asked for. The shadow root removed stops the watcher (the rescans take over)."""
    root = tmp_path / "root"
    root.mkdir()

    async def main() -> None:
        send, receive = trio.open_memory_channel[bytes | None](CHANNEL_SIZE)
        watcher = ShadowWatcher(os.fsencode(root), send)
        watcher.start()
        try:
            (root / "made" / "deeper").mkdir(parents=True)
            while watcher.inotify.read():
                pass  # as if the queue had overflowed: these events are lost
            await watcher._take(struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0))
            assert receive.receive_nowait() is RESCAN
            assert sorted(watcher._dirs.values()) == [b"", b"made", b"made/deeper"]
            (root / "made" / "deeper" / "f").write_bytes(b"")
            await trio.lowlevel.wait_readable(watcher.inotify.fd)
            await watcher._take(watcher._read())
            assert receive.receive_nowait() == b"made/deeper/f"
            shutil.rmtree(root)
            with trio.fail_after(10):
                await watcher.run()  # returns once the root's own watch says it is gone
            assert not watcher.alive()
        finally:
            watcher.stop()

    trio.run(main)


def test_statfs_figures_played_on_agree_with_a_whole_replay(tmp_path: Path, system_uuid_file: Path) -> None:
    """The cache plays only the entries appended since its last look (fusefs/capacity.py); what
    it reports is what a replay of the whole log reports, after creates, deletes and a re-made
    file system with more entries than before."""
    import famfs
    from famfs.famfslog import FamfsLog
    from fusefs.capacity import CapacityCache
    from tests.famfsctl_util import famfsctl, make_image

    image = make_image(tmp_path / "dev.img", "1g")

    def fresh() -> object:
        with Device(str(image)) as device:
            return CapacityCache(FamfsLog(device)).current()

    with Device(str(image)) as device:
        cache = CapacityCache(FamfsLog(device))
        master = famfs.Master(image, system_uuid_file=system_uuid_file)
        first = cache.current()
        for n in range(3):
            with master.create(f"f{n}", 3 << 20) as new:
                new.buffer[:1] = b"x"
        master.remove("f1")
        grown = cache.current()
        assert grown == fresh() and grown.free_units == first.free_units - 6 and grown.held_units == 2
        famfsctl("mkfs", "--force", image)
        for name in ("a", "b", "c", "d", "e", "f"):
            famfsctl("mkdir", "--device", image, name)
        assert cache.current() == fresh()


def test_every_request_handler_is_guarded() -> None:
    """`guarded` turns an exception into EIO, counts every error answer by errno and, with
    metrics on, every request (the famfs_fuse_errors and famfs_fuse_requests metrics): each
    handler pyfuse3 can call must go through it."""
    from fusefs.operations import OPERATIONS, FamfsOperations
    unguarded = [name for name in OPERATIONS if not hasattr(getattr(FamfsOperations, name), "__wrapped__")]
    assert unguarded == []
