"""New files written through the master's mount, before they are logged (docs/fusefs.md).

A famfs file has a fixed size and extents decided when it is allocated, so the bytes of a file
created through the mount are held here, in memory, until its last close; then they are copied
into device memory and only then is its FILE entry appended (famfs/namespace.py). The total held
at once is bounded (`[mount] staging_mib`): a write past the bound gets EFBIG, and the way to
write a larger file is to give its size first (ftruncate on the new, empty file), which
allocates at once and writes in place.

Only the trio thread touches this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from famfs.namespace import Owner


class StagingFull(Exception):
    """The write would take the staging area past its bound."""


@dataclass(eq=False)
class Staged:
    """One file being written through the mount: created, not logged yet."""

    ino: int
    parent: int
    name: bytes
    relpath: str
    owner: Owner
    data: bytearray = field(default_factory=bytearray)
    opens: int = 0  # open handles
    lookups: int = 0  # the kernel's lookup count while the file is staged
    unlinked: bool = False  # unlinked while open: dropped at the last close, nothing logged
    failed: str | None = None  # a write was refused (EFBIG, ENOSPC): dropped at the last close, never logged short
    gone: bool = False  # logged (its node is in the inode table) or dropped: its handles moved on
    settled: trio.Event = field(default_factory=trio.Event)  # set once it is logged or dropped
    committing: bool = False
    times: tuple[int, int] | None = None  # (atime, mtime) ns a utimes gave it: its node keeps them (Node.times)


class StagingArea:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.by_ino: dict[int, Staged] = {}
        self.by_name: dict[tuple[int, bytes], Staged] = {}

    def add(self, staged: Staged) -> None:
        self.by_ino[staged.ino] = staged
        self.by_name[staged.parent, staged.name] = staged

    def named(self, parent: int, name: bytes) -> Staged | None:
        return self.by_name.get((parent, name))

    def write(self, staged: Staged, offset: int, buf: bytes) -> int:
        end = offset + len(buf)
        grow = max(0, end - len(staged.data))
        if self.held + grow > self.limit:
            raise StagingFull
        if offset > len(staged.data):
            staged.data.extend(bytes(offset - len(staged.data)))
        staged.data[offset:end] = buf
        self.held += grow
        return len(buf)

    def truncate(self, staged: Staged, size: int) -> None:
        grow = size - len(staged.data)
        if grow > 0 and self.held + grow > self.limit:
            raise StagingFull
        if grow > 0:
            staged.data.extend(bytes(grow))
        else:
            del staged.data[size:]
        self.held += grow

    def unname(self, staged: Staged) -> None:
        """Unlinked while open: the name goes now, the bytes at the last close."""
        staged.unlinked = True
        if self.by_name.get((staged.parent, staged.name)) is staged:
            del self.by_name[staged.parent, staged.name]

    def remove(self, staged: Staged) -> None:
        """Out of the staging area (logged or dropped); its bytes are released."""
        self.by_ino.pop(staged.ino, None)
        if self.by_name.get((staged.parent, staged.name)) is staged:
            del self.by_name[staged.parent, staged.name]
        self.held -= len(staged.data)
        staged.data = bytearray()
        staged.gone = True
        staged.settled.set()
