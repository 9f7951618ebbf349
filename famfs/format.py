"""The famfs on-media format, version 48: every struct layout, constant and CRC lives here.

Byte-compatible with upstream famfs (github.com/cxl-micron-reskit/famfs @ 5d0919f); see
docs/format.md. Upstream memcpy's raw x86_64 structs, so every layout is little-endian with
explicit padding, and every byte a layout does not name is written as zero.

Nothing else in the project may hard-code an offset: it asks this module.
"""

from __future__ import annotations

import enum
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

# --- constants (upstream src/famfs_meta.h) -------------------------------------------------

SUPER_MAGIC = 0x87B282FF
CURRENT_VERSION = 48
OMF_VER_MAJOR = 2
OMF_VER_MINOR = 2
SUPERBLOCK_SIZE = 0x200000  # the superblock region; the struct itself is 200 bytes
LOG_OFFSET = SUPERBLOCK_SIZE
DEFAULT_LOG_LEN = 0x800000  # also the minimum
ALLOC_UNIT = 0x200000  # what mkfs writes
ACCEPTED_ALLOC_UNITS = (4096, ALLOC_UNIT)  # what upstream's check_super accepts
DEVNAME_LEN = 64
MAX_PATHLEN = 80  # relpath buffer: at most 79 bytes and a NUL
MAX_RELPATH_BYTES = MAX_PATHLEN - 1
MAX_SIMPLE_EXTENTS = 16
MAX_INTERLEAVED_EXTENTS = 1
MAX_STRIPS = 16
MAX_NBUCKETS = 64
LOG_MAGIC = 0xBADCAFEF00D
FM_ALL_HOSTS_RO = 1
FM_ALL_HOSTS_RW = 2
# ts_sb_flags (upstream defines both, sets neither). A primary keeps 0, byte-identical to upstream's
# mkfs; a device added by `famfsctl add-device` carries SECONDARY_SB and no log (log offset and
# length 0, as upstream's multi-daxdev plan has it): its data starts past the superblock region.
PRIMARY_SB = 1
SECONDARY_SB = 2
SECONDARY_DATA_START = SUPERBLOCK_SIZE


class EntryType(enum.IntEnum):
    FILE = 0
    MKDIR = 1
    DELETE = 2  # reserved upstream, defined by us (docs/format.md)
    ADD_DAXDEV = 3
    INVALID = 4
    RMDIR = 5  # ours, after upstream's last value: a directory delete (docs/format.md); upstream readers skip it
    RECLAIM = 6  # ours: deleted files' units are free again (docs/reclaim.md); upstream readers skip it
    FENCE = 7  # ours: the master stops waiting for a host incarnation (docs/reclaim.md); skipped upstream
    HOLD = 8  # ours: a deleted file's units kept across a compaction, FILE's layout (docs/reclaim.md)
    SETATTR = 9  # ours: a live file's or directory's new mode and owner (docs/format.md); upstream readers skip it


class ExtentType(enum.IntEnum):
    SIMPLE = 0
    INTERLEAVE = 1


# --- struct layouts ------------------------------------------------------------------------

SUPERBLOCK = struct.Struct("<5Q2I16s16s16sQI4xQ16s64s")
SUPERBLOCK_CRC_SPAN = 96  # crc covers magic .. ts_system_uuid

LOG_HEADER = struct.Struct("<6Q")
LOG_HEADER_CRC_SPAN = 24  # crc covers magic, len, last_index; never the cursors
LOG_NEXT_SEQNUM_OFFSET = 32  # next_seqnum, next_index: the two words an append advances

