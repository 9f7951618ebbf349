"""Log compaction: the log replaced by one holding only what is live (docs/reclaim.md).

The compacted log keeps, in log order: every live directory's MKDIR, every live file's FILE,
every accepted ADD_DAXDEV, a HOLD for each deleted file whose units are not yet reclaimed, and
the FENCE of each host incarnation still in the host table (a fenced host that wakes after the
compaction must still learn it was fenced). DELETE, RMDIR, RECLAIM and the rest are history.

Upstream's readers map the log at the fixed 2 MiB offset, so the new log must end up there,
and a kill -9 at any instant must leave a device every reader reads as the old log or the new
one. The steps, under the device lock:

1. `staged`: the new log (header and slots) is written whole into free data units.
2. `committed`: the compaction record says COPYING, with the staging copy's place, size and CRC.
   This one store is the commit: from here on our readers read the staging copy.
3. `header_cleared`: the log header at 2 MiB is zeroed: upstream's logplay and mapped fsck refuse
   the device (bad magic), its raw fsck sees no entries, until step 5.
4. `copied`: the staged slots are written over the log, and the old slots past them zeroed.
5. `header_written`: the new header, whole.
6. `done`: the record says DONE; the staging units are free again (they were never logged).

A crash before step 2 leaves the old log (and unlogged bytes in free units); a crash after it
leaves a record every master session finishes first (`roll_forward`), and until then our
readers read the staging copy.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass

from famfs import format as fmt
from famfs import hosts, logsetup
from famfs.compaction import RECORD_SPAN, CompactionRecord, CompactionState, read_record
from famfs.famfslog import FamfsLog
from famfs.rules import Namespace

log = logsetup.get_logger("famfsctl")

STEPS = ("staged", "committed", "header_cleared", "copied", "header_written", "done")
ZERO_CHUNK = 1 << 20


class CompactionError(OSError):
    """The compacted log would not fit, or no free units hold its staging copy (ENOSPC)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


@dataclass(frozen=True, slots=True)
class Compacted:
    epoch: int
    entries_before: int
    entries_after: int
    held: int  # deleted files carried as HOLD entries
    seconds: float


def compacted_entries(famfs_log: FamfsLog, namespace: Namespace) -> tuple[list[fmt.Entry], int]:
    """What the compacted log holds, in log order, and how many of them are HOLDs."""
    table = {(found.system_uuid, found.incarnation) for found in hosts.read_table(famfs_log.device.fresh(*hosts.TABLE_SPAN))
             if isinstance(found, hosts.HostRecord)}
    kept: list[fmt.Entry] = []
    held = 0
    for index, entry in famfs_log.entries():
        match entry:
            case fmt.MkdirEntry() if namespace.dirs.get(entry.relpath) == index:
                kept.append(namespace.dir_attrs.get(entry.relpath, entry))  # as SETATTRs left it
            case fmt.FileEntry() if namespace.files.get(entry.relpath, (None,))[0] == index:
                kept.append(namespace.files[entry.relpath][1])  # as SETATTRs left it
            case fmt.FileEntry() if index in namespace.deleted:
                kept.append(fmt.HoldEntry(entry))
                held += 1
            case fmt.HoldEntry() if index in namespace.deleted:
                kept.append(entry)
                held += 1
            case fmt.AddDaxdevEntry() if entry.dev_index < len(namespace.daxdevs) and \
                    namespace.daxdevs[entry.dev_index] == entry.dev_uuid:
                kept.append(entry)
            case fmt.FenceEntry() if (entry.system_uuid, entry.incarnation) in table:
                kept.append(entry)
    return kept, held


def log_image(entries: list[fmt.Entry], log_len: int) -> bytes:
    """A whole log (header, then slots with seqnum == index) holding `entries`."""
    header = fmt.LogHeader.fresh(log_len)
    if len(entries) > header.slots:
        raise CompactionError(f"the live namespace needs {len(entries)} log entries; the log holds {header.slots}")
    count = len(entries)
    head = fmt.LogHeader(log_len, header.last_index, count, count).pack()
    return head + b"".join(fmt.encode_entry(entry, index) for index, entry in enumerate(entries))


