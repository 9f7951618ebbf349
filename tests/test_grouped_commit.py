"""Grouped commits (docs/fusefs.md, "Grouped commits"): new files logged together in one locked
step give the same log and bytes as the same files logged one by one; a file the rule book refuses
fails alone, with its own errno, and the rest of its group is logged; each caller of the mount's
GroupCommitter gets its own file's answer, only once its group is logged.

Real images and the real writer; the committer runs on trio with a writer stand-in that counts
the groups it is given.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from famfs import format as fmt
from famfs.master import writer
from famfs.master.mountwriter import SessionWriter
from famfs.namespace import NamespaceError, Owner
from fusefs.groupcommit import GroupCommitter
from tests.agent_util import append
from tests.famfsctl_util import entries, famfsctl, file_bytes, make_image

MiB = 1 << 20
OWNER = Owner(0o644, 0, 0)
# Sizes at the allocation unit's edges (2 MiB), an empty file among them.
SIZES = (0, 1, 4095, 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 3 * MiB + 5)


def new_files(prefix: str) -> list[tuple[str, Owner, bytes]]:
    return [(f"{prefix}/f{n}", Owner(0o600 + n, 1000 + n, 2000), bytes([n + 1]) * size)
            for n, size in enumerate(SIZES)]


def mkdir(path: Path, uuid_file: Path, relpath: str) -> None:
    with writer.session(str(path), uuid_file) as session:
        session.mkdir(relpath, writer.Ownership(0o755, 0, 0))


@pytest.fixture
def two_images(tmp_path: Path, system_uuid_file: Path) -> tuple[Path, Path]:
    images = make_image(tmp_path / "group.img", "256m"), make_image(tmp_path / "single.img", "256m")
    for image in images:
        mkdir(image, system_uuid_file, "d")
    return images


def test_a_group_logs_what_one_by_one_logs(two_images: tuple[Path, Path], system_uuid_file: Path) -> None:
    grouped, single = two_images
    files = new_files("d")
    indexes = SessionWriter(str(grouped), system_uuid_file).create_group(files)
    one_by_one = SessionWriter(str(single), system_uuid_file)
    expected = [one_by_one.create(relpath, len(data), owner, (data,))[0] for relpath, owner, data in files]
    assert indexes == expected == list(range(1, 1 + len(files)))
    assert entries(grouped) == entries(single)  # the same entries, extents included
    for relpath, _, data in files:
        assert file_bytes(grouped, relpath) == data
    for image in two_images:
        assert "fsck: clean" in famfsctl("fsck", image).stdout


def test_a_refused_file_fails_alone(two_images: tuple[Path, Path], system_uuid_file: Path) -> None:
    grouped, single = two_images
    files = [("d/ok1", OWNER, b"one"),
             ("d/ok1", OWNER, b"the same name again, in the same group"),
             ("missing/x", OWNER, b"no such parent"),
             ("d/" + "n" * 80, OWNER, b"a path longer than the log holds"),
             ("d/huge", OWNER, bytes(300 * MiB)),  # more than the device holds
             (".meta/x", OWNER, b"reserved"),
             ("d/ok2", OWNER, b"two")]
    results = SessionWriter(str(grouped), system_uuid_file).create_group(files)
    codes = [result.errno if isinstance(result, NamespaceError) else result for result in results]
    assert codes == [1, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ENOSPC, errno.EPERM, 2]
    assert all(result.strerror.startswith(f"{grouped}: ") for result in results if isinstance(result, NamespaceError))
    # One by one, the same files get the same answers and leave the same log.
    one_by_one = SessionWriter(str(single), system_uuid_file)
    for (relpath, owner, data), result in zip(files, results, strict=True):
        try:
            got = one_by_one.create(relpath, len(data), owner, (data,))[0]
        except NamespaceError as err:
            got = err.errno
        assert got == (result.errno if isinstance(result, NamespaceError) else result), relpath
    assert entries(grouped) == entries(single)
    assert file_bytes(grouped, "d/ok2") == b"two"
    assert "fsck: clean" in famfsctl("fsck", grouped).stdout


def test_a_group_past_the_logs_room_logs_what_fits(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "small-log.img", "64m")
    room = 3
    append(image, [fmt.MkdirEntry(f"fill{n}", 0o755, 0, 0)
                   for n in range(fmt.log_capacity(fmt.DEFAULT_LOG_LEN) - len(entries(image)) - room)])
    files = [(f"f{n}", OWNER, b"x") for n in range(room + 2)]
    results = SessionWriter(str(image), system_uuid_file).create_group(files)
    assert all(isinstance(result, int) for result in results[:room])
    assert [result.errno for result in results[room:] if isinstance(result, NamespaceError)] == [errno.ENOSPC] * 2
    assert "fsck: clean" in famfsctl("fsck", image).stdout


class Recorder:
    """A NamespaceWriter.create_group stand-in: the first group waits for `release`, so the files
    that arrive meanwhile form the next group; refuses names starting with "bad"."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.release = threading.Event()
        self.next = 0

    def __call__(self, files: Sequence[tuple[str, Owner, bytes]]) -> list[int | NamespaceError]:
        if not self.groups:
            assert self.release.wait(10)
        self.groups.append([relpath for relpath, _, _ in files])
        results: list[int | NamespaceError] = []
        for relpath, _, _ in files:
            if relpath.startswith("bad"):
                results.append(NamespaceError(errno.EEXIST, f"{relpath}: exists"))
            else:
                results.append(self.next)
                self.next += 1
        return results