_ENTRY_HEAD = "<QI4x"
_FILE_META = "QIIII80s" + "I4xI4x"
FILE_SIMPLE_ENTRY = struct.Struct(_ENTRY_HEAD + _FILE_META + "48Q" + "16x" + "Q")
FILE_INTERLEAVED_ENTRY = struct.Struct(_ENTRY_HEAD + _FILE_META + "QQ" + "48Q" + "Q")
MKDIR_ENTRY = struct.Struct(_ENTRY_HEAD + "III80s" + "428x" + "Q")
ADD_DAXDEV_ENTRY = struct.Struct(_ENTRY_HEAD + "Q16sI4x" + "488x" + "Q")
# Ours (upstream reserves type 2 but never defined it): the index of the FILE entry being
# deleted, then its relpath, so a reader can check that the two agree.
DELETE_ENTRY = struct.Struct(_ENTRY_HEAD + "Q80s" + "432x" + "Q")
# RMDIR (ours) has DELETE's layout: the index of the MKDIR entry being undone, then its relpath.
RMDIR_ENTRY = DELETE_ENTRY
# SETATTR (ours): DELETE's head (the index of the FILE or MKDIR entry that made the live file or
# directory, then its relpath), then its new uid, gid and mode, as FILE and MKDIR order them.
SETATTR_ENTRY = struct.Struct(_ENTRY_HEAD + "Q80s" + "III" + "420x" + "Q")
# RECLAIM (ours): a count, then (FILE index, DELETE index) pairs naming deleted files whose
# units are free from this entry on (docs/reclaim.md).
RECLAIM_MAX_TARGETS = 32
RECLAIM_ENTRY = struct.Struct(_ENTRY_HEAD + "I4x" + f"{2 * RECLAIM_MAX_TARGETS}Q" + "Q")
# FENCE (ours): the host incarnation the master stops waiting for, why, and what it last saw of it.
FENCE_ENTRY = struct.Struct(_ENTRY_HEAD + "16sQII" + "QQ" + "472x" + "Q")
ENTRY_HEAD = struct.Struct(_ENTRY_HEAD)
TARGET_HEAD = struct.Struct(_ENTRY_HEAD + "Q")  # DELETE's, RMDIR's and SETATTR's head and target index
# A FILE entry decoded in two steps (a replay's hot path): its fixed head, up to the extent
# union, then only the extent words its count names, not all 48 of the union.
FILE_HEAD = struct.Struct(_ENTRY_HEAD + _FILE_META)
FILE_STRIPE_HEAD = struct.Struct("<QQ")  # an interleaved extent's strip count and chunk size
EXTENT_WORDS = tuple(struct.Struct(f"<{3 * count}Q") for count in range(MAX_STRIPS + 1))
# Where each entry type keeps its relpath field (for raw scans and for naming bad entries).
RELPATH_OFFSETS: dict[int, int] = {
    EntryType.FILE: ENTRY_HEAD.size + struct.calcsize("<QIIII"),  # after size, flags, uid, gid, mode
    EntryType.MKDIR: ENTRY_HEAD.size + struct.calcsize("<III"),  # after uid, gid, mode
    EntryType.DELETE: ENTRY_HEAD.size + struct.calcsize("<Q"),  # after target_index
    EntryType.RMDIR: ENTRY_HEAD.size + struct.calcsize("<Q"),  # after target_index
    EntryType.HOLD: ENTRY_HEAD.size + struct.calcsize("<QIIII"),  # FILE's layout
    EntryType.SETATTR: ENTRY_HEAD.size + struct.calcsize("<Q"),  # after target_index
}
ENTRY_SIZE = 544
ENTRY_CRC_SPAN = 536
SLOT_SEAL = struct.Struct(f"<Q{ENTRY_CRC_SPAN - 8}xQ")  # a slot's seqnum (+0) and CRC (+ENTRY_CRC_SPAN), one unpack

for _layout in (FILE_SIMPLE_ENTRY, FILE_INTERLEAVED_ENTRY, MKDIR_ENTRY, ADD_DAXDEV_ENTRY, DELETE_ENTRY, RECLAIM_ENTRY,
                FENCE_ENTRY, SETATTR_ENTRY):
    assert _layout.size == ENTRY_SIZE, _layout.format
assert SUPERBLOCK.size == 200 and LOG_HEADER.size == 48 and FILE_HEAD.size == 136


crc32 = zlib.crc32  # the format's CRC (unsigned in Python 3: no mask)

# The host table (ours, docs/reclaim.md): in the superblock region past the struct, which upstream
# never reads or writes; one 256-byte record per host, each written by its host only. 256 bytes:
# two hosts never share a cache line nor an adjacent-line prefetch pair.
HOST_TABLE_OFFSET = 0x100000
HOST_RECORD_SIZE = 256
HOST_SLOTS = (SUPERBLOCK_SIZE - HOST_TABLE_OFFSET) // HOST_RECORD_SIZE  # 4,096
HOST_MAGIC = int.from_bytes(b"FAMFSHST", "little")
HOST_RECORD_VERSION = 1
HOST_RECORD_CRC_SPAN = 248
# magic, version, state, slot, system UUID, incarnation, heartbeat, log epoch, applied, pin floor,
# renewed (CLOCK_BOOTTIME ns), serve window (ns), pid, flags, hostname, zeros, CRC
HOST_RECORD = struct.Struct("<QHHI16s" + "7Q" + "II64s" + "88x" + "Q")
assert HOST_RECORD.size == HOST_RECORD_SIZE and SUPERBLOCK.size <= HOST_TABLE_OFFSET

