"""statfs figures from the device: capacity and free space from the log's allocation.

The allocation is replayed from the log once; the result is kept until the log's next_index
(one 8-byte read) moves, and then only the entries appended since are played into the kept
namespace (a master's mount under churn asks at every allocation unit a new file grows into: a
whole replay of a full 8 MiB log each time took the master's mount most of a core). A log that is
not the one played plus new entries (compacted: a new epoch; re-made; the last entry played
under another seal) is replayed whole. Runs in a worker thread (it is called through
trio.to_thread).

Before any replay, the agent's published figures are tried (AgentState.total_units, saved with
its cursor once per batch): taken when the cursor is the log's last entry, in this log (epoch, and
the entry's seqnum and CRC, of this file system and image), so they are what a replay would give.
A fresh mount's first statfs (gnulib's fts asks one at the start of every `find` and `du`) then
reads state.json instead of replaying the whole log.

The log is read where it is now (FamfsLog.current): from a compaction's commit until
its copy is done, the staging copy, as every lock-free reader of ours reads it. The mount's own
FamfsLog was opened where the log was then, and its header is zeroed while the copy is made
(famfs/master/compact.py, steps 3-5): read there, the figures were 0 free and 0 held, and the
master's mount answered ENOSPC at once, with nothing to wait for (make churn's allocation failures
below 80 % live, each at a compaction: `statfs: cannot rebuild the allocation`, `bad magic 0x0`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog

from famfs import format as fmt
from famfs import rules
from famfs.compaction import read_record
from famfs.famfslog import FamfsLog
from famfs.shadowdir import StateReader, image_identity

log = structlog.get_logger("famfs-fuse-mount")


@dataclass(slots=True)
class Played:
    """The namespace replayed so far and where it stopped: the log's epoch, the entry count,
    the seal of the last entry played, and how many entries broke the rule book."""

    namespace: rules.Namespace
    epoch: int
    next_index: int
    last_seal: tuple[int, int] | None
    problems: int


@dataclass(frozen=True, slots=True)
class Capacity:
    unit: int  # allocation unit: statfs block size
    total_units: int
    free_units: int
    free_slots: int  # log entries left: each new file or directory takes one
    held_units: int = 0  # units of deleted files not yet reclaimed (docs/reclaim.md): free once they are


class CapacityCache:
    def __init__(self, famfs_log: FamfsLog, shadow_dir: str | None = None) -> None:
        self.famfs_log = famfs_log  # the log where it was last found (_log)
        self.state = None if shadow_dir is None else StateReader(shadow_dir)  # the agent's figures (None: replay only)
        self.lock = threading.Lock()  # statfs calls may overlap in worker threads
        # ((next_index, epoch), figures, from our own replay): the last answer and what it is of
        self.cached: tuple[tuple[int, int], Capacity, bool] | None = None
        self.played: Played | None = None
        self.warned_index: int | None = None
        self.published = 0  # answers taken from the agent's figures (tests: no replay was needed)

    def current(self) -> Capacity:
        """statfs's figures: the agent's published ones when they are of the log as it is now."""
        return self._current(replayed=False)

    def replayed(self) -> Capacity:
        """The figures from this process's own replay of the log: what the master's mount decides
        ENOSPC and its waits for reclaim by (a refusal must rest on the log itself)."""
        return self._current(replayed=True)

    def _log(self) -> FamfsLog:
        """The log where it is now (FamfsLog.current): kept for the next call."""
        self.famfs_log = self.famfs_log.current()
        return self.famfs_log

    def _current(self, replayed: bool) -> Capacity:
        with self.lock:
            famfs_log = self._log()
            next_index = famfs_log.next_index()
            try:  # a compaction's new log counts up through indexes the old one had: the epoch too
                log_at = (next_index, read_record(famfs_log.device.map).epoch)
            except fmt.FormatError:
                log_at = None  # a compaction record caught mid-store: nothing cached is known to fit
            if self.cached is not None and self.cached[0] == log_at and (self.cached[2] or not replayed):
                return self.cached[1]
            capacity = None if replayed or log_at is None else self._published(famfs_log, *log_at)
            from_replay = capacity is None
            if capacity is None:
                capacity = self._compute(famfs_log)
            else:
                self.published += 1
            self.cached = None if log_at is None else (log_at, capacity, from_replay)
            return capacity

    def _published(self, famfs_log: FamfsLog, next_index: int, epoch: int) -> Capacity | None:
        """The agent's figures, if they are of this log's first `next_index` entries in log
        `epoch` (the compaction record's, as just read); else None.
        A kept replay is not dropped: it plays on from where it stopped when these do not fit."""
        if self.state is None or next_index == 0:
            return None
        state = self.state.read()
        sb = famfs_log.superblock
        if (state is None or state.fs_uuid != str(sb.fs_uuid) or state.applied_index != next_index - 1
                or not all(type(figure) is int and figure >= 0
                           for figure in (state.total_units, state.free_units, state.held_units))):
            return None
        try:
            image = image_identity(famfs_log.device.fd)
            if image is not None and None not in (state.device_dev, state.device_ino) and \
                    image != (state.device_dev, state.device_ino):
                return None
            if state.log_epoch != epoch or \
                    fmt.entry_seal(famfs_log.raw_entry(state.applied_index)) != (state.applied_seqnum, state.applied_crc):
                return None
            header = famfs_log.header()
        except (fmt.FormatError, OSError):
            return None
        if header.next_index != next_index:
            return None  # appended to since: the next call sees the new count
        assert state.total_units is not None and state.free_units is not None and state.held_units is not None
        return Capacity(unit=sb.alloc_unit, total_units=state.total_units, free_units=state.free_units,
                        free_slots=max(0, header.slots - header.next_index), held_units=state.held_units)

    def _compute(self, famfs_log: FamfsLog) -> Capacity:
        sb = famfs_log.superblock
        try:
            header = famfs_log.header()
            played = self._play(famfs_log, header.next_index)
        except (fmt.FormatError, OSError) as err:
            # A log header that does not add up: report no free space rather than a guess.
            self.played = None
            self._warn("statfs: cannot rebuild the allocation, reporting 0 free", error=str(err))
            return Capacity(unit=sb.alloc_unit, total_units=sb.dev_size // sb.alloc_unit, free_units=0, free_slots=0)
        if played.problems:
            # The follower leaves such entries out, and so does the free-space count.
            self._warn("statfs: entries that break the rule book are not counted", entries=played.problems)
        namespace = played.namespace
        units = namespace.units
        held = sum(len(units.span(extent)) for entry in namespace.deleted.values() for extent in entry.all_extents())
        return Capacity(unit=sb.alloc_unit, total_units=units.total_units, free_units=units.free_units,
                        free_slots=max(0, header.slots - header.next_index), held_units=held)

    def _play(self, famfs_log: FamfsLog, count: int) -> Played:
        """The namespace of the log's first `count` entries: the kept one played on if the log
        extends it, else a whole replay."""
        epoch = read_record(famfs_log.device.map).epoch
        played, self.played = self.played, None  # kept again only once this play completed
        if played is None or played.epoch != epoch or played.next_index > count or (
                played.last_seal is not None
                and fmt.entry_seal(famfs_log.raw_entry(played.next_index - 1)) != played.last_seal):
            played = Played(rules.Namespace.empty(famfs_log.superblock), epoch, 0, None, 0)
        problems: list[rules.Problem] = []
        rules.replay(famfs_log, problems.append, namespace=played.namespace, start=played.next_index, stop=count)
        played.problems += len(problems)
        played.next_index = count
        played.last_seal = fmt.entry_seal(famfs_log.raw_entry(count - 1)) if count else None
        self.played = played
        return played

    def _warn(self, event: str, **details: object) -> None:
        """Once per state of the log: statfs is called often."""
        next_index = self.famfs_log.next_index()
        if self.warned_index != next_index:
            self.warned_index = next_index
            log.warning(event, device=self.famfs_log.path, **details)
