"""Which log entry owns each path and each allocation unit, and the one check of a shadow file or
directory against the log (docs/security.md).

`<shadow>/.agent/owners` holds, after a 32-byte header, a little-endian u32 per allocation unit
of the device: FREE (0), HELD (0xFFFFFFFF: the superblock and log, a deleted file's units), or
the log index + 1 of the live FILE entry that owns it. famfs-agent keeps it up to date in place
(OwnerMap); famfs-fuse-mount and famfs.open read it (OwnerReader) and serve a shadow file only if
the entry it names in the log is that file, exactly (ShadowCheck). The agent's state, not what a
reader met first, says which file owns which memory.
"""

from __future__ import annotations

import errno
import operator
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import NamedTuple, TypeVar

from famfs import format as fmt
from famfs import rules
from famfs.famfslog import FamfsLog
from famfs.shadowdir import DirRecord

MAGIC = b"FAMFSOWN"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, unit size, unit count, generation
FREE = 0
HELD = 0xFFFFFFFF
SLOT = 4
_SWAP = sys.byteorder != "little"  # the file is little-endian whatever the host


class OwnerMapError(OSError):
    """The owner map is missing, retired, or not of this device's geometry."""


def _le(table: array) -> bytes:  # type: ignore[type-arg]
    if not _SWAP:
        return table.tobytes()
    swapped = array("I", table)
    swapped.byteswap()
    return swapped.tobytes()


