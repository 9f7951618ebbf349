"""Where the log is: the compaction record (docs/reclaim.md, "Log compaction").

Upstream's readers require the log at the fixed 2 MiB offset, so a compacted log ends up there.
It gets there in two steps: the master writes the new log whole into free data units (the staging
copy), then writes this record in state COPYING, which is the commit, then copies the staging copy
over the log and marks the record DONE. While the record says COPYING, our readers read the
staging copy; otherwise the log at the superblock's offset. The record's epoch numbers the logs
a device has had: 0 until the first compaction. The record names the file system it belongs to (the
superblock's UUID): upstream's mkfs writes only the superblock struct and the log, so a record it
leaves behind, even a committed one, is of a file system that is gone, and no record of the new one.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from famfs import format as fmt


class CompactionState(enum.IntEnum):
    NONE = 0  # no compaction ever (an all-zero record)
    COPYING = 1  # committed: the staging copy is the log until the copy is done
    DONE = 2  # the log at the superblock's offset is the compacted one


@dataclass(frozen=True, slots=True)
class CompactionRecord:
    state: CompactionState
    epoch: int
    staging_offset: int = 0
    staged_bytes: int = 0  # the log header and the staged slots
    staged_entries: int = 0
    staged_crc: int = 0  # CRC-32 of the staged bytes
    fs_uuid: uuid.UUID = uuid.UUID(int=0)  # the superblock's: the file system this record is of

    def pack(self) -> bytes:
        raw = bytearray(fmt.COMPACTION_RECORD.pack(
            fmt.COMPACTION_MAGIC, fmt.COMPACTION_RECORD_VERSION, self.state, self.epoch, self.staging_offset,
            self.staged_bytes, self.staged_entries, self.staged_crc, self.fs_uuid.bytes, 0))
        raw[fmt.COMPACTION_RECORD_CRC_SPAN:] = fmt.crc32(raw[:fmt.COMPACTION_RECORD_CRC_SPAN]).to_bytes(8, "little")
        return bytes(raw)


NO_COMPACTION = CompactionRecord(CompactionState.NONE, 0)


def unpack(raw: bytes) -> CompactionRecord:
    """The record in `raw`. All zeros (a device no compaction ever touched, upstream's included)
    is NO_COMPACTION. Anything else that does not check out is a FormatError: a torn or foreign
    record must stop readers, since it may be the commit of a log they would otherwise misread."""
    if not any(raw):
        return NO_COMPACTION
    magic, version, state, epoch, staging, staged_bytes, entries, staged_crc, fs_uuid, crc = fmt.COMPACTION_RECORD.unpack(raw)
    if crc != fmt.crc32(raw[:fmt.COMPACTION_RECORD_CRC_SPAN]):
        raise fmt.FormatError(f"compaction record: bad CRC {crc:#x}")
    if magic != fmt.COMPACTION_MAGIC or version != fmt.COMPACTION_RECORD_VERSION:
        raise fmt.FormatError(f"compaction record: bad magic or version {version}")
    try:
        found = CompactionState(state)
    except ValueError:
        raise fmt.FormatError(f"compaction record: unknown state {state}") from None
    return CompactionRecord(found, epoch, staging, staged_bytes, entries, staged_crc, uuid.UUID(bytes=fs_uuid))


RECORD_SPAN = (fmt.COMPACTION_RECORD_OFFSET, fmt.COMPACTION_RECORD.size)  # (offset, length) on the device


def read_record(view: bytes | memoryview) -> CompactionRecord:
    """The record of a mapped device (`view` covers it from offset 0, its superblock valid): one
    of another file system than the superblock's is NO_COMPACTION."""
    start = fmt.COMPACTION_RECORD_OFFSET
    record = unpack(bytes(view[start:start + fmt.COMPACTION_RECORD.size]))
    if record.fs_uuid != fmt.Superblock.unpack(bytes(view[:fmt.SUPERBLOCK.size])).fs_uuid:
        return NO_COMPACTION
    return record


@dataclass(frozen=True, slots=True)
class LogLocation:
    """Where readers find the log: its byte offset on the device, and which log it is."""

    base: int
    epoch: int
    staged: bool  # a committed compaction whose copy is not finished: the staging copy is read

    @classmethod
    def of(cls, record: CompactionRecord, superblock: fmt.Superblock, device_size: int) -> LogLocation:
        if record.state != CompactionState.COPYING:
            return cls(superblock.log_offset, record.epoch, staged=False)
        data_start = fmt.data_start(superblock.log_len)
        end = record.staging_offset + record.staged_bytes
        if record.staging_offset < data_start or end > min(device_size, superblock.dev_size):
            raise fmt.FormatError(f"compaction record: staging copy at {record.staging_offset:#x} is outside the data area")
        return cls(record.staging_offset, record.epoch, staged=True)
