"""The files this host's tree has deleted and the log has not yet reclaimed, and their pins
(docs/reclaim.md, "Pins"): what the agent's record publishes as its pin floor.

The list is derived from the log up to the cursor, never saved: a DELETE applied adds its file, a
RECLAIM removes the files it names. On a resumed start it is rebuilt by one pass over the log's
slots below the cursor (a type word per slot; only DELETE and RECLAIM slots are decoded), so it
always agrees with the cursor, whatever a kill left behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from famfs import format as fmt
from famfs import pins
from famfs.famfslog import FamfsLog
from famfs.hosts import NO_PIN


@dataclass(frozen=True, slots=True)
class Deleted:
    file_index: int
    delete_index: int
    relpath: str
    pin: str  # its pin file's name (famfs.pins.pin_name)


class DeletedFiles:
    def __init__(self) -> None:
        self.files: dict[int, Deleted] = {}  # FILE index -> the deleted file

    def clear(self) -> None:
        self.files.clear()

    def deleted(self, file_index: int, delete_index: int, relpath: str) -> None:
        self.files[file_index] = Deleted(file_index, delete_index, relpath, pins.pin_name(relpath))

    def deleted_by(self, file_index: int) -> int | None:
        """The rule book's question (rules.Model.deleted_by): the DELETE that deleted this file, if
        it is deleted and not yet reclaimed here."""
        found = self.files.get(file_index)
        return None if found is None else found.delete_index

    def reclaimed(self, entry: fmt.ReclaimEntry) -> list[Deleted]:
        return [self.files.pop(file_index) for file_index, _ in entry.targets]

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
                    self.files.pop(file_index, None)

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