# The compaction record (ours, docs/reclaim.md "Log compaction"): where the log is while a
# compacted log is copied over the old one. Written by the master only; its store is the commit.
COMPACTION_RECORD_OFFSET = 0x10000
COMPACTION_MAGIC = int.from_bytes(b"FAMFSCMP", "little")
COMPACTION_RECORD_VERSION = 2
# magic, version, state, epoch, staging offset, staged bytes, staged entries, staged bytes' CRC, the
# file system's UUID (a record of an earlier file system on the device is no record: upstream's mkfs
# leaves this region as found), CRC
COMPACTION_RECORD = struct.Struct("<QHH4x" + "5Q" + "16s" + "Q")
COMPACTION_RECORD_CRC_SPAN = COMPACTION_RECORD.size - 8
assert COMPACTION_RECORD_OFFSET + COMPACTION_RECORD.size <= HOST_TABLE_OFFSET


def log_capacity(log_len: int) -> int:
    """Number of entry slots in a log of log_len bytes (15,420 for 8 MiB)."""
    return (log_len - LOG_HEADER.size) // ENTRY_SIZE


def entry_offset(index: int) -> int:
    """Offset of log slot `index` from the start of the log."""
    return LOG_HEADER.size + index * ENTRY_SIZE


def data_start(log_len: int) -> int:
    """First device byte that file extents may use."""
    return LOG_OFFSET + log_len


def check_log_len(log_len: int) -> None:
    """A log is a power of two of at least 8 MiB (upstream's mkfs rule; §1.1)."""
    if log_len < DEFAULT_LOG_LEN or log_len & (log_len - 1):
        raise FormatError(f"log length {log_len:#x} is not a power of two >= {DEFAULT_LOG_LEN:#x}")


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


class FormatError(ValueError):
    """Bytes that are not a valid famfs structure; the message says which rule failed."""


# --- superblock ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Superblock:
    log_len: int
    dev_size: int
    fs_uuid: uuid.UUID
    dev_uuid: uuid.UUID
    system_uuid: uuid.UUID
    daxdev_name: str = "/dev/dax0.0"
    dd_uuid: uuid.UUID = uuid.UUID(int=0)
    alloc_unit: int = ALLOC_UNIT
    log_offset: int = LOG_OFFSET
    version: int = CURRENT_VERSION
    omf_major: int = OMF_VER_MAJOR
    omf_minor: int = OMF_VER_MINOR
    sb_flags: int = 0

    @property
    def data_start(self) -> int:
        return SECONDARY_DATA_START if self.secondary else self.log_offset + self.log_len

    @property
    def secondary(self) -> bool:
        """A device added to a file system whose log lives on another (its primary)."""
        return bool(self.sb_flags & SECONDARY_SB)

    def pack(self) -> bytes:
        name = self.daxdev_name.encode()[:DEVNAME_LEN]
        raw = bytearray(
            SUPERBLOCK.pack(
                SUPER_MAGIC, self.version, self.log_offset, self.log_len, self.alloc_unit,
                self.omf_major, self.omf_minor, self.fs_uuid.bytes, self.dev_uuid.bytes,
                self.system_uuid.bytes, 0, self.sb_flags, self.dev_size, self.dd_uuid.bytes, name,
            )
        )
        struct.pack_into("<Q", raw, SUPERBLOCK_CRC_SPAN, crc32(raw[:SUPERBLOCK_CRC_SPAN]))
        return bytes(raw)

    @classmethod
    def unpack(cls, raw: bytes) -> Superblock:
        """Parse and validate, in upstream's order: magic, version, CRC, then geometry."""
        if len(raw) < SUPERBLOCK.size:
            raise FormatError(f"superblock: short read ({len(raw)} bytes)")
        (magic, version, log_offset, log_len, alloc_unit, omf_major, omf_minor, fs_uuid, dev_uuid,
         system_uuid, crc, sb_flags, dev_size, dd_uuid, name) = SUPERBLOCK.unpack_from(raw)
        if magic != SUPER_MAGIC:
            raise FormatError(f"superblock: bad magic {magic:#x} (want {SUPER_MAGIC:#x}): not a famfs device")
        if version != CURRENT_VERSION:
            raise FormatError(f"superblock: format version {version}, this build reads only version {CURRENT_VERSION}")
        want = crc32(raw[:SUPERBLOCK_CRC_SPAN])
        if crc != want:
            raise FormatError(f"superblock: bad CRC {crc:#x} (computed {want:#x})")
        if alloc_unit not in ACCEPTED_ALLOC_UNITS:
            raise FormatError(f"superblock: alloc_unit {alloc_unit:#x} is not 4 KiB or 2 MiB")
        if sb_flags & SECONDARY_SB:
            if (log_offset, log_len) != (0, 0):
                raise FormatError(f"superblock: a secondary's log offset and length are 0, not {log_offset:#x}, {log_len:#x}")
            if dev_size < SECONDARY_DATA_START + alloc_unit:
                raise FormatError(f"superblock: device size {dev_size} holds no data past the superblock region")
        elif log_offset != LOG_OFFSET:
            raise FormatError(f"superblock: log offset {log_offset:#x} (want {LOG_OFFSET:#x})")
        else:
            try:
                check_log_len(log_len)
            except FormatError as err:
                raise FormatError(f"superblock: {err}") from None
            if dev_size < log_offset + log_len:
                raise FormatError(f"superblock: device size {dev_size} cannot hold the log")
        return cls(
            log_len=log_len, dev_size=dev_size, fs_uuid=uuid.UUID(bytes=fs_uuid),
            dev_uuid=uuid.UUID(bytes=dev_uuid), system_uuid=uuid.UUID(bytes=system_uuid),
            daxdev_name=name.split(b"\0", 1)[0].decode(errors="replace"), dd_uuid=uuid.UUID(bytes=dd_uuid),
            alloc_unit=alloc_unit, log_offset=log_offset, version=version, omf_major=omf_major,
            omf_minor=omf_minor, sb_flags=sb_flags,
        )


