"""Symbolic links made through the master's mount: served by this mount, never logged.

famfs has no symbolic links: no log entry holds one and upstream's shadow format has none. So that
`cp -a`, `tar -x` and `rsync -a` of a tree holding links finish without one error per link, the
master's mount accepts symlink(2): the link is this mount's (lookup, readlink, listings, lchown,
times) until it is removed or the mount stops, and other hosts never see it. The mount says so
once in its log, at the first link (docs/fusefs.md, "Writing the namespace on the master").

Only the trio thread touches this.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class Link:
    ino: int
    parent: int
    name: bytes
    target: bytes
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


class Links:
    def __init__(self) -> None:
        self.by_ino: dict[int, Link] = {}
        self.by_name: dict[tuple[int, bytes], Link] = {}
        self.explained = False  # the first link is said in the log, then no other

    def add(self, link: Link) -> None:
        self.by_ino[link.ino] = link
        self.by_name[link.parent, link.name] = link

    def named(self, parent: int, name: bytes) -> Link | None:
        return self.by_name.get((parent, name))

    def remove(self, link: Link) -> None:
        self.by_ino.pop(link.ino, None)
        self.by_name.pop((link.parent, link.name), None)

    def in_dir(self, parent: int) -> list[Link]:
        return [link for (where, _), link in self.by_name.items() if where == parent]
