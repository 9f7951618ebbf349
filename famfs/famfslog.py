"""Reading and appending the famfs metadata log on a device.

A `FamfsLog` is a validated view of one device's superblock and log. Readers take entries by
index; the single writer of a host appends under an exclusive lock on the device, writing the
entry first and the header second, so a concurrent reader never counts an entry whose bytes are
not all there (upstream flushes both together with no ordering; docs/format.md §3.1).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import struct
from collections.abc import Container, Iterator, Sequence

from famfs import format as fmt
from famfs.compaction import RECORD_SPAN, LogLocation, read_record
from famfs.device import Device, DeviceError

RAW_CHUNK = 256  # slots read at once by raw_entries: 136 KiB


class LogFullError(OSError):
    def __init__(self, device: str, slots: int) -> None:
        super().__init__(errno.ENOSPC, f"{device}: log full ({slots} of {slots} entries used); nothing appended")


class FamfsLog:
    """The superblock and log of an open device, validated on open."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.superblock = self.primary_superblock(device)
        try:
            self.location = LogLocation.of(read_record(device.fresh(*RECORD_SPAN)), self.superblock, device.size)
        except fmt.FormatError as err:
            raise fmt.FormatError(f"{device.path}: {err}") from None
        self.log_base = self.location.base  # the staging copy while a committed compaction is copied
        self.header()  # validate now: a bad header is a bad device

    @staticmethod
    def primary_superblock(device: Device) -> fmt.Superblock:
        """The device's superblock, validated as a primary device's (the log is not read: the
        superblock never moves, the log does while a compaction copies it)."""
        if device.size < fmt.LOG_OFFSET + fmt.SUPERBLOCK.size:
            raise DeviceError(errno.EINVAL, f"{device.path}: {device.size} bytes is too small to hold a famfs superblock")
        try:
            superblock = fmt.Superblock.unpack(device.read(0, fmt.SUPERBLOCK.size))
        except fmt.FormatError as err:
            raise fmt.FormatError(f"{device.path}: {err}") from None
        if superblock.secondary:
            raise fmt.FormatError(f"{device.path}: an added device of file system {superblock.fs_uuid} "
                                  f"(secondary superblock, no log): give its primary device (docs/devices.md)")
        if superblock.dev_size > device.size:
            raise fmt.FormatError(
                f"{device.path}: superblock says the device is {superblock.dev_size} bytes, it has {device.size}")
        return superblock

    @property
    def path(self) -> str:
        return self.device.path

    def current(self) -> FamfsLog:
        """This device's log where readers find it now: self, or the log opened again where the
        compaction record has moved it (from a compaction's commit until its copy is done, the
        staging copy, while the header here is zeroed; docs/reclaim.md). A record caught
        mid-store, or a log that does not open there yet: self, whose reads say what they find."""
        try:
            location = LogLocation.of(read_record(self.device.fresh(*RECORD_SPAN)), self.superblock, self.device.size)
            return self if location == self.location else FamfsLog(self.device)
        except (fmt.FormatError, OSError):
            return self

    def header(self) -> fmt.LogHeader:
        """The current log header, read fresh from the device and validated."""
        raw = self.device.read(self.log_base, fmt.LOG_HEADER.size)
        try:
            return fmt.LogHeader.unpack(raw, self.superblock.log_len)
        except fmt.FormatError as err:
            raise fmt.FormatError(f"{self.device.path}: {err}") from None

    def next_index(self) -> int:
        """The cheap poll: one word of the header, not validated (see header())."""
        offset = self.log_base + fmt.LOG_NEXT_SEQNUM_OFFSET + 8
        return struct.unpack("<Q", self.device.read(offset, 8))[0]

    def slot_offset(self, index: int) -> int:
        return self.log_base + fmt.entry_offset(index)

    def raw_entry(self, index: int) -> bytes:
        return self.device.read(self.slot_offset(index), fmt.ENTRY_SIZE)

    def raw_entries(self, start: int, stop: int) -> Iterator[bytes]:
        """The bytes of slots [start, stop), in order: read from the map RAW_CHUNK slots at a
        time (a replay's hot path: one read per slot took twice as long)."""
        for first in range(start, stop, RAW_CHUNK):
            block = self.device.read(self.slot_offset(first), (min(stop, first + RAW_CHUNK) - first) * fmt.ENTRY_SIZE)
            for offset in range(0, len(block), fmt.ENTRY_SIZE):
                yield block[offset:offset + fmt.ENTRY_SIZE]

    def entry(self, index: int) -> fmt.Entry:
        """Decode slot `index` (the format's checks; the rule book's are famfs.rules.check)."""
        return fmt.decode_entry(self.raw_entry(index), index)

    def slots_of(self, kinds: Container[int], start: int, stop: int) -> Iterator[tuple[int, int, fmt.Entry | None]]:
        """(index, entry type, entry) of each slot in [start, stop) whose type word is one of
        `kinds`: one type word read per slot, only those slots decoded (entry None: it does not
        decode; a play rejected or stalled on it). The pages read are forgotten once done."""
        log_map, head = self.slots_view(start, stop), fmt.ENTRY_HEAD
        try:
            for index in range(start, stop):
                kind = head.unpack_from(log_map, self.slot_offset(index))[1]
                if kind in kinds:
                    try:
                        entry: fmt.Entry | None = self.entry(index)
                    except fmt.EntryError:
                        entry = None
                    yield index, kind, entry
        finally:
            self.forget(start, stop)

    def targets_of(self, kinds: Container[int], start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(index, entry type, target index word) of each slot in [start, stop) whose type word is
        one of `kinds` (DELETE, RMDIR or SETATTR: the layouts that start with a target index),
        read without validating the slot: a filter before a decode. The pages read are forgotten
        once done."""
        log_map, head = self.slots_view(start, stop), fmt.TARGET_HEAD
        try:
            for index in range(start, stop):
                _, kind, target = head.unpack_from(log_map, self.slot_offset(index))
                if kind in kinds:
                    yield index, kind, target
        finally:
            self.forget(start, stop)

    def slots_naming(self, relpath: str, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """(index, entry type) of each slot in [start, stop) with a relpath field (fmt.RELPATH_OFFSETS) whose
        relpath field holds exactly `relpath`, NUL-padded: found by a search of the mapped log in
        C, not a decode per slot. The slots are not validated. The pages searched are forgotten
        once the search is done."""
        # The bare path is the needle: 3x faster to find than the NUL-padded field (slots are
        # full of NULs); the field's padding is checked on each hit.
        needle = relpath.encode()
        field = needle.ljust(fmt.MAX_PATHLEN, b"\0")
        log_map, base, end = self.slots_view(start, stop), self.slot_offset(0), self.slot_offset(stop)
        try:
            found = log_map.find(needle, self.slot_offset(start), end)
            while found >= 0:
                index, within = divmod(found - base, fmt.ENTRY_SIZE)
                kind = fmt.ENTRY_HEAD.unpack_from(log_map, base + index * fmt.ENTRY_SIZE)[1]
                if fmt.RELPATH_OFFSETS.get(kind) == within and log_map[found:found + fmt.MAX_PATHLEN] == field:
                    yield index, kind
                found = log_map.find(needle, found + 1, end)
        finally:
            self.forget(start, stop)

    def slots_view(self, first: int, stop: int) -> mmap.mmap:
        """The device mapping, for reading slots [first, stop) in place (their lines invalidated
        where memory is not coherent: famfs.cacheflush)."""
        return self.device.fresh(self.slot_offset(first), self.slot_offset(stop) - self.slot_offset(first))

    def forget(self, first: int, stop: int) -> None:
        """Unmap the pages holding slots [first, stop) from this process (the data stays on the
        device and in the page cache): reading a 256 MiB log then costs no more resident memory
        than reading an 8 MiB one. A mapping that cannot (devdax) simply keeps them."""
        start = self.slot_offset(first) // mmap.PAGESIZE * mmap.PAGESIZE
        end = self.slot_offset(stop) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            with contextlib.suppress(OSError):
                self.device.map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, fmt.Entry | fmt.EntryError]]:
        """(index, entry or the error that slot raised) for each slot in [start, stop)."""
        end = self.header().next_index if stop is None else stop
        for index, raw in zip(range(start, end), self.raw_entries(start, end)):
            try:
                yield index, fmt.decode_entry(raw, index)
            except fmt.EntryError as err:
                yield index, err

    def append(self, entries: Sequence[fmt.Entry]) -> int:
        """Append entries (the caller holds `device.exclusive()` and has checked the role).

        All or nothing for a full log. Returns the index of the first appended entry.
        """
        header = self.header()
        if header.next_index + len(entries) > header.slots:
            raise LogFullError(self.device.path, header.slots)
        first = header.next_index
        for n, entry in enumerate(entries):
            self.device.write(self.slot_offset(first + n), fmt.encode_entry(entry, first + n))
        done = first + len(entries)
        self.device.write(self.log_base + fmt.LOG_NEXT_SEQNUM_OFFSET, struct.pack("<2Q", done, done))
        return first