# --- log header ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogHeader:
    log_len: int
    last_index: int
    next_seqnum: int = 0
    next_index: int = 0

    @classmethod
    def fresh(cls, log_len: int) -> LogHeader:
        return cls(log_len=log_len, last_index=log_capacity(log_len) - 1)

    @property
    def slots(self) -> int:
        return self.last_index + 1

    @property
    def full(self) -> bool:
        return self.next_index > self.last_index

    def pack(self) -> bytes:
        head = struct.pack("<3Q", LOG_MAGIC, self.log_len, self.last_index)
        return head + struct.pack("<3Q", crc32(head), self.next_seqnum, self.next_index)

    @classmethod
    def unpack(cls, raw: bytes, sb_log_len: int) -> LogHeader:
        """Parse and validate, including the bounds upstream never checks (docs/format.md §9 item 3)."""
        magic, log_len, last_index, crc, next_seqnum, next_index = LOG_HEADER.unpack_from(raw)
        if magic != LOG_MAGIC:
            raise FormatError(f"log header: bad magic {magic:#x} (want {LOG_MAGIC:#x})")
        want = crc32(raw[:LOG_HEADER_CRC_SPAN])
        if crc != want:
            raise FormatError(f"log header: bad CRC {crc:#x} (computed {want:#x})")
        if log_len != sb_log_len:
            raise FormatError(f"log header: length {log_len:#x} differs from the superblock's {sb_log_len:#x}")
        if last_index != log_capacity(log_len) - 1:
            raise FormatError(f"log header: last_index {last_index} does not fit a {log_len:#x}-byte log")
        if next_index > last_index + 1:
            raise FormatError(f"log header: next_index {next_index} is past last_index {last_index}")
        if next_seqnum != next_index:
            raise FormatError(f"log header: next_seqnum {next_seqnum} differs from next_index {next_index}")
        return cls(log_len=log_len, last_index=last_index, next_seqnum=next_seqnum, next_index=next_index)


# --- log entries ---------------------------------------------------------------------------


# Extent, Stripe and FileEntry are named tuples, not frozen dataclasses: as immutable, and made
# 2 to 3 times faster (a replay makes one FileEntry and its Extents per FILE entry, in the agent
# and again in its file-creating process: docs/agent.md, "How the tree changes").


class Extent(NamedTuple):
    offset: int
    length: int
    devindex: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length


class Stripe(NamedTuple):
    """One interleaved extent: data goes round-robin over `strips` in chunk_size pieces."""

    chunk_size: int
    strips: tuple[Extent, ...]

    @property
    def nstrips(self) -> int:
        return len(self.strips)


