"""The agent's side of the directory records (famfs.listing, docs/security.md "Listings"): the
files it writes and removes, gathered while a batch is applied and appended at the batch's end,
one write per directory touched; a record grown to twice what it holds is rewritten whole.

Crash safety comes from what the mount checks, not from the order of writes: a record that lags
its directory (a kill before the batch's append) lacks names, which the mount then lists file by
file; one cut short by a kill in the middle of an append is read up to the cut, and repaired
(truncated there) by the next agent the first time it appends to it; one naming an entry that
is no longer a live file's is refused by the owner map.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from famfs import listing
from famfs.shadowdir import LISTINGS_DIR

FLUSH_AT = 4096  # names held before they are written anyway (a first play defers its cursor to the end)
COMPACT_MIN = 64 << 10  # a record is not rewritten while smaller than this


class ListingWriter:
    def __init__(self, agent_dir: Path) -> None:
        self.path = agent_dir / LISTINGS_DIR
        self._dir = os.fsencode(self.path)
        self.pending: dict[bytes, dict[bytes, int | None]] = {}  # directory -> name -> entry (None: removed)
        self._held = 0
        # Record file -> the size past which it is read again (repaired when first met, compacted later).
        self._limits: dict[str, int] = {}

    def open(self) -> None:
        self.path.mkdir(mode=0o700, exist_ok=True)

    def reset(self) -> None:
        """No record at all (a rebuild: every file is written, and so named, again)."""
        self.pending.clear()
        self._held = 0
        self._limits.clear()
        shutil.rmtree(self.path, ignore_errors=True)
        self.open()

    def added(self, relpath: str, index: int) -> None:
        """The shadow file at `relpath` is (about to be) the one of log entry `index`."""
        self._note(relpath, index)

    def removed(self, relpath: str) -> None:
        self._note(relpath, None)

    def _note(self, relpath: str, index: int | None) -> None:
        directory, _, name = os.fsencode(relpath).rpartition(b"/")
        self.pending.setdefault(directory, {})[name] = index
        self._held += 1
        if self._held >= FLUSH_AT:
            self.flush()

    def dir_removed(self, relpath: str) -> None:
        directory = os.fsencode(relpath)
        self.pending.pop(directory, None)
        key = listing.record_name(directory)
        self._limits.pop(key, None)
        try:
            os.unlink(os.path.join(self.path, key))
        except FileNotFoundError:
            pass

    def flush(self) -> None:
        """Append what the batch changed, one write per directory."""
        for directory, changes in self.pending.items():
            key = listing.record_name(directory)
            limit = self._limits.get(key)
            if limit is None:
                limit = self._limits[key] = self._repair(key)
            if listing.append(self._dir, directory, changes.items()) > limit:
                self._limits[key] = max(2 * self._compact(key), COMPACT_MIN)
        self.pending.clear()
        self._held = 0

    def _repair(self, key: str) -> int:
        """A record met for the first time by this agent, cut back to its last whole record (a
        kill in the middle of an append); its size limit."""
        path = os.path.join(self.path, key)
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            return COMPACT_MIN
        whole = listing.decode(raw)[1]
        if whole < len(raw):
            os.truncate(path, whole)
        return max(2 * whole, COMPACT_MIN)

    def _compact(self, key: str) -> int:
        """Rewrite record `key` with only its live names (a new file renamed over it); its size."""
        path = os.path.join(self.path, key)
        names = listing.decode(Path(path).read_bytes())[0]
        data = listing.encode_all(names.items())
        temp = f"{path}.new"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temp, path)
        return len(data)