class OwnerMap:
    """The agent's copy of the owner map, and the file it keeps in step (pwrite in place).

    While `deferred` (a first play building its tree in staging/) changes stay in memory until
    flush(): the whole map is written before the tree moves into root/."""

    def __init__(self, nunits: int, unit: int, reserved_units: int, generation: int) -> None:
        self.unit = unit
        self.nunits = nunits
        self.generation = generation
        self.table = array("I", bytes(SLOT * nunits))
        self.table[:reserved_units] = array("I", [HELD]) * reserved_units
        self.fd = -1
        self.deferred = False
        self.added: dict[int, OwnerMap] = {}  # the maps of added devices (owners.N), by devindex (docs/devices.md)

    def header(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.unit, self.nunits, self.generation)

    def image(self) -> bytes:
        return self.header() + _le(self.table)

    def attach(self, fd: int) -> None:
        """Keep `fd` (the file as written from image(), or loaded) in step from now on; -1: let
        go of the file (and of the added devices' files)."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd
        if fd < 0:
            for added in self.added.values():
                added.attach(-1)

    @classmethod
    def load(cls, fd: int, nunits: int, unit: int) -> OwnerMap:
        """The map in file `fd`; OwnerMapError if it is not one of this geometry."""
        raw = os.pread(fd, HEADER.size + SLOT * nunits + 1, 0)
        problem = _header_problem(raw, nunits, unit)
        if problem is None and len(raw) != HEADER.size + SLOT * nunits:
            problem = f"{len(raw)} bytes where {HEADER.size + SLOT * nunits} were expected"
        if problem is not None:
            raise OwnerMapError(errno.EINVAL, problem)
        owners = cls(nunits, unit, 0, HEADER.unpack_from(raw)[4])
        owners.table = array("I", raw[HEADER.size:])
        if _SWAP:
            owners.table.byteswap()
        owners.fd = fd
        return owners

    def set(self, extents: Sequence[fmt.Extent], value: int) -> None:
        """Give every unit of `extents` to `value` (a log index + 1, or HELD)."""
        table = self.table
        for extent in extents:
            if extent.devindex:  # an added device's unit: its own map (the rule book checked it exists)
                self.added[extent.devindex].set((extent._replace(devindex=0),), value)
                continue
            start, stop = self.span(extent)
            if stop - start == 1:  # most files: no run to build (a first play sets one per file)
                table[start] = value
            else:
                table[start:stop] = array("I", [value]) * (stop - start)
            if not self.deferred and self.fd >= 0:
                os.pwrite(self.fd, _le(table[start:stop]), HEADER.size + SLOT * start)

    def flush(self) -> None:
        """Write the whole map in place (the end of a deferred stretch)."""
        self.deferred = False
        if self.fd >= 0:
            os.pwrite(self.fd, _le(self.table), HEADER.size)
        for added in self.added.values():
            added.flush()

    def carried(self, entries: Iterable[tuple[int, fmt.Entry]], reserved_units: int, generation: int) -> OwnerMap:
        """This map (of the log before a compaction) carried over to the new log's indexes, for
        the mount to check against while the agent plays the new log (docs/reclaim.md, "What the
        mount serves while a host moves"). `entries`: the new log's FILE, HOLD, DELETE, RECLAIM
        and SETATTR entries, in order, up to the first that does not decode.

        A FILE entry is carried (its units named by it, or by its latest SETATTR) only if no
        DELETE or RECLAIM of the new log names it, no other FILE or HOLD of the new log maps any
        of its units, its extents are on the primary device, and this map gave every one of its
        units to one and the same live entry: the file this host served at that path (a
        compaction keeps every live file's extents). Every other unit this map or the new log
        takes is HELD: nothing is free here that was not free before and is free now."""
        files: dict[int, fmt.FileEntry] = {}
        gone: set[int] = set()
        latest: dict[int, int] = {}
        claims = array("I", bytes(SLOT * self.nunits))  # how many FILE or HOLD entries map each unit
        for index, entry in entries:
            if isinstance(entry, (fmt.FileEntry, fmt.HoldEntry)):
                mapped = entry if isinstance(entry, fmt.FileEntry) else entry.file
                files[index] = mapped
                for extent in mapped.all_extents():
                    if not extent.devindex:
                        start, stop = self.span(extent)
                        for unit in range(start, stop):
                            claims[unit] += 1
                if isinstance(entry, fmt.HoldEntry):
                    gone.add(index)
            elif isinstance(entry, fmt.DeleteEntry):
                gone.add(entry.target_index)
            elif isinstance(entry, fmt.ReclaimEntry):
                gone.update(target for target, _ in entry.targets)
            elif isinstance(entry, fmt.SetattrEntry):
                latest[entry.target_index] = index
        carried = OwnerMap(self.nunits, self.unit, reserved_units, generation)
        new, old = carried.table, self.table
        for unit, value in enumerate(old):
            if value != FREE or claims[unit]:
                new[unit] = HELD
        for index, entry in files.items():
            spans = [self.span(extent) for extent in entry.all_extents() if not extent.devindex]
            if index in gone or not spans or len(spans) != len(entry.all_extents()) \
                    or any(start >= stop for start, stop in spans):
                continue
            owner = old[spans[0][0]]
            if owner in (FREE, HELD) or any(old[unit] != owner or claims[unit] != 1
                                            for start, stop in spans for unit in range(start, stop)):
                continue
            value = latest.get(index, index) + 1
            for start, stop in spans:
                new[start:stop] = array("I", [value]) * (stop - start)
        return carried

    def retire(self, *, added: bool = True) -> None:
        """Clear the header of the file just replaced: a reader holding it reopens. `added`:
        the added devices' maps too (not when only the primary's map is replaced)."""
        if self.fd >= 0:
            os.pwrite(self.fd, bytes(HEADER.size), 0)
            os.close(self.fd)
            self.fd = -1
        for owners in self.added.values() if added else ():
            owners.retire()

    span = rules.unit_bounds


def _header_problem(raw: bytes, nunits: int, unit: int) -> str | None:
    if len(raw) < HEADER.size:
        return "too short for its header"
    magic, version, got_unit, got_nunits, _ = HEADER.unpack_from(raw)
    if magic != MAGIC:
        return "no owner map header (retired, or not an owner map)"
    if version != VERSION:
        return f"version {version}, this program reads {VERSION}"
    if (got_unit, got_nunits) != (unit, nunits):
        return f"{got_nunits} units of {got_unit:#x} bytes; the device has {nunits} of {unit:#x}"
    return None


class OwnerReader:
    """A reader's view of `<shadow>/.agent/owners`: the header checked on every question, the
    file opened again when the agent has replaced it (a reset or rebuild clears the old header)."""

    def __init__(self, path: str | os.PathLike[str], nunits: int, unit: int) -> None:
        self.path = os.fspath(path)
        self.nunits = nunits
        self.unit = unit
        self.fd = -1
        self.generation: int | None = None  # of the file held open

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _header_ok(self) -> str | None:
        """Why the file held open is not (any more) the map to read; None if it is."""
        if self.fd < 0:
            return "not open"
        raw = os.pread(self.fd, HEADER.size, 0)
        problem = _header_problem(raw, self.nunits, self.unit)
        if problem is None and self.generation is not None and HEADER.unpack_from(raw)[4] != self.generation:
            return "another generation"
        return problem

    def _ready(self) -> None:
        """The file open and its header this device's; OwnerMapError saying why not."""
        if self._header_ok() is None:
            return
        self.close()
        self.generation = None
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise OwnerMapError(err.errno, f"{self.path}: {err.strerror}") from None
        problem = self._header_ok()
        if problem is not None:
            raise OwnerMapError(errno.EINVAL, f"{self.path}: {problem}")
        self.generation = HEADER.unpack_from(os.pread(self.fd, HEADER.size, 0))[4]

    def owners(self, start: int, stop: int) -> bytes:
        """The raw little-endian u32s of units [start, stop)."""
        self._ready()
        return os.pread(self.fd, SLOT * (stop - start), HEADER.size + SLOT * start)

    span = rules.unit_bounds


_Made = TypeVar("_Made", fmt.FileEntry, fmt.MkdirEntry)
# A SETATTR slot's head: what a listing reads of it (target index, relpath field, uid, gid, mode).
_SETATTR_HEAD = struct.Struct(fmt.SETATTR_ENTRY.format[:len("<QI4xQ80sIII")])
# What a listing reads of a FILE slot, in one unpack: its type, size, uid, gid, mode, relpath
# field, extent type and count, and its first extent's offset and length (fmt.FILE_HEAD's layout
# and one extent's words, the seqnum, flags and devindex skipped).
_FILE_FIRST_EXTENT = struct.Struct("<8xI4x" "Q4xIII80s" "I4xI4x" "8xQQ")
assert _FILE_FIRST_EXTENT.size == fmt.FILE_HEAD.size + fmt.EXTENT_WORDS[1].size
# listed_many reads the owner map from a directory's lowest unit to its highest in one pread
# when the span is at most _SPAN_UNITS units (256 KiB), or _SPAN_PER_FILE a file; else one read per file.
_SPAN_UNITS = 1 << 16
_SPAN_PER_FILE = 4
# A run of at least _RUN_MIN files whose log entries are consecutive (a directory the agent played
# in one go) is checked column by column: each field of every slot of the run read at once from a
# strided view of the log (a u32 or u64 "word" of each slot), compared whole. Its offsets, in
# bytes from a slot's start, are _FILE_FIRST_EXTENT's fields: the entry type, size, uid, gid,
# mode, relpath field, extent type and count, the first extent's offset and length.
_RUN_MIN = 8
_TYPE_AT, _SIZE_AT, _UID_AT, _PATH_AT, _EXTENT_TYPE_AT, _COUNT_AT, _OFFSET_AT = (
    struct.calcsize(head) for head in ("<Q", "<QI4x", "<QI4xQI", "<QI4xQIIII", "<QI4xQIIII80s", "<QI4xQIIII80sI4x",
                                       "<QI4xQIIII80sI4xI4xQ"))
assert _PATH_AT == fmt.RELPATH_OFFSETS[fmt.EntryType.FILE] and _OFFSET_AT == fmt.FILE_HEAD.size + 8
_PATH_FIELD = struct.Struct(f"<{_PATH_AT}x{fmt.MAX_PATHLEN}s{fmt.ENTRY_SIZE - _PATH_AT - fmt.MAX_PATHLEN}x")
_U32, _U64 = fmt.ENTRY_SIZE // 4, fmt.ENTRY_SIZE // 8  # words of each size in a slot


class ListedFile(NamedTuple):
    """What a listing serves of a file: its attributes, none of its extents."""

    size: int
    mode: int
    uid: int
    gid: int
    mapped: int  # bytes of device memory its extents hold (st_blocks)

    def capacity(self) -> int:  # as fmt.FileEntry's: what the mount serves as st_blocks * 512
        return self.mapped

# The FileEntry fields a shadow file must share with its log entry: size, mode, uid, gid, extents,
# stripes (the relpath is compared first, for a better reason; flags are not in every YAML).
_MAPPING = slice(1, 7)


# How far famfs-agent may be behind the log for a file to be served ahead of it: each entry since
# its cursor is decoded on every check (upstream's CLI is at most a few entries ahead of it).
MAX_UNPLAYED = 1024


def _overlap(ours: Sequence[fmt.Extent], theirs: Sequence[fmt.Extent], unit: int) -> bool:
    """Whether any two extents touch an allocation unit of the same device in common."""
    return any(a.devindex == b.devindex and a.offset // unit < -(-b.end // unit) and b.offset // unit < -(-a.end // unit)
               for a in ours for b in theirs)


def _runs(indexes: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of each longest stretch of `indexes` (not empty) that counts up by one."""
    steps = list(map(operator.sub, indexes[1:], indexes[:-1]))
    if steps.count(1) == len(steps):
        return [(0, len(indexes))]
    bounds = [0, *(at for at, step in enumerate(steps, 1) if step != 1), len(indexes)]
    return list(zip(bounds, bounds[1:]))


class ShadowCheck:
    """A shadow file or directory checked against the device's log and the agent's owner map:
    what famfs-fuse-mount and famfs.open serve is what the log holds, whoever wrote the tree."""

    def __init__(self, famfs_log: FamfsLog, owners_path: str | os.PathLike[str],
                 device_size: Callable[[int], int | None] = lambda devindex: None) -> None:
        """`device_size`: the logged size of added device N (from the agent's daxdev table),
        None if the table has no such device: its files are not served."""
        sb = famfs_log.superblock
        self.famfs_log = famfs_log
        self.owners_path = os.fspath(owners_path)
        self.device_size = device_size
        self.reader = OwnerReader(owners_path, sb.dev_size // sb.alloc_unit, sb.alloc_unit)
        self._slots = fmt.log_capacity(sb.log_len)
        self.readers: dict[int, OwnerReader] = {0: self.reader}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()

    def _reader(self, devindex: int) -> OwnerReader:
        """The owner map of device `devindex` (owners.N beside owners); OwnerMapError if unknown."""
        if devindex not in self.readers:
            size = self.device_size(devindex)
            if size is None:
                raise OwnerMapError(errno.ENODEV, f"device {devindex} is not in this host's daxdev table")
            unit = self.famfs_log.superblock.alloc_unit
            self.readers[devindex] = OwnerReader(f"{self.owners_path}.{devindex}", size // unit, unit)
        return self.readers[devindex]

    def _extent_owners(self, extent: fmt.Extent) -> bytes:
        """The owner map's raw u32s of every unit `extent` maps; OwnerMapError if there is none."""
        reader = self._reader(extent.devindex)
        return reader.owners(*reader.span(extent))

    def _moved(self) -> bool:
        """Whether a compaction moved the log since it was last found (FamfsLog.current: from a
        compaction's commit until its copy is done it is read from the staging copy, and its
        header where it was is zeroed); then it is read where it is from now on. Asked only when
        a check refuses: the refusal may be of the place, so the check is made again there."""
        found = self.famfs_log.current()
        moved, self.famfs_log = found is not self.famfs_log, found
        return moved

    def file_problem(self, entry: fmt.FileEntry) -> str | None:
        """Why the parsed shadow file `entry` is not the live log entry for its path; None if it
        is. Its extents are already checked against the device (rules.check_extents)."""
        problem = self._file_problem(entry)
        return self._file_problem(entry) if problem is not None and self._moved() else problem

    def _file_problem(self, entry: fmt.FileEntry) -> str | None:
        extents = entry.all_extents()
        if not extents:
            return "maps no allocation unit: no log entry can be found to own it"
        try:
            first = self._extent_owners(extents[0])
            value = struct.unpack_from("<I", first)[0]
        except (OwnerMapError, struct.error) as err:
            return f"no owner map to check it against ({err})"
        if value in (FREE, HELD):
            what = "free device space" if value == FREE else "units no live file owns (a deleted file's, or the log's)"
            return f"maps {what}"
        index = value - 1
        if index >= self.famfs_log.next_index():
            return f"the owner map names log entry {index}, past the log's end"
        logged = self._described(index, fmt.FileEntry)
        if isinstance(logged, str):
            return f"the owner map names log entry {index}, {logged}"
        if logged.relpath != entry.relpath:
            return f"maps units of log entry {index} at path {logged.relpath!r}"
        if logged[_MAPPING] != entry[_MAPPING]:
            return f"not the live log entry for this path (log entry {index} differs)"
        expected, owned = first[:SLOT], first
        for n, extent in enumerate(extents):
            if n:
                try:
                    owned = self._extent_owners(extent)
                except OwnerMapError as err:
                    return f"no owner map to check it against ({err})"
            if owned != expected * (len(owned) // SLOT):
                return f"an extent at {extent.offset:#x} is not all owned by log entry {index}"
        return None

    def unlogged_problem(self, entry: fmt.FileEntry, played: int) -> str | None:
        """Why shadow file `entry`, which no log entry owns yet, may not be served ahead of the
        log (docs/fusefs.md, "Served ahead of the log"); None if no byte it maps is another
        file's: every unit of every extent is free in the owner map (the agent's replay through
        log entry `played`), and no entry logged since then maps any of them, but a FILE entry
        at this very path with this very mapping (the writer's own, not played yet). Its extents
        are already checked against the device (rules.check_extents)."""
        problem = self._unlogged_problem(entry, played)
        return self._unlogged_problem(entry, played) if problem is not None and self._moved() else problem

    def _unlogged_problem(self, entry: fmt.FileEntry, played: int) -> str | None:
        extents = entry.all_extents()
        if not extents:
            return "maps no allocation unit"
        for extent in extents:
            try:
                owners = self._extent_owners(extent)
            except OwnerMapError as err:
                return f"no owner map to check it against ({err})"
            if owners.count(0) != len(owners):  # FREE is 0: any other byte is a unit taken
                return (f"an extent at {extent.offset:#x} maps units that are not free device space "
                        "(a logged file's, a deleted file's not yet reclaimed, or the log's)")
        next_index = self.famfs_log.next_index()
        if next_index - (played + 1) > MAX_UNPLAYED:
            return f"famfs-agent is {next_index - played - 1} entries behind the log (more than {MAX_UNPLAYED})"
        for index in range(played + 1, next_index):
            try:
                logged = self.famfs_log.entry(index)
            except (fmt.FormatError, fmt.EntryError) as err:
                return f"log entry {index}, not played yet, is unreadable: {err}"
            taking = logged.file if isinstance(logged, fmt.HoldEntry) else logged
            if not isinstance(taking, fmt.FileEntry):
                continue
            if taking.relpath == entry.relpath and taking[_MAPPING] == entry[_MAPPING] and taking is logged:
                continue  # this very file, being logged
            if taking.relpath == entry.relpath or _overlap(taking.all_extents(), extents, self.reader.unit):
                return f"log entry {index}, not played yet, maps its units or its path ({taking.relpath!r})"
        return None

    def listed(self, relpath: bytes, index: int) -> ListedFile | None:
        """The attributes of the file at `relpath` from log entry `index` (the one its shadow
        file's trusted.famfs.file names), if that entry holds this path and the owner map gives
        the unit its first extent starts in to that very entry, i.e. it is the live file at this
        path; else None, and the caller parses the YAML and checks it in full (file_problem).

        Read from the mapped slot without its CRC or the rule book: the agent checked both before
        it named the entry in the owner map, and a logged slot is never written again. Only a
        listing's attributes come from here: what maps bytes (open, read, mmap) is the YAML,
        parsed and checked by file_problem."""
        return self.listed_many(((relpath, index),))[0]

    def listed_many(self, wanted: Iterable[tuple[bytes, int]], prefix: bytes = b"") -> list[ListedFile | None]:
        """listed() of many files at once, in the order of `wanted`: (name, index) pairs, each
        file's relpath `prefix` + name (a directory's record, famfs.listing, is its relpath and
        "/", and its own (name, index) items). A run of files with consecutive log entries is
        checked column by column, with no Python step per file (_run_listings), when all its
        files hold; any doubt, and the files are checked one by one (_listed_each), the same
        rules: a cold listing of 100,000 files runs this for each."""
        items = list(wanted)
        indexes = list(map(itemgetter(1), items))
        if len(items) < _RUN_MIN or _SWAP:  # the columns are read in the host's byte order
            return self._listed_each(items, prefix)
        runs = _runs(indexes)
        if len(runs) == 1:  # one run: the whole directory played in one go
            return self._run_listings(items, indexes[0], prefix) or self._listed_each(items, prefix)
        result: list[ListedFile | None] = [None] * len(items)
        rest: list[int] = []  # the positions of the files checked one by one
        for start, stop in runs:
            run = self._run_listings(items[start:stop], indexes[start], prefix) if stop - start >= _RUN_MIN else None
            if run is None:
                rest.extend(range(start, stop))
            else:
                result[start:stop] = run
        if len(rest) == len(items):
            return self._listed_each(items, prefix)
        for position, listed in zip(rest, self._listed_each([items[position] for position in rest], prefix)):
            result[position] = listed
        return result

    def _run_listings(self, run: list[tuple[bytes, int]], first: int, prefix: bytes) -> list[ListedFile] | None:
        """The listings of `run`, files whose log entries are `first`, `first` + 1, ...: each
        slot a FILE of that very path with one simple extent, below the log's end, whose first
        unit the owner map gives to that entry; None unless every one is (then _listed_each)."""
        count = len(run)
        if first < 0 or first + count > min(self.famfs_log.next_index(), self._slots):
            return None
        start = self.famfs_log.log_base + fmt.LOG_HEADER.size + first * fmt.ENTRY_SIZE
        with memoryview(self.famfs_log.device.map)[start:start + count * fmt.ENTRY_SIZE] as slots, \
                slots.cast("I") as u32, slots.cast("Q") as u64:
            if u32[_TYPE_AT // 4::_U32].tobytes() != struct.pack("<I", fmt.EntryType.FILE) * count \
                    or u32[_EXTENT_TYPE_AT // 4::_U32].tobytes() != struct.pack("<I", fmt.ExtentType.SIMPLE) * count \
                    or u32[_COUNT_AT // 4::_U32].tobytes() != struct.pack("<I", 1) * count:
                return None
            paths = list(map(itemgetter(0), _PATH_FIELD.iter_unpack(slots)))
            if paths != [(prefix + name).ljust(fmt.MAX_PATHLEN, b"\0") for name, _ in run]:
                return None
            units = list(map(operator.floordiv, u64[_OFFSET_AT // 8::_U64].tolist(), repeat(self.reader.unit)))
            if max(units) >= self.reader.nunits:
                return None
            try:
                if self._owners_at(units) != list(range(first + 1, first + count + 1)):
                    return None
            except OwnerMapError:
                return None
            fields = (u64[_SIZE_AT // 8::_U64].tolist(), u32[_UID_AT // 4 + 2::_U32].tolist(),
                      u32[_UID_AT // 4::_U32].tolist(), u32[_UID_AT // 4 + 1::_U32].tolist(),
                      u64[_OFFSET_AT // 8 + 1::_U64].tolist())  # size, mode, uid, gid, the extent's length
        return list(map(tuple.__new__, repeat(ListedFile), zip(*fields)))

    def _owners_at(self, units: list[int]) -> list[int]:
        """The owner map's value at each of `units` (not empty): one pread from the lowest to the
        highest, or one small read each when they are far apart. OwnerMapError if it has none."""
        low, high = min(units), max(units) + 1
        if high - low > max(_SPAN_UNITS, _SPAN_PER_FILE * len(units)):
            table = array("I", b"".join(self.reader.owners(unit, unit + 1) for unit in units))
            if _SWAP:
                table.byteswap()
            return table.tolist()
        table = array("I", self.reader.owners(low, high))
        if _SWAP:
            table.byteswap()
        if high - low == len(units) and units == list(range(low, high)):
            return table.tolist()  # one unit after the other (a directory of small files made in one go)
        return [table[unit - low] for unit in units]

    def _listed_each(self, wanted: list[tuple[bytes, int]], prefix: bytes) -> list[ListedFile | None]:
        """listed_many, file by file: the rules of listed(), each file's slot read on its own."""
        listed, units, owners = self._slot_listings(wanted, prefix)
        if not units:
            return listed
        try:
            got = self._owners_at(units)
        except OwnerMapError:
            return [None] * len(listed)
        # Served only where the owner map gives the unit the file starts in to that very entry.
        if got == owners:
            return listed  # every one holds (the usual case)
        held = map(operator.eq, got, owners)  # one for each file listed so far, in order
        return [None if item is None or not next(held) else item for item in listed]

    def _slot_listings(self, wanted: Iterable[tuple[bytes, int]],
                       prefix: bytes) -> tuple[list[ListedFile | None], list[int], list[int]]:
        """For each (name, index): what slot `index` lists for `prefix` + name, None where the
        slot is not a simple FILE of that path (or a SETATTR of one) below the log's end; and
        for each one listed, in order, the unit its first extent starts in and the owner map's
        value that says `index` owns it (index + 1)."""
        famfs_log = self.famfs_log
        limit = min(famfs_log.next_index(), self._slots)
        log_map = famfs_log.device.map  # unpacked in place: a slot below the log's capacity is on the device
        base, size = famfs_log.log_base + fmt.LOG_HEADER.size, fmt.ENTRY_SIZE
        file_head, setattr_head, words_of = _FILE_FIRST_EXTENT.unpack_from, _SETATTR_HEAD.unpack_from, fmt.EXTENT_WORDS
        head_size, unit_size, nunits, pathlen = fmt.FILE_HEAD.size, self.reader.unit, self.reader.nunits, fmt.MAX_PATHLEN
        file_kind, setattr_kind, most = fmt.EntryType.FILE, fmt.EntryType.SETATTR, fmt.MAX_SIMPLE_EXTENTS
        new, listed_file = tuple.__new__, ListedFile
        listed: list[ListedFile | None] = []
        units: list[int] = []
        owners: list[int] = []
        for name, index in wanted:
            if not 0 <= index < limit:
                listed.append(None)
                continue
            field = (prefix + name).ljust(pathlen, b"\0")
            slot = base + index * size
            kind, size_, uid, gid, mode, path, ext_type, count, offset, mapped = file_head(log_map, slot)
            if kind == setattr_kind:
                changed = setattr_head(log_map, slot)
                target = changed[2]
                if changed[3] != field or not 0 <= target < index:
                    listed.append(None)
                    continue
                slot = base + target * size
                kind, size_, _, _, _, path, ext_type, count, offset, mapped = file_head(log_map, slot)
                uid, gid, mode = changed[4:7]
            start = offset // unit_size
            # ext_type 0: simple extents (an interleaved file is rare: its listing parses the YAML)
            if kind != file_kind or path != field or ext_type or not 1 <= count <= most or start >= nunits:
                listed.append(None)
                continue
            if count > 1:
                mapped = sum(words_of[count].unpack_from(log_map, slot + head_size)[2::3])
            listed.append(new(listed_file, (size_, mode, uid, gid, mapped)))
            units.append(start)
            owners.append(index + 1)
        return listed, units, owners

    def dir_problem(self, relpath: str, raw: bytes | None) -> DirRecord | str:
        """The logged attributes of shadow directory `relpath` from its xattr value `raw`, if
        the MKDIR entry it names made this path with them, or the SETATTR it names gave them to
        that MKDIR's directory; else why not."""
        found = self._dir_problem(relpath, raw)
        return self._dir_problem(relpath, raw) if isinstance(found, str) and self._moved() else found

    def _dir_problem(self, relpath: str, raw: bytes | None) -> DirRecord | str:
        if raw is None:
            return "no trusted.famfs.dir attribute (not made by famfs-agent)"
        record = DirRecord.decode(raw)
        if record is None:
            return f"trusted.famfs.dir {raw[:64]!r} is not '<index> <mode> <uid> <gid>'"
        if not 0 <= record.index < self.famfs_log.next_index():
            return f"trusted.famfs.dir names log entry {record.index}, past the log's end"
        logged = self._described(record.index, fmt.MkdirEntry)
        if isinstance(logged, str) or logged.relpath != relpath:
            return f"trusted.famfs.dir names log entry {record.index}, not a MKDIR or SETATTR of this path"
        if (logged.mode & 0o7777, logged.uid, logged.gid) != (record.mode, record.uid, record.gid):
            return f"trusted.famfs.dir differs from log entry {record.index}'s mode or owner"
        return record

    def _described(self, index: int, kind: type[_Made]) -> _Made | str:
        """Log entry `index` as the file or directory it describes: a `kind` entry (FILE or
        MKDIR) itself, or a SETATTR's target of that kind with the SETATTR's mode and owner (the
        one a file's owner map or a directory's xattr names is the latest: the agent names each
        as it plays it). Else why not."""
        try:
            logged = self.famfs_log.entry(index)
            if isinstance(logged, fmt.SetattrEntry):
                change = logged
                if not 0 <= change.target_index < index:
                    return f"a SETATTR of entry {change.target_index}, not an earlier entry"
                logged = self.famfs_log.entry(change.target_index)
                if not isinstance(logged, kind) or logged.relpath != change.relpath:
                    return f"a SETATTR whose target entry {change.target_index} is not a {kind.__name__} of its path"
                if isinstance(logged, fmt.FileEntry):
                    return logged._replace(mode=change.mode, uid=change.uid, gid=change.gid)
                return fmt.MkdirEntry(logged.relpath, change.mode, change.uid, change.gid)  # type: ignore[return-value]
        except fmt.FormatError as err:
            return f"which is unreadable: {err}"
        if not isinstance(logged, kind):
            return f"which is not a {'file' if kind is fmt.FileEntry else 'directory'}"
        return logged