class FileEntry(NamedTuple):
    relpath: str
    size: int
    mode: int
    uid: int
    gid: int
    extents: tuple[Extent, ...] = ()  # simple files
    stripes: tuple[Stripe, ...] = ()  # interleaved files (exactly one on media)
    flags: int = FM_ALL_HOSTS_RW

    @property
    def interleaved(self) -> bool:
        return bool(self.stripes)

    def all_extents(self) -> tuple[Extent, ...]:
        """Every device range the file occupies (strips of interleaved files included)."""
        if self.stripes:
            return tuple(strip for stripe in self.stripes for strip in stripe.strips)
        return self.extents

    def capacity(self) -> int:
        extents = self.all_extents()
        if len(extents) == 1:  # nearly every file: no list to sum (the rule book asks each replay)
            return extents[0].length
        return sum([extent.length for extent in extents])


# A named tuple from all its fields, in order, without the generated __new__ (Python code, with
# defaults: twice the time). For the hot paths that make one per file replayed or parsed.
from_fields = tuple.__new__


@dataclass(frozen=True, slots=True)
class MkdirEntry:
    relpath: str
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class DeleteEntry:
    relpath: str
    target_index: int  # the FILE entry this deletes


@dataclass(frozen=True, slots=True)
class RmdirEntry:
    relpath: str
    target_index: int  # the MKDIR entry this undoes


@dataclass(frozen=True, slots=True)
class SetattrEntry:
    """A live file's or directory's mode and owner from this entry on (chmod, chown through the
    master's mount). The log is append-only: the FILE or MKDIR entry keeps what it logged, and
    this entry, the latest for its target, says what the file or directory has now."""

    relpath: str
    target_index: int  # the FILE or MKDIR entry that made the live file or directory
    mode: int  # permission bits, setgid and sticky included (the target's type is unchanged)
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class AddDaxdevEntry:
    dev_size: int
    dev_uuid: uuid.UUID
    dev_index: int


class FenceReason(enum.IntEnum):
    LEASE_EXPIRED = 1  # the heartbeat stood still for a lease, by the master's clock
    OPERATOR = 2  # famfsctl host fence
    RECORD_LOST = 3  # the host's record is gone or unreadable


@dataclass(frozen=True, slots=True)
class ReclaimEntry:
    targets: tuple[tuple[int, int], ...]  # (FILE index, DELETE index) of each file whose units are free again


@dataclass(frozen=True, slots=True)
class FenceEntry:
    system_uuid: uuid.UUID
    incarnation: int
    slot: int
    reason: FenceReason
    heartbeat: int  # the last heartbeat the master saw
    applied: int  # the last applied count the master saw


@dataclass(frozen=True, slots=True)
class HoldEntry:
    """A deleted, not yet reclaimed file carried into a compacted log: its units stay taken until a
    RECLAIM names this entry (as both its FILE and its DELETE index); its relpath is kept for the
    hosts' pins, not as a name: a HOLD is no file of the namespace."""

    file: FileEntry


Entry = (FileEntry | MkdirEntry | DeleteEntry | RmdirEntry | AddDaxdevEntry | ReclaimEntry | FenceEntry | HoldEntry
         | SetattrEntry)


@dataclass(frozen=True, slots=True)
class EntryError(Exception):
    """A log slot that does not hold a valid entry. `index` names the slot."""

    index: int
    reason: str
    relpath: str | None = field(default=None)

    def __str__(self) -> str:
        where = f" path={self.relpath!r}" if self.relpath is not None else ""
        return f"log entry {self.index}: {self.reason}{where}"


def encode_relpath(relpath: str) -> bytes:
    """The NUL-padded 80-byte relpath field; refuses what upstream would silently truncate."""
    raw = relpath.encode()
    check_relpath(raw)
    return raw


def check_relpath(raw: bytes) -> str:
    """Validate a relpath field's content (NUL excluded); return it decoded.

    Rules (stricter than upstream, docs/format.md §9 items 5 and 9): not empty, relative, at most 79
    bytes, UTF-8 (libyaml cannot emit anything else), no empty, '.' or '..' component.
    """
    if not raw:
        raise FormatError("empty path")
    if len(raw) > MAX_RELPATH_BYTES:
        raise FormatError(f"path is {len(raw)} bytes, the limit is {MAX_RELPATH_BYTES}")
    if raw.startswith(b"/"):
        raise FormatError("absolute path")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise FormatError("path is not valid UTF-8") from None
    for component in text.split("/"):
        if not component:
            raise FormatError("path has an empty component")
        if component in (".", ".."):
            raise FormatError(f"path has a {component!r} component")
    return text


def _relpath_field(raw: bytes) -> str:
    end = raw.find(b"\0")
    if end < 0:
        raise FormatError(f"relpath field has no NUL within {MAX_PATHLEN} bytes")
    raw = raw[:end]
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return check_relpath(raw)  # raises, saying so
    # The common case, tested in C (a replay's hot path): no empty, "." or ".." component. On
    # the str, not the bytes: a str search takes a third of the time (no buffer protocol), and
    # UTF-8 puts no "/" or "." inside a multi-byte character, so both say the same.
    if text and not text.startswith(("/", ".")) and not text.endswith("/") and "//" not in text and "/." not in text:
        return text
    return check_relpath(raw)


