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
import os
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import TypeVar

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

    def header(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.unit, self.nunits, self.generation)

    def image(self) -> bytes:
        return self.header() + _le(self.table)

    def attach(self, fd: int) -> None:
        """Keep `fd` (the file as written from image(), or loaded) in step from now on."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

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

    def retire(self) -> None:
        """Clear the header of the file about to be replaced: a reader holding it reopens."""
        if self.fd >= 0:
            os.pwrite(self.fd, bytes(HEADER.size), 0)
            os.close(self.fd)
            self.fd = -1

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

# The FileEntry fields a shadow file must share with its log entry: size, mode, uid, gid, extents,
# stripes (the relpath is compared first, for a better reason; flags are not in every YAML).
_MAPPING = slice(1, 7)


class ShadowCheck:
    """A shadow file or directory checked against the device's log and the agent's owner map:
    what famfs-fuse-mount and famfs.open serve is what the log holds, whoever wrote the tree."""

    def __init__(self, famfs_log: FamfsLog, owners_path: str | os.PathLike[str]) -> None:
        sb = famfs_log.superblock
        self.famfs_log = famfs_log
        self.reader = OwnerReader(owners_path, sb.dev_size // sb.alloc_unit, sb.alloc_unit)

    def close(self) -> None:
        self.reader.close()

    def file_problem(self, entry: fmt.FileEntry) -> str | None:
        """Why the parsed shadow file `entry` is not the live log entry for its path; None if it
        is. Its extents are already checked against the device (rules.check_extents)."""
        extents = entry.all_extents()
        if not extents:
            return "maps no allocation unit: no log entry can be found to own it"
        reader = self.reader
        try:
            start, stop = reader.span(extents[0])
            first = reader.owners(start, stop)  # the header checked once, here
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
        expected = first[:SLOT]
        for n, extent in enumerate(extents):
            if n:
                start, stop = reader.span(extent)
                first = os.pread(reader.fd, SLOT * (stop - start), HEADER.size + SLOT * start)
            if first != expected * (stop - start):
                return f"an extent at {extent.offset:#x} is not all owned by log entry {index}"
        return None

    def dir_problem(self, relpath: str, raw: bytes | None) -> DirRecord | str:
        """The logged attributes of shadow directory `relpath` from its xattr value `raw`, if
        the MKDIR entry it names made this path with them, or the SETATTR it names gave them to
        that MKDIR's directory; else why not."""
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
