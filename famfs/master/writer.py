"""The master's writing operations: mkdir, creat, rm (cp builds on them: famfs/master/copy.py).
See docs/format.md.

Every operation runs inside one `Session`: the device's exclusive lock (flock), the log, the
namespace and the allocation bitmap rebuilt from the log under that lock, then for each file
allocate, put the data in place, and only then append the entry. So concurrent famfsctl
processes on this host serialize, and a client replaying the log never sees a file whose bytes
are not there yet (upstream logs first and copies after; spec §7).

A writer refuses to touch a log it cannot fully account for: any bad entry, a namespace rule
broken, or two files sharing space stops it with that problem named, before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog, LogFullError
from famfs.identity import NotMasterError, require_master
from famfs.master import alloc

log = structlog.get_logger("famfsctl")


class MasterError(Exception):
    """A request the writer refuses; the message names the device and the path or entry."""


class NamespaceError(ValueError):
    """An entry that breaks a namespace rule (missing parent, duplicate path, bad DELETE)."""


@dataclass(slots=True)
class Namespace:
    """The tree the log describes: directories and live files, by relpath ("" is the root)."""

    dirs: dict[str, int] = field(default_factory=lambda: {"": -1})  # relpath -> MKDIR index
    files: dict[str, tuple[int, fmt.FileEntry]] = field(default_factory=dict)  # relpath -> (index, entry)
    deleted: dict[int, fmt.FileEntry] = field(default_factory=dict)  # FILE index -> entry, space kept

    def check_new(self, relpath: str) -> None:
        parent = os.path.dirname(relpath)
        if parent not in self.dirs:
            raise NamespaceError(f"{relpath!r}: parent directory {parent!r} does not exist")
        if relpath in self.dirs:
            raise NamespaceError(f"{relpath!r}: a directory of that name exists")
        if relpath in self.files:
            raise NamespaceError(f"{relpath!r}: a file of that name exists (log entry {self.files[relpath][0]})")

    def apply(self, index: int, entry: fmt.Entry) -> None:
        """Add entry `index` to the tree, or raise NamespaceError (the tree is then unchanged)."""
        match entry:
            case fmt.MkdirEntry():
                self.check_new(entry.relpath)
                self.dirs[entry.relpath] = index
            case fmt.FileEntry():
                self.check_new(entry.relpath)
                self.files[entry.relpath] = (index, entry)
            case fmt.DeleteEntry():
                live = self.files.get(entry.relpath)
                if live is None or live[0] != entry.target_index:
                    raise NamespaceError(f"DELETE of {entry.relpath!r}: entry {entry.target_index} is not that live file")
                del self.files[entry.relpath]
                self.deleted[entry.target_index] = live[1]
            case fmt.AddDaxdevEntry():
                pass  # only device 0 exists; upstream does not play these either

    def is_dir(self, relpath: str) -> bool:
        return relpath in self.dirs


@dataclass(frozen=True, slots=True)
class LogProblem:
    """One way a logged entry breaks the rules; exactly one of the detail fields is set."""

    index: int
    bad_entry: fmt.EntryError | None = None  # the slot itself is invalid
    namespace: NamespaceError | None = None  # a valid entry the tree refuses
    space: alloc.AllocError | None = None  # extents the bitmap cannot hold
    collisions: tuple[alloc.Collision, ...] = ()  # units another entry (or the log) holds already
    relpath: str | None = None


def replay(famfs_log: FamfsLog, problem: Callable[[LogProblem], None]) -> tuple[Namespace, alloc.Bitmap]:
    """Namespace and bitmap from every logged entry, calling `problem` for each rule broken.

    The one walk of the log behind both the writer (which raises at the first problem) and fsck
    (which lists them all). A FILE the namespace refuses still claims its units: they are taken
    on media either way.
    """
    sb = famfs_log.superblock
    namespace = Namespace()
    bitmap = alloc.Bitmap(sb.dev_size, sb.log_len, sb.alloc_unit)
    for index, entry in famfs_log.entries():
        if isinstance(entry, fmt.EntryError):
            problem(LogProblem(index, bad_entry=entry))
            continue
        try:
            namespace.apply(index, entry)
        except NamespaceError as err:
            problem(LogProblem(index, namespace=err))
        if isinstance(entry, fmt.FileEntry):
            try:
                collisions = bitmap.mark(entry.all_extents(), index)
            except alloc.AllocError as err:
                problem(LogProblem(index, space=err, relpath=entry.relpath))
                continue
            if collisions:
                problem(LogProblem(index, collisions=tuple(collisions), relpath=entry.relpath))
    return namespace, bitmap


def load(famfs_log: FamfsLog) -> tuple[Namespace, alloc.Bitmap]:
    """Namespace and bitmap from every logged entry; the first problem stops it with its name."""

    def refuse(found: LogProblem) -> None:
        where = f"{famfs_log.path}: log entry {found.index}"
        if found.bad_entry is not None:
            raise MasterError(f"{famfs_log.path}: {found.bad_entry}; run famfsctl fsck")
        if found.namespace is not None:
            raise MasterError(f"{where}: {found.namespace}; run famfsctl fsck")
        if found.space is not None:
            raise MasterError(f"{where} ({found.relpath!r}): {found.space}; run famfsctl fsck")
        other = found.collisions[0].previous
        raise MasterError(f"{where} ({found.relpath!r}) shares space with "
                          f"{'the superblock/log' if other < 0 else f'log entry {other}'}; run famfsctl fsck")

    return replay(famfs_log, refuse)


@dataclass(frozen=True, slots=True)
class Ownership:
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Created:
    relpath: str
    index: int | None  # None: an existing file of the same size was reused
    entry: fmt.FileEntry


class Session:
    """The master's view of one device while it holds the exclusive lock."""

    def __init__(self, famfs_log: FamfsLog, rng: alloc.Shuffler | None = None) -> None:
        self.log = famfs_log
        self.device = famfs_log.device
        self.namespace, self.bitmap = load(famfs_log)
        self.rng = rng or random.Random()

    # -- helpers --

    def _next_index(self) -> int:
        header = self.log.header()
        if header.full:
            raise LogFullError(self.log.path, header.slots)
        return header.next_index

    def _append(self, entries: list[fmt.Entry]) -> int:
        header = self.log.header()
        free = header.slots - header.next_index
        if 0 < free < len(entries):  # (no free slot at all: the appender's own "log full" error)
            raise MasterError(f"{self.log.path}: log full ({free} free entries, {len(entries)} needed); nothing appended")
        first = self.log.append(entries)
        for n, entry in enumerate(entries):
            self.namespace.apply(first + n, entry)
        return first

    def refuse(self, relpath: str, why: str) -> MasterError:
        return MasterError(f"{self.log.path}: {relpath}: {why}")

    def _check_new(self, relpath: str) -> None:
        try:
            fmt.encode_relpath(relpath)
            self.namespace.check_new(relpath)
        except (fmt.FormatError, NamespaceError) as err:
            raise self.refuse(relpath, str(err).removeprefix(f"{relpath!r}: ")) from None

    # -- operations --

    def mkdir(self, relpath: str, owner: Ownership, *, parents: bool = False) -> list[int]:
        """Log a MKDIR for relpath (with `parents`, for each missing component, all or none)."""
        if parents and self.namespace.is_dir(relpath):
            return []
        missing = [relpath]
        if parents:
            parent = os.path.dirname(relpath)
            while parent and not self.namespace.is_dir(parent):
                missing.insert(0, parent)
                parent = os.path.dirname(parent)
        probe = Namespace(dict(self.namespace.dirs), dict(self.namespace.files))
        entries: list[fmt.Entry] = []
        for path in missing:
            try:
                fmt.encode_relpath(path)
                probe.apply(-1, fmt.MkdirEntry(path, owner.mode, owner.uid, owner.gid))
            except (fmt.FormatError, NamespaceError) as err:
                raise self.refuse(path, str(err).removeprefix(f"{path!r}: ")) from None
            entries.append(fmt.MkdirEntry(path, owner.mode, owner.uid, owner.gid))
        first = self._append(entries)
        log.info("mkdir", device=self.log.path, paths=missing, first_index=first)
        return list(range(first, first + len(entries)))

    def _allocate(self, size: int, index: int, layout: alloc.InterleaveParams | None) -> tuple[tuple[fmt.Extent, ...], tuple[fmt.Stripe, ...]]:
        try:
            if layout is None:
                return (alloc.allocate_contiguous(self.bitmap, size, index),), ()
            got = alloc.allocate_interleaved(self.bitmap, size, layout, index, self.rng)
        except alloc.AllocError as err:
            raise MasterError(f"{self.log.path}: cannot allocate {size} bytes: {err}") from None
        return ((got,), ()) if isinstance(got, fmt.Extent) else ((), (got,))

    def create(self, relpath: str, size: int, owner: Ownership, *, layout: alloc.InterleaveParams | None = None,
               fill: Iterator[bytes] | None = None, reuse: bool = False) -> Created:
        """Allocate, write `fill` (blocks in file order, exactly `size` bytes) in place, then log.

        With `reuse`, an existing file of the same size is kept (its bytes rewritten from `fill`),
        as upstream's restartable cp and creat do; another size is refused.
        """
        existing = self.namespace.files.get(relpath)
        if existing is not None and reuse:
            index, entry = existing
            if entry.size != size:
                raise self.refuse(relpath, f"exists with size {entry.size}, not {size}")
            if fill is not None:
                self._write(entry, fill)
            return Created(relpath, None, entry)
        self._check_new(relpath)
        index = self._next_index()
        extents, stripes = self._allocate(size, index, layout)
        entry = fmt.FileEntry(relpath=relpath, size=size, mode=owner.mode, uid=owner.uid, gid=owner.gid,
                              extents=extents, stripes=stripes)
        try:
            fmt.check_extents(entry, self.log.superblock.dev_size, self.log.superblock.log_len, self.log.superblock.alloc_unit)
            if fill is not None:
                self._write(entry, fill)
            self._append([entry])
        except BaseException:
            self.bitmap.release(entry.all_extents())
            raise
        log.info("creat", device=self.log.path, path=relpath, size=size, index=index,
                 extents=[(hex(e.offset), hex(e.length)) for e in entry.all_extents()])
        return Created(relpath, index, entry)

    def _write(self, entry: fmt.FileEntry, blocks: Iterator[bytes]) -> None:
        """Lay `blocks` (the file's bytes in order) onto the file's device ranges."""
        ranges = fmt.device_ranges(entry)
        dev_offset, room = 0, 0
        written = 0
        for block in blocks:
            while block:
                if room == 0:
                    dev_offset, room = next(ranges, (0, 0))
                    if room == 0:
                        raise MasterError(f"{self.log.path}: {entry.relpath}: source is longer than {entry.size} bytes")
                piece, block = block[:room], block[room:]
                self.device.write(dev_offset, piece)
                dev_offset += len(piece)
                room -= len(piece)
                written += len(piece)
        if written != entry.size:
            raise MasterError(f"{self.log.path}: {entry.relpath}: source gave {written} bytes, expected {entry.size}")

    def remove(self, relpath: str) -> int:
        """Log a DELETE of a live file. Its space stays allocated (docs/format.md says why)."""
        live = self.namespace.files.get(relpath)
        if live is None:
            why = "is a directory; only files can be removed" if self.namespace.is_dir(relpath) else "no such file"
            raise self.refuse(relpath, why)
        self._next_index()
        index = self._append([fmt.DeleteEntry(relpath=relpath, target_index=live[0])])
        log.info("rm", device=self.log.path, path=relpath, index=index, target=live[0])
        return index


@contextlib.contextmanager
def session(device_path: str, uuid_file: Path, rng: alloc.Shuffler | None = None) -> Iterator[Session]:
    """Open the device for writing, check this host is the master, lock, load."""
    with Device(device_path, writable=True) as device:
        famfs_log = FamfsLog(device)
        try:
            require_master(famfs_log.superblock, uuid_file)
        except NotMasterError as err:
            raise MasterError(f"{device_path}: {err}") from None
        with device.exclusive():
            yield Session(famfs_log, rng)


def lookup(current: Session, relpath: str) -> fmt.FileEntry | str | None:
    """What the session's log holds at relpath: "dir", the live file's entry, or None. For the
    tools that check a whole request before writing any of it (cp, rm of several paths)."""
    if current.namespace.is_dir(relpath):
        return "dir"
    found = current.namespace.files.get(relpath)
    return found[1] if found is not None else None