def _seal(raw: bytearray) -> bytes:
    struct.pack_into("<Q", raw, ENTRY_CRC_SPAN, crc32(raw[:ENTRY_CRC_SPAN]))
    return bytes(raw)


def encode_entry(entry: Entry, seqnum: int) -> bytes:
    """The 544 bytes of a log slot holding `entry`, CRC included; unused bytes are zero."""
    match entry:
        case FileEntry(stripes=()):
            if not 1 <= len(entry.extents) <= MAX_SIMPLE_EXTENTS:
                raise FormatError(f"a simple file needs 1..{MAX_SIMPLE_EXTENTS} extents")
            words = [w for e in entry.extents for w in (e.devindex, e.offset, e.length)]
            words += [0] * (3 * MAX_SIMPLE_EXTENTS - len(words))
            raw = FILE_SIMPLE_ENTRY.pack(
                seqnum, EntryType.FILE, entry.size, entry.flags, entry.uid, entry.gid, entry.mode,
                encode_relpath(entry.relpath), ExtentType.SIMPLE, len(entry.extents), *words, 0,
            )
        case FileEntry():
            if len(entry.stripes) != MAX_INTERLEAVED_EXTENTS:
                raise FormatError("an interleaved file has exactly one interleaved extent on media")
            stripe = entry.stripes[0]
            if not 1 <= stripe.nstrips <= MAX_STRIPS:
                raise FormatError(f"an interleaved extent needs 1..{MAX_STRIPS} strips")
            words = [w for e in stripe.strips for w in (e.devindex, e.offset, e.length)]
            words += [0] * (3 * MAX_STRIPS - len(words))
            raw = FILE_INTERLEAVED_ENTRY.pack(
                seqnum, EntryType.FILE, entry.size, entry.flags, entry.uid, entry.gid, entry.mode,
                encode_relpath(entry.relpath), ExtentType.INTERLEAVE, 1, stripe.nstrips,
                stripe.chunk_size, *words, 0,
            )
        case MkdirEntry():
            raw = MKDIR_ENTRY.pack(
                seqnum, EntryType.MKDIR, entry.uid, entry.gid, entry.mode, encode_relpath(entry.relpath), 0
            )
        case DeleteEntry():
            raw = DELETE_ENTRY.pack(
                seqnum, EntryType.DELETE, entry.target_index, encode_relpath(entry.relpath), 0
            )
        case RmdirEntry():
            raw = RMDIR_ENTRY.pack(
                seqnum, EntryType.RMDIR, entry.target_index, encode_relpath(entry.relpath), 0
            )
        case SetattrEntry():
            if entry.mode & ~0o7777:
                raise FormatError(f"SETATTR mode {entry.mode:#o} is more than permission bits")
            raw = SETATTR_ENTRY.pack(
                seqnum, EntryType.SETATTR, entry.target_index, encode_relpath(entry.relpath), entry.uid, entry.gid,
                entry.mode, 0,
            )
        case AddDaxdevEntry():
            raw = ADD_DAXDEV_ENTRY.pack(
                seqnum, EntryType.ADD_DAXDEV, entry.dev_size, entry.dev_uuid.bytes, entry.dev_index, 0
            )
        case ReclaimEntry():
            if not 1 <= len(entry.targets) <= RECLAIM_MAX_TARGETS:
                raise FormatError(f"a RECLAIM names 1..{RECLAIM_MAX_TARGETS} files")
            words = [w for pair in entry.targets for w in pair]
            words += [0] * (2 * RECLAIM_MAX_TARGETS - len(words))
            raw = RECLAIM_ENTRY.pack(seqnum, EntryType.RECLAIM, len(entry.targets), *words, 0)
        case FenceEntry():
            raw = FENCE_ENTRY.pack(
                seqnum, EntryType.FENCE, entry.system_uuid.bytes, entry.incarnation, entry.slot, entry.reason,
                entry.heartbeat, entry.applied, 0,
            )
        case HoldEntry():
            raw = bytearray(encode_entry(entry.file, seqnum))
            struct.pack_into("<I", raw, ENTRY_HEAD.size - 8, EntryType.HOLD)
        case _:
            raise TypeError(f"not a log entry: {entry!r}")
    return _seal(bytearray(raw))


