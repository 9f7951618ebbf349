"""The master's writing operations: mkdir, creat, rm (cp builds on them: famfs/master/copy.py).
See docs/format.md.

Every operation runs inside one `Session`: the device's exclusive lock (flock), the log, the
namespace and allocation replayed from the log under that lock (famfs.rules), then for each file
allocate, put the data in place, and only then append the entry. So concurrent famfsctl
processes on this host serialize, and a client replaying the log never sees a file whose bytes
are not there yet (upstream logs first and copies after; docs/format.md §7).

Every operation is checked against the rule book (famfs.rules) before anything is written: an
operation whose entry would break a rule is refused with the rule named. A writer also refuses
to touch a log it cannot fully account for: any bad entry or broken rule in it stops the writer
with that problem named, before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from famfs import format as fmt
from famfs import devices as devtable
from famfs import logsetup, rules
from famfs.device import Device, probe
from famfs.famfslog import FamfsLog, LogFullError
from famfs.identity import NotMasterError, require_master
from famfs.master import alloc
from famfs.master import compact as compaction
from famfs.units import describe_size, format_size

log = logsetup.get_logger("famfsctl")


class MasterError(Exception):
    """A request the writer refuses; the message names the device and the path or entry, and
    `cause` is what refused it (a rules.Violation, a fmt.FormatError, an alloc.AllocError), if any."""

    def __init__(self, message: str, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class SpaceHeld(MasterError):
    """No room now, but deleted files not yet reclaimed hold space: the coordinator may free
    enough (docs/reclaim.md). `needed` bytes were asked for, `free` are free, `held` are held
    by the deleted files `deletions` ((FILE index, DELETE index, bytes) each)."""

    def __init__(self, message: str, *, needed: int, free: int, deletions: list[tuple[int, int, int]]) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free
        self.deletions = deletions

    @property
    def held(self) -> int:
        return sum(size for _, _, size in self.deletions)

    @property
    def may_fit(self) -> bool:
        """Whether reclaiming every deleted file would make room (for a contiguous file, a guess:
        the freed units need not be adjacent)."""
        return self.free + self.held >= self.needed


def load(famfs_log: FamfsLog, namespace: rules.Namespace | None = None, start: int = 0,
         stop: int | None = None) -> rules.Namespace:
    """The namespace of every logged entry, as every reader replays it.

    A corrupt slot (bad seqnum or CRC) stops the writer: every reader stops there too, so nothing
    appended after it would ever be seen. An entry that is well-formed but breaks a rule is left
    out, as every reader leaves it out, with a warning; the space it names is still never handed
    out (upstream's readers do not apply our rules and would see both files on that memory).
    With `namespace`, only the entries from `start` on (to `stop`, if given) are played into it
    (the coordinator follows the log this way, without the lock: it gives the count it read).
    """
    left_out: list[rules.Problem] = []

    def note(found: rules.Problem) -> None:
        if found.bad_entry is not None:
            try:
                fmt.check_entry_seal(famfs_log.raw_entry(found.index), found.index)
            except fmt.EntryError:
                raise MasterError(f"{famfs_log.path}: {found.bad_entry}: a corrupt slot stops every reader there, "
                                  f"so nothing can be appended after it; run famfsctl fsck") from None
        left_out.append(found)

    namespace = rules.replay(famfs_log, note, namespace=namespace, start=start, stop=stop)
    for found in left_out:
        if isinstance(found.entry, fmt.FileEntry):
            namespace.units.claim(found.entry.all_extents())
    if left_out:
        first = left_out[0]
        log.warning("log_entries_left_out", device=famfs_log.path, count=len(left_out), first_index=first.index,
                    first_error=str(first.bad_entry or first.violation),
                    note="every reader leaves these entries out; famfsctl fsck lists them")
    return namespace


@dataclass(frozen=True, slots=True)
class Replayed:
    """A session's namespace and the log it describes: the file system (its UUID), the log's
    epoch, the number of entries and the seal of the last one. A later session of the same
    process reuses the namespace as it is if all are unchanged, and plays only the entries
    appended since (by another writer: the coordinator, the master's mount, famfsctl) if the log
    still holds those entries under the same seal; a file system re-made, a log compacted
    (a new epoch) or rewritten meanwhile is replayed whole."""

    namespace: rules.Namespace
    fs_uuid: uuid.UUID
    epoch: int  # a compaction replaces the log: a new epoch (docs/reclaim.md)
    next_index: int
    last_seal: tuple[int, int] | None

    @classmethod
    def of(cls, famfs_log: FamfsLog, namespace: rules.Namespace) -> Replayed:
        return cls(namespace, *cls._where(famfs_log))

    @staticmethod
    def _where(famfs_log: FamfsLog) -> tuple[uuid.UUID, int, int, tuple[int, int] | None]:
        count = famfs_log.header().next_index
        seal = fmt.entry_seal(famfs_log.raw_entry(count - 1)) if count else None
        return famfs_log.superblock.fs_uuid, famfs_log.location.epoch, count, seal

    def still(self, famfs_log: FamfsLog) -> bool:
        return self._where(famfs_log) == (self.fs_uuid, self.epoch, self.next_index, self.last_seal)

    def extended(self, famfs_log: FamfsLog) -> bool:
        """The log is this one with entries appended: same file system and epoch, more entries,
        and the last entry this namespace played still there under the same seal (the log is
        append-only within an epoch; the seal catches a log rewritten in place)."""
        if (famfs_log.superblock.fs_uuid, famfs_log.location.epoch) != (self.fs_uuid, self.epoch):
            return False
        if famfs_log.header().next_index <= self.next_index:
            return False
        return self.last_seal is None or fmt.entry_seal(famfs_log.raw_entry(self.next_index - 1)) == self.last_seal

    def namespace_of(self, famfs_log: FamfsLog) -> rules.Namespace:
        """This namespace brought up to `famfs_log` (played on, in place), or the log replayed whole."""
        if self.still(famfs_log):
            return self.namespace
        if self.extended(famfs_log):
            return load(famfs_log, self.namespace, self.next_index)
        return load(famfs_log)


@dataclass(frozen=True, slots=True)
class Ownership:
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class NewData:
    """A new file whose bytes are all at hand (Session.create_group)."""

    relpath: str
    owner: Ownership
    data: bytes


@dataclass(frozen=True, slots=True)
class Created:
    relpath: str
    index: int | None  # None: an existing file of the same size was reused
    entry: fmt.FileEntry


class Session:
    """The master's view of one device while it holds the exclusive lock."""

    def __init__(self, famfs_log: FamfsLog, rng: alloc.Shuffler | None = None,
                 known: Replayed | None = None, device_paths: Sequence[str] = ()) -> None:
        """`known`: the namespace a session of this process left behind; used instead of a
        replay if the log is still exactly as that session left it (checked under the lock).
        `device_paths`: where this host's added devices may be ([host] devices, docs/devices.md)."""
        self.log = famfs_log
        self.device = famfs_log.device
        self.device_paths = tuple(device_paths)
        self._opened: dict[int, Device] = {}  # added devices opened for writing, by devindex
        self.geometry = rules.Geometry.of(famfs_log.superblock)
        self.namespace = known.namespace_of(famfs_log) if known is not None else load(famfs_log)
        self.rng = rng or random.Random()
        self.failed = False  # set by a caller that saw an operation fail part-way: its namespace is not reused
        self.reclaimed_bytes = 0  # what reclaim() gave back in this session (the coordinator's figures)

    def replayed(self) -> Replayed:
        """What a later session may start from instead of replaying the log (see Replayed)."""
        return Replayed.of(self.log, self.namespace)

    # -- helpers --

    def _next_index(self) -> int:
        header = self.log.header()
        if header.full:
            raise LogFullError(self.log.path, header.slots)
        return header.next_index

    def _append(self, entries: list[fmt.Entry]) -> int:
        """Append entries already checked against the rule book, and record them."""
        header = self.log.header()
        free = header.slots - header.next_index
        if 0 < free < len(entries):  # (no free slot at all: the appender's own "log full" error)
            raise MasterError(f"{self.log.path}: log full ({free} free entries, {len(entries)} needed); nothing appended")
        first = self.log.append(entries)
        for n, entry in enumerate(entries):
            if not isinstance(entry, fmt.MkdirEntry):  # mkdir() records its directories itself
                self.namespace.record(first + n, entry)
        return first

    def _log_one(self, entry: fmt.Entry) -> int:
        """Check `entry` against the rule book as the next log entry, then append it; its index."""
        index = self._next_index()
        self._check(index, entry)
        return self._append([entry])

    def refuse(self, relpath: str, why: object) -> MasterError:
        return MasterError(f"{self.log.path}: {relpath}: {why}", why if isinstance(why, Exception) else None)

    def _check(self, index: int, entry: fmt.Entry) -> None:
        """The rule book's verdict on `entry` as log entry `index`: refused, named, or nothing."""
        relpath = getattr(entry, "relpath", type(entry).__name__.removesuffix("Entry").upper())
        try:
            if isinstance(entry, fmt.FileEntry | fmt.MkdirEntry | fmt.DeleteEntry | fmt.RmdirEntry | fmt.SetattrEntry):
                fmt.encode_relpath(entry.relpath)
            rules.check(index, entry, self.namespace, self.geometry, self.log.entry)
        except fmt.FormatError as err:
            raise self.refuse(relpath, err) from None

    def _warn_if_shadowed(self, relpath: str) -> None:
        if self.namespace.shadowed_for_upstream(relpath):
            log.warning("recreated_deleted_path", device=self.log.path, path=relpath,
                        note="upstream famfs readers ignore DELETE and keep serving the deleted file at this path "
                             "(docs/format.md)")

    # -- operations --

    def mkdir(self, relpath: str, owner: Ownership, *, parents: bool = False) -> list[int]:
        """Log a MKDIR for relpath (with `parents`, for each missing component, all or none)."""
        if parents and self.namespace.kind(relpath) is rules.Kind.DIR:
            return []
        missing = [relpath]
        if parents:
            parent = os.path.dirname(relpath)
            while parent and self.namespace.kind(parent) is None:
                missing.insert(0, parent)
                parent = os.path.dirname(parent)
        entries: list[fmt.MkdirEntry] = []
        index = self._next_index()
        try:
            # Each directory is checked with the ones before it in place (recorded, undone on refusal).
            for n, path in enumerate(missing):
                entry = fmt.MkdirEntry(path, owner.mode, owner.uid, owner.gid)
                self._check(index + n, entry)
                self.namespace.record(index + n, entry)
                entries.append(entry)
            first = self._append(list(entries))
        except BaseException:
            for made in entries:
                self.namespace.forget_dir(made.relpath)
            raise
        for path in missing:
            self._warn_if_shadowed(path)
        log.info("mkdir", device=self.log.path, paths=missing, first_index=first)
        return list(range(first, first + len(entries)))

    def device_index(self, spec: str) -> int:
        """A device named by its index or its device UUID (famfsctl --on-device, Master.create)."""
        table = [str(dev_uuid) for dev_uuid in self.namespace.daxdevs]
        if spec.isdigit() and int(spec) < len(table):
            return int(spec)
        if spec.lower() in table:
            return table.index(spec.lower())
        raise MasterError(f"{self.log.path}: no device {spec!r} in this file system (devices: "
                          f"{', '.join(f'{n} {u}' for n, u in enumerate(table))})")

    def device_at(self, index: int) -> Device:
        """Device `index` of the file system, open for writing: the primary, or an added device
        found by its UUIDs on this host (famfs.devices)."""
        if index == 0:
            return self.device
        if index not in self._opened:
            rows = devtable.namespace_rows(self.namespace)
            row = devtable.resolve(self.log.superblock.fs_uuid, rows, self.device_paths)[index]
            if row.path is None:
                raise MasterError(f"{self.log.path}: device {index} ({row.uuid}) is {row.state} on this host: "
                                  f"{row.reason} (list its path in [host] devices)")
            self._opened[index] = Device(row.path, writable=True)
        return self._opened[index]

    def close_devices(self) -> None:
        for opened in self._opened.values():
            opened.close()
        self._opened.clear()

    def add_device(self, path: str, dev_uuid: uuid.UUID, *, force: bool = False) -> int:
        """Make `path` device N of this file system: its secondary superblock (file-system UUID,
        its device UUID, SECONDARY_SB; docs/devices.md), then the ADD_DAXDEV entry naming it."""
        primary = self.log.superblock
        if os.path.realpath(path) == os.path.realpath(self.log.path):
            raise self.refuse(path, "is this file system's primary device")
        existing = devtable.read_superblock(path)
        if existing is not None and not force:
            raise self.refuse(path, f"already holds a famfs superblock (file system {existing.fs_uuid}, device "
                                    f"{existing.dev_uuid}); use --force to overwrite")
        size = probe(path).size
        entry = fmt.AddDaxdevEntry(dev_size=size, dev_uuid=dev_uuid, dev_index=len(self.namespace.daxdevs))
        index = self._next_index()
        self._check(index, entry)
        secondary = fmt.Superblock(log_len=0, log_offset=0, dev_size=size, fs_uuid=primary.fs_uuid, dev_uuid=dev_uuid,
                                   dd_uuid=dev_uuid, system_uuid=primary.system_uuid, daxdev_name=path,
                                   sb_flags=fmt.SECONDARY_SB)
        zeros = bytes(1 << 20)
        with Device(path, writable=True) as added:  # the device is whole before the log names it
            for offset in range(0, fmt.SECONDARY_DATA_START, len(zeros)):
                added.write(offset, zeros)
            added.write(0, secondary.pack())
        index = self._append([entry])
        log.info("add_device", device=self.log.path, added=path, dev_uuid=str(dev_uuid), dev_index=entry.dev_index,
                 size=size, index=index)
        return entry.dev_index

    def _allocate(self, size: int, layout: alloc.InterleaveParams | None,
                  on: Sequence[int] | None = None) -> tuple[tuple[fmt.Extent, ...], tuple[fmt.Stripe, ...]]:
        devices = tuple(on) if on else tuple(range(len(self.namespace.daxdevs)))
        try:
            if layout is None:
                return alloc.allocate_simple(self.namespace.units, size, devices), ()
            got = alloc.allocate_interleaved(self.namespace.units, size, layout, self.rng, devices)
        except alloc.AllocError as err:
            message = f"{self.log.path}: cannot allocate {describe_size(size)}: {err}"
            if self.namespace.deleted:
                raise self.space_held(message, max(size, 1)) from None
            raise MasterError(message, err) from None
        return ((), (got,)) if isinstance(got, fmt.Stripe) else (got, ())

    def space_held(self, message: str, needed: int) -> SpaceHeld:
        """The refusal of an allocation of `needed` bytes while deleted files still hold space."""
        unit = self.geometry.alloc_unit
        deletions = [(index, self.namespace.deletions[index], fmt.round_up(entry.capacity(), unit))
                     for index, entry in self.namespace.deleted.items()]
        held = sum(size for _, _, size in deletions)
        return SpaceHeld(f"{message} ({format_size(held)} is held by {len(deletions)} deleted "
                         f"file{'s' if len(deletions) != 1 else ''} not yet reclaimed)",
                         needed=fmt.round_up(needed, unit), free=self.namespace.units.free_units * unit,
                         deletions=deletions)

    def check_new(self, relpath: str, owner: Ownership) -> None:
        """Refuse, naming the rule, a new file or directory name the rule book would refuse."""
        try:
            fmt.encode_relpath(relpath)
            rules.check_new_name(self.namespace, relpath, owner.uid, owner.gid)
        except fmt.FormatError as err:
            raise self.refuse(relpath, err) from None

    def create(self, relpath: str, size: int, owner: Ownership, *, layout: alloc.InterleaveParams | None = None,
               fill: Iterator[bytes] | None = None, reuse: bool = False, on: Sequence[int] | None = None) -> Created:
        """Allocate, write `fill` (blocks in file order, exactly `size` bytes) in place, then log.

        With `reuse`, an existing file of the same size is kept (its bytes rewritten from `fill`),
        as upstream's restartable cp and creat do; another size is refused.
        """
        existing = self.namespace.files.get(relpath)
        if existing is not None and reuse:
            _, entry = existing
            if entry.size != size:
                raise self.refuse(relpath, f"exists with size {entry.size}, not {size}")
            if fill is not None:
                self._write(entry, fill)
            return Created(relpath, None, entry)
        entry = self.reserve(relpath, size, owner, layout=layout, on=on)
        try:
            if fill is not None:
                self._write(entry, fill)
            return Created(relpath, self.commit(entry), entry)
        except BaseException:
            self.abandon(entry)
            raise

    def reserve(self, relpath: str, size: int, owner: Ownership, *,
                layout: alloc.InterleaveParams | None = None, on: Sequence[int] | None = None,
                index: int | None = None) -> fmt.FileEntry:
        """Allocate a new file's space and hold it for this session, not yet logged: the caller
        puts the data in place, then commit()s the entry, or abandon()s it. `index`: the slot the
        entry will take (create_group's later files), else the next free one."""
        self.check_new(relpath, owner)  # before allocating: the name's own problems come first
        if index is None:
            index = self._next_index()
        extents, stripes = self._allocate(size, layout, on)
        entry = fmt.FileEntry(relpath=relpath, size=size, mode=owner.mode, uid=owner.uid, gid=owner.gid,
                              extents=extents, stripes=stripes)
        self._check(index, entry)
        self.namespace.units.claim(entry.all_extents())  # no other reservation gets this space
        return entry

    def commit(self, entry: fmt.FileEntry) -> int:
        """Log a reserved file whose data is in place; its index. The name is checked again: the
        space was checked by reserve() and is held, but another entry may have taken the name."""
        self.check_new(entry.relpath, Ownership(entry.mode, entry.uid, entry.gid))
        index = self._append([entry])
        self._warn_if_shadowed(entry.relpath)
        log.info("creat", device=self.log.path, path=entry.relpath, size=entry.size, index=index,
                 extents=[(hex(e.offset), hex(e.length)) for e in entry.all_extents()])
        return index

    def create_group(self, files: Sequence[NewData]) -> list[int | MasterError]:
        """Log many new files at once (the master's mount's grouped commit, docs/fusefs.md): each
        is checked and allocated with the ones before it in place and its bytes written; then all
        the accepted entries are appended together, entries first and the header last, so the log
        moves once. One file refused (a name taken, no space, the log full) does not stop the
        others; its place in the result is the refusal, the others' their index."""
        header = self.log.header()
        results: list[int | MasterError] = []
        accepted: list[fmt.FileEntry] = []
        for new in files:
            index = header.next_index + len(accepted)
            if index >= header.slots:
                results.append(self.refuse(new.relpath, LogFullError(self.log.path, header.slots)))
                continue
            try:
                entry = self.reserve(new.relpath, len(new.data), new.owner, index=index)
            except MasterError as err:
                results.append(err)
                continue
            try:
                self._write(entry, iter((new.data,)))
            except BaseException:
                self.abandon(entry)
                raise  # the device failed: nothing of the group is logged (the caller fails them all)
            self.namespace.record(index, entry)  # the next files of the group see its name and space
            accepted.append(entry)
            results.append(index)
        if accepted:
            first = self.log.append(accepted)
            assert first == header.next_index  # (the lock is held: nothing else appended)
            for entry in accepted:
                self._warn_if_shadowed(entry.relpath)
            log.info("creat_group", device=self.log.path, files=len(accepted), first_index=first,
                     refused=len(files) - len(accepted))
        return results

    def abandon(self, entry: fmt.FileEntry) -> None:
        """Give a reserved, unlogged file's space back to this session."""
        self.namespace.units.release(entry.all_extents())

    def _write(self, entry: fmt.FileEntry, blocks: Iterator[bytes]) -> None:
        """Lay `blocks` (the file's bytes in order) onto the file's device ranges."""
        ranges = fmt.device_pieces(entry)
        target, dev_offset, room = self.device, 0, 0
        written = 0
        for block in blocks:
            while block:
                if room == 0:
                    devindex, dev_offset, room = next(ranges, (0, 0, 0))
                    if room == 0:
                        raise MasterError(f"{self.log.path}: {entry.relpath}: source is longer than {entry.size} bytes")
                    target = self.device_at(devindex)
                piece, block = block[:room], block[room:]
                target.write(dev_offset, piece)
                dev_offset += len(piece)
                room -= len(piece)
                written += len(piece)
        if written != entry.size:
            raise MasterError(f"{self.log.path}: {entry.relpath}: source gave {written} bytes, expected {entry.size}")

    def _not_removable(self, relpath: str, wanted: rules.Kind) -> MasterError:
        """The refusal of a removal whose path is missing or of the other kind. Its cause carries
        the errno a file-system caller gets for it (ENOENT, EISDIR, ENOTDIR)."""
        kind = self.namespace.kind(relpath)
        why: OSError
        if kind is None:
            why = FileNotFoundError(errno.ENOENT, f"no such {'file' if wanted is rules.Kind.FILE else 'directory'}")
        elif wanted is rules.Kind.FILE:
            why = IsADirectoryError(errno.EISDIR, "is a directory; only files can be removed")
        else:
            why = NotADirectoryError(errno.ENOTDIR, "is a file; only directories are removed by rmdir")
        return MasterError(f"{self.log.path}: {relpath}: {why.strerror}", why)

    def remove(self, relpath: str) -> int:
        """Log a DELETE of a live file. Its space stays allocated (docs/format.md says why)."""
        live = self.namespace.files.get(relpath)
        if live is None:
            raise self._not_removable(relpath, rules.Kind.FILE)
        entry = fmt.DeleteEntry(relpath=relpath, target_index=live[0])
        index = self._log_one(entry)
        log.info("rm", device=self.log.path, path=relpath, index=index, target=live[0])
        return index

    def remove_all(self, relpaths: Sequence[str]) -> list[int]:
        """Log a DELETE for each path, all or none: every path must be a live file and the log
        must have room for all of them, else nothing is logged and every problem is named."""
        relpaths = list(dict.fromkeys(relpaths))
        problems = []
        for relpath in relpaths:
            if self.namespace.kind(relpath) is not rules.Kind.FILE:
                problems.append(str(self._not_removable(relpath, rules.Kind.FILE)))
        header = self.log.header()
        if not problems and len(relpaths) > header.slots - header.next_index:
            problems.append(f"{self.log.path}: the log has {header.slots - header.next_index} free entries, "
                            f"{len(relpaths)} needed")
        if problems:
            raise MasterError("\n".join([*problems, "nothing removed"]))
        return [self.remove(relpath) for relpath in relpaths]

    def compact(self, step: Callable[[str], None] = lambda _: None) -> compaction.Compacted:
        """Replace the log by one holding only the live namespace (famfs/master/compact.py), then
        go on from the new log."""
        done = compaction.compact(self.log, self.namespace, step)
        self.log = FamfsLog(self.device)
        self.namespace = load(self.log)
        return done
    def reclaim(self, targets: Sequence[tuple[int, int]]) -> list[int]:
        """Log that deleted files' units are free: RECLAIMs naming `targets` ((FILE index,
        DELETE index) pairs), RECLAIM_MAX_TARGETS a entry, each checked by the rule book. Only
        the coordinator decides when (famfs.master.reclaim, docs/reclaim.md). Their indexes."""
        indexes = []
        for start in range(0, len(targets), fmt.RECLAIM_MAX_TARGETS):
            entry = fmt.ReclaimEntry(tuple(targets[start:start + fmt.RECLAIM_MAX_TARGETS]))
            freed = sum(self.namespace.deleted[file_index].capacity() for file_index, _ in entry.targets
                        if file_index in self.namespace.deleted)
            index = self._log_one(entry)
            indexes.append(index)
            self.reclaimed_bytes += freed
            log.info("reclaim", device=self.log.path, index=index, files=[i for i, _ in entry.targets], bytes=freed)
        return indexes

    def fence(self, entry: fmt.FenceEntry) -> int | None:
        """Log a FENCE (docs/reclaim.md); None, logging nothing, if that incarnation (or that
        damaged slot's bytes) is fenced already: a repeat would change nothing."""
        if entry.incarnation == 0:
            earlier = self.namespace.fenced_damage.get((entry.slot, entry.heartbeat))
        else:
            earlier = self.namespace.fenced.get((entry.system_uuid, entry.incarnation))
        if earlier is not None:
            log.info("already_fenced", device=self.log.path, slot=entry.slot, host=str(entry.system_uuid),
                     incarnation=entry.incarnation, index=earlier)
            return None
        index = self._log_one(entry)
        log.info("fence", device=self.log.path, index=index, slot=entry.slot, host=str(entry.system_uuid),
                 incarnation=entry.incarnation, reason=entry.reason.name.lower(), heartbeat=entry.heartbeat,
                 applied=entry.applied)
        return index

    def setattr(self, relpath: str, owner: Ownership) -> int | None:
        """Log a SETATTR giving the live file or directory at relpath this mode and owner; None
        (nothing logged) if it has them already."""
        live = self.namespace.files.get(relpath)
        if live is not None:
            target, current = live[0], (live[1].mode, live[1].uid, live[1].gid)
        elif (made_by := self.namespace.dir_index(relpath)) is not None and made_by >= 0:
            made = self.namespace.dir_attrs.get(relpath) or self.log.entry(made_by)
            assert isinstance(made, fmt.MkdirEntry)
            target, current = made_by, (made.mode, made.uid, made.gid)
        else:
            raise self.refuse(relpath, FileNotFoundError(errno.ENOENT, "no live file or directory of that name"))
        if current == (owner.mode, owner.uid, owner.gid):
            return None
        entry = fmt.SetattrEntry(relpath=relpath, target_index=target, mode=owner.mode, uid=owner.uid, gid=owner.gid)
        index = self._log_one(entry)
        log.info("setattr", device=self.log.path, path=relpath, index=index, target=target,
                 mode=f"{owner.mode:04o}", uid=owner.uid, gid=owner.gid)
        return index

    def rmdir(self, relpath: str) -> int:
        """Log an RMDIR of a live, empty directory (docs/format.md)."""
        made_by = self.namespace.dir_index(relpath)
        if made_by is None:
            raise self._not_removable(relpath, rules.Kind.DIR)
        entry = fmt.RmdirEntry(relpath=relpath, target_index=made_by)
        index = self._log_one(entry)
        log.info("rmdir", device=self.log.path, path=relpath, index=index, target=made_by)
        return index


@contextlib.contextmanager
def session(device_path: str, uuid_file: Path, rng: alloc.Shuffler | None = None,
            known: Replayed | None = None, device_paths: Sequence[str] = (),
            opened: Device | None = None) -> Iterator[Session]:
    """Open the device for writing, check this host is the master, lock, load (or reuse `known`).
    `opened`: the device at device_path already open for writing, used and left open (the
    superblock and the log are read from it anew all the same)."""
    with contextlib.nullcontext(opened) if opened is not None else Device(device_path, writable=True) as device:
        try:  # a client is refused at once, not after waiting for the master's lock
            require_master(FamfsLog.primary_superblock(device), uuid_file)
        except NotMasterError as err:
            raise MasterError(f"{device_path}: {err}", err) from None
        with device.exclusive():
            # The log (where it is, its epoch, its header) is read only once the lock is held: a
            # compaction holds it while it moves the log, so a view read while waiting for it can
            # name the staging copy (an append there lands in free data units, never in the log).
            famfs_log = FamfsLog(device)
            if compaction.roll_forward(famfs_log):
                famfs_log = FamfsLog(device)
            current = Session(famfs_log, rng, known, device_paths)
            try:
                yield current
            finally:
                current.close_devices()


def lookup(current: Session, relpath: str) -> fmt.FileEntry | str | None:
    """What the session's log holds at relpath: "dir", the live file's entry, or None. For the
    tools that check a whole request before writing any of it (cp, rm of several paths)."""
    if current.namespace.kind(relpath) is rules.Kind.DIR:
        return "dir"
    found = current.namespace.files.get(relpath)
    return found[1] if found is not None else None
