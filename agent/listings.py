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
KEEP_OPEN = 64  # records held open for appending (the most recently used)


class ListingWriter:
    def __init__(self, agent_dir: Path) -> None:
        self.path = agent_dir / LISTINGS_DIR
        self.pending: dict[bytes, dict[bytes, int | None]] = {}  # directory -> name -> entry (None: removed)
        self._held = 0
        # Record file -> the size past which it is read again (repaired when first met, compacted later).
        self._limits: dict[str, int] = {}
        # Record file -> (descriptor open for appending, its size): a following agent appends a few
        # names a poll, to the same few directories: one write each, no open, stat or close.
        self._open: dict[str, tuple[int, int]] = {}

    def open(self) -> None:
        self.path.mkdir(mode=0o700, exist_ok=True)

    def close(self) -> None:
        for fd, _ in self._open.values():
            os.close(fd)
        self._open.clear()

    def reset(self) -> None:
        """No record at all (a rebuild: every file is written, and so named, again)."""
        self.close()
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
        self._let_go(key)
        try:
            os.unlink(self.path / key)
        except FileNotFoundError:
            pass

    def flush(self) -> None:
        """Append what the batch changed, one write per directory."""
        for directory, changes in self.pending.items():
            key = listing.record_name(directory)
            fd, size = self._open.pop(key, None) or self._open_record(key)
            data = listing.encode_all(changes.items())
            os.write(fd, data)
            size += len(data)
            if size > self._limits[key]:
                os.close(fd)
                size = self._compact(key)
                self._limits[key] = max(2 * size, COMPACT_MIN)
                fd, size = self._open_record(key)
            self._open[key] = (fd, size)  # the most recently used last
            if len(self._open) > KEEP_OPEN:
                self._let_go(next(iter(self._open)))
        self.pending.clear()
        self._held = 0

    def _let_go(self, key: str) -> None:
        held = self._open.pop(key, None)
        if held is not None:
            os.close(held[0])

    def _open_record(self, key: str) -> tuple[int, int]:
        """Record `key` open for appending, and its size. Met for the first time by this agent,
        it is cut back to its last whole record (a kill in the middle of an append)."""
        fd = os.open(self.path / key, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        size = os.fstat(fd).st_size
        if key not in self._limits:
            whole = listing.decode(os.pread(fd, size, 0))[1] if size else 0
            if whole < size:
                os.ftruncate(fd, whole)
                size = whole
            self._limits[key] = max(2 * size, COMPACT_MIN)
        return fd, size

    def _compact(self, key: str) -> int:
        """Rewrite record `key` with only its live names (a new file renamed over it); its size."""
        path = self.path / key
        names = listing.decode(path.read_bytes())[0]
        data = listing.encode_all(names.items())
        temp = self.path / f"{key}.new"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temp, path)
        return len(data)