def entry_seal(raw: bytes | memoryview) -> tuple[int, int]:
    """(seqnum, stored CRC) of a slot: what a reader's cursor remembers of the last entry."""
    seqnum, crc = SLOT_SEAL.unpack_from(raw)
    return seqnum, crc


def check_entry_seal(raw: bytes, index: int) -> None:
    """Upstream's famfs_validate_log_entry: seqnum == index and a good CRC."""
    seqnum, stored = SLOT_SEAL.unpack_from(raw)  # not entry_seal(): a replay's hot path
    if seqnum != index:
        raise EntryError(index, f"seqnum {seqnum} != index {index}")
    if stored != crc32(raw[:ENTRY_CRC_SPAN]):
        raise EntryError(index, f"bad CRC {stored:#x}")


def decode_entry(raw: bytes, index: int) -> Entry:
    """Decode and validate slot `index` on its own (the rules that need the device or the rest of the
    log are famfs.rules')."""
    check_entry_seal(raw, index)
    kind = ENTRY_HEAD.unpack_from(raw)[1]
    try:
        return _decode_body(raw, kind)
    except FormatError as err:
        raise EntryError(index, str(err), _best_effort_relpath(raw)) from None


def _decode_body(raw: bytes, kind: int) -> Entry:
    if kind == EntryType.FILE:
        return _decode_file(raw)
    if kind == EntryType.MKDIR:
        _, _, uid, gid, mode, relpath, _ = MKDIR_ENTRY.unpack(raw)
        return MkdirEntry(relpath=_relpath_field(relpath), mode=mode, uid=uid, gid=gid)
    if kind == EntryType.DELETE:
        _, _, target, relpath, _ = DELETE_ENTRY.unpack(raw)
        return DeleteEntry(relpath=_relpath_field(relpath), target_index=target)
    if kind == EntryType.RMDIR:
        _, _, target, relpath, _ = RMDIR_ENTRY.unpack(raw)
        return RmdirEntry(relpath=_relpath_field(relpath), target_index=target)
    if kind == EntryType.SETATTR:
        _, _, target, relpath, uid, gid, mode, _ = SETATTR_ENTRY.unpack(raw)
        if mode & ~0o7777:
            raise FormatError(f"SETATTR mode {mode:#o} is more than permission bits")
        return SetattrEntry(relpath=_relpath_field(relpath), target_index=target, mode=mode, uid=uid, gid=gid)
    if kind == EntryType.ADD_DAXDEV:
        _, _, size, dev_uuid, dev_index, _ = ADD_DAXDEV_ENTRY.unpack(raw)
        return AddDaxdevEntry(dev_size=size, dev_uuid=uuid.UUID(bytes=dev_uuid), dev_index=dev_index)
    if kind == EntryType.RECLAIM:
        return _decode_reclaim(raw)
    if kind == EntryType.HOLD:
        return HoldEntry(file=_decode_file(raw))
    if kind == EntryType.FENCE:
        _, _, host, incarnation, slot, reason, heartbeat, applied, _ = FENCE_ENTRY.unpack(raw)
        try:
            why = FenceReason(reason)
        except ValueError:
            raise FormatError(f"unknown fence reason {reason}") from None
        return FenceEntry(system_uuid=uuid.UUID(bytes=host), incarnation=incarnation, slot=slot, reason=why,
                          heartbeat=heartbeat, applied=applied)
    raise FormatError(f"unknown entry type {kind}")


def _decode_reclaim(raw: bytes) -> ReclaimEntry:
    _, _, count, *words, _ = RECLAIM_ENTRY.unpack(raw)
    if not 1 <= count <= RECLAIM_MAX_TARGETS:
        raise FormatError(f"reclaim target count {count} outside 1..{RECLAIM_MAX_TARGETS}")
    if any(words[2 * count:]):
        raise FormatError("reclaim: nonzero bytes past its last target")
    return ReclaimEntry(targets=tuple((words[i], words[i + 1]) for i in range(0, 2 * count, 2)))