def test_closers_that_arrive_while_a_group_is_logged_form_the_next_group() -> None:
    recorder = Recorder()
    answers: dict[str, int | str] = {}

    async def close(committer: GroupCommitter, relpath: str) -> None:
        try:
            answers[relpath] = await committer.commit(relpath, OWNER, b"")
        except NamespaceError as err:
            answers[relpath] = errno.errorcode[err.errno]

    async def main() -> None:
        committer = GroupCommitter(recorder, trio.CapacityLimiter(1))
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(close, committer, "first")
                await trio.testing.wait_all_tasks_blocked()
                for relpath in ("a", "bad", "b", "c"):
                    nursery.start_soon(close, committer, relpath)
                await trio.testing.wait_all_tasks_blocked()
                assert answers == {}  # nobody answered before its group is logged
                recorder.release.set()
        assert (committer.groups, committer.files) == (2, 5)

    trio.run(main)
    first, second = recorder.groups
    assert first == ["first"] and sorted(second) == ["a", "b", "bad", "c"]  # (trio starts tasks in any order)
    assert answers == {"first": 0, "bad": "EEXIST", **{relpath: 1 + n for n, relpath in
                                                       enumerate(name for name in second if name != "bad")}}


def test_a_failed_step_fails_its_whole_group_and_only_it() -> None:
    calls: list[list[str]] = []

    def broken_then_fine(files: Sequence[tuple[str, Owner, bytes]]) -> list[int | NamespaceError]:
        calls.append([relpath for relpath, _, _ in files])
        if len(calls) == 1:
            raise NamespaceError(errno.EIO, "the device went away")
        return list(range(len(files)))

    async def main() -> list[object]:
        committer = GroupCommitter(broken_then_fine, trio.CapacityLimiter(1))
        got: list[object] = []
        for relpath in ("x", "y"):
            try:
                got.append(await committer.commit(relpath, OWNER, b""))
            except NamespaceError as err:
                got.append(err.errno)
        return got

    assert trio.run(main) == [errno.EIO, 0]
    assert calls == [["x"], ["y"]]


def test_precheck_says_only_yes_from_memory(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "memory.img", "64m")
    mount_writer = SessionWriter(str(image), system_uuid_file)
    assert not mount_writer.precheck("a", OWNER)  # no call yet: nothing in memory
    mount_writer.create_group([("gone-later", OWNER, b"x")])
    assert mount_writer.precheck("a", OWNER)
    assert not mount_writer.precheck("gone-later", OWNER)  # a no is asked of the lock...
    with writer.session(str(image), system_uuid_file) as other:  # (famfsctl, meanwhile)
        other.remove("gone-later")
        other.create("a", 1, writer.Ownership(0o644, 0, 0), fill=iter((b"y",)))
    mount_writer.check_new("gone-later", OWNER)  # ...which sees the log as it is now
    assert mount_writer.precheck("gone-later", OWNER)
    with pytest.raises(NamespaceError) as refused:
        mount_writer.check_new("a", OWNER)
    assert refused.value.errno == errno.EEXIST
    assert mount_writer.create_group([("a", OWNER, b"z")])[0].errno == errno.EEXIST  # the entry's own check


def test_the_writer_keeps_the_device_only_while_its_path_names_it(tmp_path: Path, system_uuid_file: Path) -> None:
    """SessionWriter keeps the device open between calls; an image replaced at the same path (rm,
    then mkfs anew, as a site re-making its image) is written as it now is, the old one never."""
    image = make_image(tmp_path / "kept.img", "64m")
    mount_writer = SessionWriter(str(image), system_uuid_file)
    assert mount_writer.create_group([("first", OWNER, b"1")]) == [0]
    kept = mount_writer._opened
    assert mount_writer.create_group([("second", OWNER, b"2")]) == [1]
    assert mount_writer._opened is kept  # the same path, the same file: not opened again
    image.unlink()
    make_image(image, "128m")
    assert mount_writer.create_group([("third", OWNER, b"3" * 4096)]) == [0]  # the new image's first entry
    assert mount_writer._opened is not kept
    assert [entry.relpath for entry in entries(image)] == ["third"]
    assert file_bytes(image, "third") == b"3" * 4096
    assert famfsctl("fsck", str(image)).returncode == 0
