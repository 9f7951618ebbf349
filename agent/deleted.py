"""The files this host's tree has deleted and the log has not yet reclaimed, and their pins
(docs/reclaim.md, "Pins"): what the agent's record publishes as its pin floor.

The list is derived from the log up to the cursor, never saved: a DELETE applied adds its file, a
RECLAIM removes the files it names. On a resumed start it is rebuilt by one pass over the log's
slots below the cursor (a type word per slot; only DELETE and RECLAIM slots are decoded), so it
always agrees with the cursor, whatever a kill left behind.

The units the list holds (what statfs reports as held, published in state.json) are kept as a
running sum: each file's counted once, from the FILE entry its DELETE's check decoded (or its
HOLD), taken off at its RECLAIM; only a rebuilt list's files are read from the log, at the next
save. A batch costs its own DELETEs and RECLAIMs, never the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass

from famfs import format as fmt
from famfs import pins
from famfs.famfslog import FamfsLog
from famfs.hosts import NO_PIN
from famfs.rules import Units


@dataclass(frozen=True, slots=True)
class Deleted:
    file_index: int
    delete_index: int
    relpath: str
    pin: str  # its pin file's name (famfs.pins.pin_name)


class DeletedFiles:
    def __init__(self) -> None:
        self.files: dict[int, Deleted] = {}  # FILE index -> the deleted file
        self.counted: dict[int, int] = {}  # FILE index -> its units, for the files of `files` counted
        self.counted_units = 0  # the sum of `counted`
        self.uncounted: list[int] = []  # FILE indexes deleted since the last count

    def clear(self) -> None:
        self.files.clear()
        self.counted.clear()
        self.counted_units = 0
        self.uncounted.clear()

    def deleted(self, file_index: int, delete_index: int, relpath: str, units: int | None = None) -> None:
        """`units`: the file's, if the caller has its entry at hand (else counted from the log at
        the next held_units)."""
        self.files[file_index] = Deleted(file_index, delete_index, relpath, pins.pin_name(relpath))
        if units is None:
            self.uncounted.append(file_index)
        elif file_index not in self.counted:
            self.counted[file_index] = units
            self.counted_units += units

    def deleted_by(self, file_index: int) -> int | None:
        """The rule book's question (rules.Model.deleted_by): the DELETE that deleted this file, if
        it is deleted and not yet reclaimed here."""
        found = self.files.get(file_index)
        return None if found is None else found.delete_index

    def reclaimed(self, entry: fmt.ReclaimEntry) -> list[Deleted]:
        return [self._drop(file_index) for file_index, _ in entry.targets]

    def _drop(self, file_index: int) -> Deleted:
        self.counted_units -= self.counted.pop(file_index, 0)
        return self.files.pop(file_index)

    def held_units(self, famfs_log: FamfsLog, units: Units) -> int | None:
        """The allocation units the deleted files hold (as fusefs/capacity.py counts them from a
        replay: each extent's whole units on its device). Files not counted yet are, from their
        FILE (or HOLD) entry. None if one cannot be (its slot is no file: a rebuilt list took a
        DELETE the play rejected): then no figure is published, and the mount replays the log."""
        left: list[int] = []
        for file_index in self.uncounted:
            if file_index not in self.files or file_index in self.counted:
                continue  # reclaimed since, or counted already
            count = self._units_of(famfs_log, units, file_index)
            if count is None:
                left.append(file_index)
                continue
            self.counted[file_index] = count
            self.counted_units += count
        self.uncounted = left
        return None if left else self.counted_units

    @staticmethod
    def _units_of(famfs_log: FamfsLog, units: Units, file_index: int) -> int | None:
        try:
            entry = famfs_log.entry(file_index)
            file = entry.file if isinstance(entry, fmt.HoldEntry) else entry
            if not isinstance(file, fmt.FileEntry):
                return None
            return units_of(units, file)
        except (fmt.EntryError, fmt.FormatError, OSError):
            return None

    def rebuild(self, famfs_log: FamfsLog, stop: int) -> None:
        """From the log's slots [0, stop): one type word per slot, DELETE, HOLD and RECLAIM decoded.
        A slot that does not decode is skipped (the play rejected or stalled on it too)."""
        self.clear()
        for index, _, entry in famfs_log.slots_of((fmt.EntryType.DELETE, fmt.EntryType.RECLAIM, fmt.EntryType.HOLD),
                                                  0, stop):
            if isinstance(entry, fmt.DeleteEntry):
                self.deleted(entry.target_index, index, entry.relpath)
            elif isinstance(entry, fmt.HoldEntry):  # carried by a compaction: deleted by itself
                self.deleted(index, index, entry.file.relpath)
            elif isinstance(entry, fmt.ReclaimEntry):
                for file_index, _ in entry.targets:
                    if file_index in self.files:
                        self._drop(file_index)

    def pin_floor(self, pins_directory: str) -> int:
        """The smallest FILE index of a deleted, not reclaimed file whose path is pinned now
        (NO_PIN if none). Only paths with a pin file are tested: one listing, then a flock test
        each. Call it after the DELETEs are applied (the YAMLs unlinked)."""
        if not self.files:
            return NO_PIN
        on_disk = pins.present(pins_directory)
        candidates = {found.pin for found in self.files.values() if found.pin in on_disk}
        if not candidates:
            return NO_PIN
        held = pins.pinned(pins_directory, candidates)
        return min((found.file_index for found in self.files.values() if found.pin in held), default=NO_PIN)


def units_of(units: Units, file: fmt.FileEntry) -> int:
    """The allocation units `file` holds, as fusefs/capacity.py counts a deleted file's."""
    return sum(len(units.span(extent)) for extent in file.all_extents())
