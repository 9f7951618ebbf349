"""What the master's mount asks of the log's writer: the one interface between fusefs and famfs.master.

fusefs may not import the master's tools (docs/architecture.md), yet on the master host its mount
turns mkdir, create + write + close, fallocate, unlink, rmdir, chmod and chown into log entries. So the mount
is handed an object with this shape by its composition root (famfs_fuse_mount/), which builds it
from the master's writing Session (famfs/master/mountwriter.py): the device lock and the rule
book are the ones famfsctl uses.

Every method blocks (device lock, device writes): callers run them in a worker thread. A refusal
is a NamespaceError whose errno is the answer to the file-system request and whose message is
the one line the mount logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from famfs import format as fmt


class NamespaceError(OSError):
    """A refused namespace change: `errno` answers the request, the message says why."""


@dataclass(frozen=True, slots=True)
class Owner:
    mode: int  # permission bits only (the entry type says file or directory)
    uid: int
    gid: int


class NamespaceWriter(Protocol):
    """The master's log writer as the mount uses it. Each call is one locked session step:
    checked by the rule book, data in place before its entry, the entry appended, or nothing."""

    def mkdir(self, relpath: str, owner: Owner) -> int:
        """Log a MKDIR; the new entry's index."""

    def create(self, relpath: str, size: int, owner: Owner, data: Iterable[bytes] | None) -> tuple[int, fmt.FileEntry]:
        """Allocate `size` bytes, lay `data` (exactly `size` bytes, in order) onto them, then
        log the FILE entry; its index and the entry. Without `data` (the fast path) the entry is
        logged at once and the bytes are the caller's to write in place, as after famfsctl creat."""

    def create_group(self, files: Sequence[tuple[str, Owner, bytes]]) -> list[int | NamespaceError]:
        """Log new files whose bytes are at hand, (relpath, owner, bytes) each, in one locked
        step: every file allocated and its bytes laid in place, then all the entries appended at
        once. Per file, in order: its index, or the refusal of that file alone. A failure of the
        step itself (the device, the lock) raises NamespaceError: then none of them is logged."""

    def check_new(self, relpath: str, owner: Owner) -> None:
        """Raise NamespaceError if a new file or directory could not have this name now."""

    def precheck(self, relpath: str, owner: Owner) -> bool:
        """check_new from memory, never blocking (callable on the mount's trio thread): True if
        the namespace the last call left takes the name (famfsctl's changes since are not seen:
        the entry's own check, when it is logged, decides). False: ask check_new (no such
        namespace yet, the last call failed, or the memory says no: the lock confirms a no)."""

    def unlink(self, relpath: str) -> int:
        """Log a DELETE of the live file at relpath (famfsctl rm's rule)."""

    def rmdir(self, relpath: str) -> int:
        """Log an RMDIR of the live, empty directory at relpath."""

    def setattr(self, relpath: str, owner: Owner) -> int | None:
        """Log a SETATTR giving the live file or directory at relpath this mode and owner; its
        index, or None when it has them already (nothing logged)."""