def compact(famfs_log: FamfsLog, namespace: Namespace, step: Callable[[str], None] = lambda _: None) -> Compacted:
    """Replace the log by its compacted form (the caller holds the device lock and a namespace
    replayed under it). `step` is called after each step, by name (tests stop there: a kill -9)."""
    started = time.monotonic()
    device, superblock = famfs_log.device, famfs_log.superblock
    before = famfs_log.header().next_index
    entries, held = compacted_entries(famfs_log, namespace)
    image = log_image(entries, superblock.log_len)
    units = -(-len(image) // superblock.alloc_unit)
    first = namespace.units.find_free(units)
    if first is None:
        raise CompactionError(f"{famfs_log.path}: no free run of {units} allocation units for the staging copy "
                              f"of the compacted log")
    staging = first * superblock.alloc_unit
    device.write(staging, image)
    step("staged")
    epoch = famfs_log.location.epoch + 1
    record = CompactionRecord(CompactionState.COPYING, epoch, staging, len(image), len(entries), fmt.crc32(image),
                              superblock.fs_uuid)
    device.write(fmt.COMPACTION_RECORD_OFFSET, record.pack())
    step("committed")
    _copy_over_log(famfs_log, record, image, before, step)
    log.info("log_compacted", device=famfs_log.path, epoch=epoch, entries_before=before, entries_after=len(entries),
             held=held, seconds=round(time.monotonic() - started, 4))
    return Compacted(epoch, before, len(entries), held, time.monotonic() - started)


def _copy_over_log(famfs_log: FamfsLog, record: CompactionRecord, image: bytes, old_count: int,
                   step: Callable[[str], None]) -> None:
    """Steps 3-6: the staging copy over the log at the superblock's offset. Idempotent: a master
    session that finds the record COPYING runs it again from the start."""
    device = famfs_log.device
    base = famfs_log.superblock.log_offset
    device.write(base, bytes(fmt.LOG_HEADER.size))
    step("header_cleared")
    device.write(base + fmt.LOG_HEADER.size, image[fmt.LOG_HEADER.size:])
    stale_from = base + fmt.entry_offset(record.staged_entries)
    stale_to = base + fmt.entry_offset(max(old_count, record.staged_entries))
    for offset in range(stale_from, stale_to, ZERO_CHUNK):
        device.write(offset, bytes(min(ZERO_CHUNK, stale_to - offset)))
    step("copied")
    device.write(base, image[:fmt.LOG_HEADER.size])
    step("header_written")
    device.write(fmt.COMPACTION_RECORD_OFFSET, CompactionRecord(CompactionState.DONE, record.epoch, fs_uuid=record.fs_uuid).pack())
    step("done")


def roll_forward(famfs_log: FamfsLog) -> bool:
    """Finish a committed compaction a crash interrupted (the caller holds the device lock and has
    the device open for writing). True if there was one: the caller opens the log again."""
    record = read_record(famfs_log.device.fresh(*RECORD_SPAN))
    if record.state != CompactionState.COPYING:
        return False
    image = famfs_log.device.read(record.staging_offset, record.staged_bytes)
    if fmt.crc32(image) != record.staged_crc:
        raise fmt.FormatError(f"{famfs_log.path}: the committed compaction's staging copy at {record.staging_offset:#x} "
                              f"has a bad CRC: run famfsctl fsck")
    # The old log's length is unknown now (its header may be cleared): zero every slot past the new ones.
    _copy_over_log(famfs_log, record, image, fmt.log_capacity(famfs_log.superblock.log_len), lambda _: None)
    log.warning("compaction_finished", device=famfs_log.path, epoch=record.epoch,
                note="a compaction interrupted after its commit was completed from its staging copy")
    return True
