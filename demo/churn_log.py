"""Watching a churning device's log from outside (demo/forever.py): reclaim latency (a DELETE
seen in the log -> the RECLAIM that names its file seen), entries appended, free slots, and
log replacements by compaction (the epoch of the compaction record).

Read-only and lock-free, as every reader of the log is; a compaction that moves the log under
a read makes that read's entries unusable, so each poll checks the log's location again after
reading and starts over from the new log if it moved. Files deleted before a compaction are
carried into the new log as HOLD entries: they are recognised by their extents (a deleted,
unreclaimed file's units are its own), so their latency still counts from their DELETE.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from famfs import format as fmt
from famfs.compaction import LogLocation, read_record
from famfs.device import Device
from famfs.famfslog import FamfsLog

POLL_S = 0.02


@dataclass
class LogFigures:
    entries: int = 0  # appended since the watch began, over every epoch
    deletes: int = 0
    reclaimed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    epochs: list[tuple[float, int, int]] = field(default_factory=list)  # (when, epoch, entries in the new log)
    slots: int = 0
    next_index: int = 0
    read_errors: int = 0

    @property
    def free_slots(self) -> int:
        return self.slots - self.next_index


class LogWatch(threading.Thread):
    def __init__(self, image: str) -> None:
        super().__init__(name="log-watch", daemon=True)
        self.device = Device(image)
        self.log = FamfsLog(self.device)
        self.figures = LogFigures(slots=self.log.header().slots)
        self.played = self.log.header().next_index
        self.figures.next_index = self.played
        self.pending: dict[int, tuple[float, tuple[fmt.Extent, ...]]] = {}  # FILE/HOLD index -> (DELETE seen, extents)
        self.files: dict[int, tuple[fmt.Extent, ...]] = {}  # FILE index -> extents, of this log
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            try:
                self.poll()
            except (OSError, fmt.FormatError, ValueError):
                self.figures.read_errors += 1  # a log caught mid-compaction: read again next poll

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(5)
        self.device.close()

    def location(self) -> LogLocation:
        return LogLocation.of(read_record(self.device.map), self.log.superblock, self.device.size)

    def poll(self) -> None:
        if self.location() != self.log.location:
            self.moved()
            return
        count = self.log.next_index()
        if count <= self.played:
            return
        entries = list(self.log.entries(self.played, count))
        if self.location() != self.log.location:
            self.moved()
            return
        now = time.monotonic()
        with self.lock:
            for index, entry in entries:
                self.note(index, entry, now)
            self.figures.entries += count - self.played
            self.played = self.figures.next_index = count

    def note(self, index: int, entry: fmt.Entry | fmt.EntryError, now: float) -> None:
        match entry:
            case fmt.FileEntry():
                self.files[index] = entry.all_extents()
            case fmt.DeleteEntry():
                self.figures.deletes += 1
                self.pending[entry.target_index] = (now, self.files.pop(entry.target_index, ()))
            case fmt.ReclaimEntry():
                for file_index, _ in entry.targets:
                    seen = self.pending.pop(file_index, None)
                    self.figures.reclaimed += 1
                    if seen is not None:
                        self.figures.latencies_s.append(now - seen[0])

    def moved(self) -> None:
        """A compaction replaced the log: its indexes are new. Deleted files it holds keep
        the time their DELETE was seen (matched by extents); the rest is read afresh."""
        log = FamfsLog(self.device)
        count = log.header().next_index
        by_extents = {extents: seen for seen, extents in self.pending.values() if extents}
        pending: dict[int, tuple[float, tuple[fmt.Extent, ...]]] = {}
        files: dict[int, tuple[fmt.Extent, ...]] = {}
        now = time.monotonic()
        for index, entry in log.entries(0, count):
            if isinstance(entry, fmt.HoldEntry):
                extents = entry.file.all_extents()
                pending[index] = (by_extents.get(extents, now), extents)
            elif isinstance(entry, fmt.FileEntry):
                files[index] = entry.all_extents()
        if self.location() != log.location:
            return  # moved again meanwhile: the next poll starts over
        with self.lock:
            self.log, self.pending, self.files, self.played = log, pending, files, count
            self.figures.next_index = count
            if not self.figures.epochs or self.figures.epochs[-1][1] != log.location.epoch:
                self.figures.epochs.append((now, log.location.epoch, count))