def _decode_file(raw: bytes) -> FileEntry:
    _, _, size, flags, uid, gid, mode, relpath_raw, ext_type, count = FILE_HEAD.unpack_from(raw)
    if ext_type == ExtentType.SIMPLE:
        relpath = _relpath_field(relpath_raw)
        if not 1 <= count <= MAX_SIMPLE_EXTENTS:
            raise FormatError(f"extent count {count} outside 1..{MAX_SIMPLE_EXTENTS}")
        words = EXTENT_WORDS[count].unpack_from(raw, FILE_HEAD.size)
        # The hot path of every replay: from_fields, and a file's one extent without a loop.
        if count == 1:
            extents: tuple[Extent, ...] = (from_fields(Extent, (words[1], words[2], words[0])),)
        else:
            extents = tuple([from_fields(Extent, (words[i + 1], words[i + 2], words[i])) for i in range(0, len(words), 3)])
        return from_fields(FileEntry, (relpath, size, mode, uid, gid, extents, (), flags))
    if ext_type != ExtentType.INTERLEAVE:
        raise FormatError(f"unknown extent type {ext_type}")
    relpath = _relpath_field(relpath_raw)
    if count != MAX_INTERLEAVED_EXTENTS:
        raise FormatError(f"interleaved extent count {count}, only {MAX_INTERLEAVED_EXTENTS} fits on media")
    nstrips, chunk_size = FILE_STRIPE_HEAD.unpack_from(raw, FILE_HEAD.size)
    if not 1 <= nstrips <= MAX_STRIPS:
        raise FormatError(f"strip count {nstrips} outside 1..{MAX_STRIPS}")
    words = EXTENT_WORDS[nstrips].unpack_from(raw, FILE_HEAD.size + FILE_STRIPE_HEAD.size)
    strips = tuple(Extent(devindex=words[i], offset=words[i + 1], length=words[i + 2]) for i in range(0, len(words), 3))
    return FileEntry(relpath=relpath, size=size, mode=mode, uid=uid, gid=gid, flags=flags,
                     stripes=(Stripe(chunk_size=chunk_size, strips=strips),))


def raw_relpath(raw: bytes | memoryview) -> bytes | None:
    """The relpath bytes of a FILE, MKDIR, DELETE, RMDIR, HOLD or SETATTR slot, read without validating the slot."""
    start = RELPATH_OFFSETS.get(ENTRY_HEAD.unpack_from(raw)[1])
    if start is None:
        return None
    return bytes(raw[start:start + MAX_PATHLEN]).split(b"\0", 1)[0]


def _best_effort_relpath(raw: bytes) -> str | None:
    """The relpath of a bad entry, for error messages only."""
    relpath = raw_relpath(raw)
    return None if relpath is None else relpath.decode(errors="backslashreplace")


# --- where a file's bytes live ------------------------------------------------------------


def device_pieces(entry: FileEntry, offset: int = 0, length: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(devindex, device offset, length) pieces holding file bytes [offset, offset+length), in
    file order. Each piece lies inside one extent, so on one device.

    Interleaved files: chunk c of the file is in strip c % nstrips, at chunk c // nstrips of that
    strip (the mapping of upstream's famfs_ioctl.h, with its typos fixed).
    """
    end = entry.size if length is None else min(entry.size, offset + length)
    if entry.stripes:
        stripe = entry.stripes[0]
        chunk = stripe.chunk_size
        while offset < end:
            number, within = divmod(offset, chunk)
            strip = stripe.strips[number % stripe.nstrips]
            piece = min(chunk - within, end - offset)
            yield strip.devindex, strip.offset + (number // stripe.nstrips) * chunk + within, piece
            offset += piece
        return
    base = 0
    for extent in entry.extents:
        if offset >= end:
            return
        if offset < base + extent.length:
            within = offset - base
            piece = min(extent.length - within, end - offset)
            yield extent.devindex, extent.offset + within, piece
            offset += piece
        base += extent.length


def one_piece(entry: FileEntry, offset: int, length: int) -> tuple[int, int, int] | None:
    """device_pieces(entry, offset, length) when it is one piece in a simple file's first extent
    (nearly every read of a file of one extent), without the generator (a read's hot path: ~0.5
    µs less); None when it is anything else (no bytes, interleaved, more pieces): ask device_pieces."""
    extents = entry.extents
    if entry.stripes or not extents:
        return None
    extent = extents[0]
    end = offset + length
    if end > entry.size:  # (not min(): a third of this function's time)
        end = entry.size
    if not 0 <= offset < end <= extent.length:
        return None
    return extent.devindex, extent.offset + offset, end - offset


def device_ranges(entry: FileEntry, offset: int = 0, length: int | None = None) -> Iterator[tuple[int, int]]:
    """device_pieces() of a file on device 0 alone (the primary): (device offset, length). A
    piece on another device raises FormatError, so a single-device reader never reads the
    primary at another device's offset."""
    for devindex, start, size in device_pieces(entry, offset, length):
        if devindex:
            raise FormatError(f"{entry.relpath}: an extent is on device {devindex}, not on the primary")
        yield start, size
