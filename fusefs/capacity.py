"""statfs figures from the device: capacity and free space from the log's allocation.

Rebuilding the allocation reads every entry, so the result is kept until the log's next_index
(one 8-byte read) moves. Runs in a worker thread (it is called through trio.to_thread).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog

from famfs import format as fmt
from famfs import rules
from famfs.famfslog import FamfsLog

log = structlog.get_logger("famfs-fuse-mount")


@dataclass(frozen=True, slots=True)
class Capacity:
    unit: int  # allocation unit: statfs block size
    total_units: int
    free_units: int
    free_slots: int  # log entries left: each new file or directory takes one
    held_units: int = 0  # units of deleted files not yet reclaimed (docs/reclaim.md): free once they are


class CapacityCache:
    def __init__(self, famfs_log: FamfsLog) -> None:
        self.famfs_log = famfs_log
        self.lock = threading.Lock()  # statfs calls may overlap in worker threads
        self.cached: tuple[int, Capacity] | None = None
        self.warned_index: int | None = None

    def current(self) -> Capacity:
        with self.lock:
            next_index = self.famfs_log.next_index()
            if self.cached is not None and self.cached[0] == next_index:
                return self.cached[1]
            capacity = self._compute()
            self.cached = (next_index, capacity)
            return capacity

    def _compute(self) -> Capacity:
        sb = self.famfs_log.superblock
        problems: list[rules.Problem] = []
        try:
            header = self.famfs_log.header()
            namespace = rules.replay(self.famfs_log, problems.append)
            units = namespace.units
        except (fmt.FormatError, OSError) as err:
            # A log header that does not add up: report no free space rather than a guess.
            self._warn("statfs: cannot rebuild the allocation, reporting 0 free", error=str(err))
            return Capacity(unit=sb.alloc_unit, total_units=sb.dev_size // sb.alloc_unit, free_units=0, free_slots=0)
        if problems:
            # The follower leaves such entries out, and so does the free-space count.
            self._warn("statfs: entries that break the rule book are not counted", entries=len(problems),
                       first_index=problems[0].index)
        held = sum(len(units.span(extent)) for entry in namespace.deleted.values() for extent in entry.all_extents())
        return Capacity(unit=sb.alloc_unit, total_units=units.total_units, free_units=units.free_units,
                        free_slots=max(0, header.slots - header.next_index), held_units=held)

    def _warn(self, event: str, **details: object) -> None:
        """Once per state of the log: statfs is called often."""
        next_index = self.famfs_log.next_index()
        if self.warned_index != next_index:
            self.warned_index = next_index
            log.warning(event, device=self.famfs_log.path, **details)
