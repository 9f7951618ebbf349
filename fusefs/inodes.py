"""The inode table: what the mount serves, keyed by inode number and by (parent, name).

Only the trio thread touches it. It learns the shadow tree through `refresh(relpath)` (one
path re-checked against the disk) and reports what the kernel must forget as `Notice`s, which
the caller sends from worker threads after the table is updated (never under a lock: there is
none). Inode numbers are handed out per path and stay while the path exists, so a re-mapped file
keeps its inode and an open handle follows the new extents. A deleted node the kernel still
knows (lookup count > 0) stays reachable by number until `forget`.

File YAML is parsed lazily, on the first lookup or listing that needs its attributes: a mount
of half a million files starts in the time it takes to stat them.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import pyfuse3
import structlog

from famfs import format as fmt
from famfs import rules
from famfs.rules import Geometry
from fusefs import shadow_reader
from fusefs.shadow_reader import Signature

log = structlog.get_logger("famfs-fuse-mount")

ROOT_INODE = pyfuse3.ROOT_INODE


class NoticeKind(enum.Enum):
    NEW_NAME = "new_name"  # drop a (negative) dentry: invalidate_entry(parent, name)
    DELETED = "deleted"  # invalidate_entry(parent, name, deleted=ino)
    ATTRS = "attrs"  # invalidate_inode(ino, attr_only=True)
    INODE = "inode"  # invalidate_inode(ino): attributes and cached data


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    ino: int
    parent: int = 0
    name: bytes = b""


class Node:
    __slots__ = ("ino", "parent", "name", "relpath", "sig", "entry", "error", "conflict", "children", "lookups",
                 "opens", "present", "data_stale")

    def __init__(self, ino: int, parent: int, name: bytes, relpath: bytes, sig: Signature) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.relpath = relpath
        self.sig = sig
        self.entry: fmt.FileEntry | None = None  # files: parsed on first use
        self.error: str | None = None  # files: why the YAML was refused (served as EIO)
        self.conflict: str | None = None  # files: its space is another live file's (EIO; looked at again)
        self.children: dict[bytes, int] | None = {} if sig.is_dir else None
        self.lookups = 0  # the kernel's lookup count
        self.opens = 0
        self.present = True  # False once the shadow path is gone
        self.data_stale = False  # re-mapped while open: drop cached data at the last close

    @property
    def is_dir(self) -> bool:
        return self.sig.is_dir


class LiveUnits:
    """The allocation units the files being served hold: the rule book's space_unclaimed applied
    to live files, so no two files the mount serves share device memory. Unlike the log's model
    (where freed space is never reused) a file leaving the namespace, or re-mapped, gives its
    units back. The metadata files are never claimed: the units model counts them as taken."""

    def __init__(self, geometry: Geometry) -> None:
        self.units = rules.Units(geometry)  # the one attribute of rules.Model that space_unclaimed reads
        self.held: dict[int, tuple[fmt.Extent, ...]] = {}  # ino -> the extents it claimed

    def claim(self, ino: int, entry: fmt.FileEntry) -> None:
        """Raise rules.Violation (space_unclaimed) if another live file holds any of its units."""
        self.release(ino)
        rules.space_unclaimed(cast(rules.Model, self), entry)
        extents = tuple(entry.all_extents())
        self.units.claim(extents)
        self.held[ino] = extents

    def release(self, ino: int) -> None:
        extents = self.held.pop(ino, None)
        if extents:
            self.units.release(extents)


class InodeTable:
    def __init__(self, shadow_root: bytes, geometry: Geometry) -> None:
        self.shadow_root = shadow_root
        self.geometry = geometry
        self.live = LiveUnits(geometry)
        self.nodes: dict[int, Node] = {}
        self.next_ino = ROOT_INODE + 1
        root_sig = shadow_reader.signature(shadow_root)
        if root_sig is None or not root_sig.is_dir:
            raise FileNotFoundError(f"{os.fsdecode(shadow_root)}: not a directory")
        self.nodes[ROOT_INODE] = Node(ROOT_INODE, ROOT_INODE, b"", b"", root_sig)
        self.by_path: dict[bytes, int] = {b"": ROOT_INODE}
        # relpath -> the inode number a file created through the master's mount was given before
        # it was logged: the node the agent's shadow file makes keeps it (the kernel knows it).
        self.reserved: dict[bytes, int] = {}
        self._scan_children(self.nodes[ROOT_INODE])

    # --- queries --------------------------------------------------------------------------

    def shadow_path(self, relpath: bytes) -> bytes:
        return self.shadow_root + b"/" + relpath if relpath else self.shadow_root

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def child(self, parent: Node, name: bytes) -> Node | None:
        assert parent.children is not None
        ino = parent.children.get(name)
        return None if ino is None else self.nodes[ino]

    def file_entry(self, node: Node, dir_fd: int | None = None) -> fmt.FileEntry | None:
        """The node's parsed YAML, loading it on first use; None (and node.error) if refused.
        `dir_fd`: its parent directory, open (shadow_reader.open_dir), to load it by name."""
        if node.entry is None and node.error is None:
            if not node.present:
                node.error = "deleted before it was read"  # its path may name a newer file now
                return None
            try:
                path = node.name if dir_fd is not None else self.shadow_path(node.relpath)
                entry = shadow_reader.load_file(path, node.relpath, self.geometry, dir_fd)
                if not node.relpath.startswith(shadow_reader.META_PREFIX):
                    self.live.claim(node.ino, entry)
                node.entry, node.conflict = entry, None
            except fmt.FormatError as err:
                if isinstance(err, rules.Violation) and err.rule == rules.space_unclaimed.__name__:
                    # Not cached as an error: once the other file is gone this one is served.
                    if node.conflict != str(err):
                        log.error("shadow file overlaps another live file, served as EIO",
                                  shadow_path=os.fsdecode(self.shadow_path(node.relpath)), reason=str(err))
                    node.conflict = str(err)
                    return None
                node.error = str(err)
            except Exception as err:  # noqa: BLE001 - no shadow file may take the daemon down
                node.error = f"unreadable: {err!r}"
            if node.error is not None:
                log.error("bad shadow file, served as EIO", shadow_path=os.fsdecode(self.shadow_path(node.relpath)),
                          reason=node.error)
        return node.entry

    def count(self) -> int:
        return len(self.nodes)

    def relpaths(self) -> Iterator[tuple[bytes, Signature]]:
        for relpath, ino in self.by_path.items():
            yield relpath, self.nodes[ino].sig

    # --- kernel reference counts ------------------------------------------------------------

    def remember(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None:
            return
        node.lookups -= count
        if node.lookups <= 0 and not node.present and node.opens == 0:
            del self.nodes[ino]

    def release(self, node: Node) -> bool:
        """A handle closed; True if its cached data must now be dropped (re-mapped while open)."""
        node.opens -= 1
        stale = node.opens == 0 and node.data_stale
        if stale:
            node.data_stale = False
        if node.opens == 0 and not node.present and node.lookups <= 0:
            del self.nodes[node.ino]
        return stale and node.present

    def reserve(self, relpath: bytes) -> int:
        """An inode number for a path that is not in the shadow tree yet (a file being written
        through the master's mount); the node made when the path appears gets it."""
        ino = self.next_ino
        self.next_ino += 1
        self.reserved[relpath] = ino
        return ino

    # --- learning the shadow tree -----------------------------------------------------------

    def refresh(self, relpath: bytes) -> list[Notice]:
        """Re-check one path against the disk and update the table; what the kernel must forget."""
        if not relpath:
            return self._refresh_root()
        parent_rel, _, name = relpath.rpartition(b"/")
        parent_ino = self.by_path.get(parent_rel)
        if parent_ino is None:
            return []  # its parent is new too: refreshing the parent scans this path
        parent = self.nodes[parent_ino]
        if not parent.is_dir:
            return []  # a stale event below what is now a file
        sig = shadow_reader.signature(self.shadow_path(relpath))
        current = self.child(parent, name)
        notices: list[Notice] = []
        # The kernel can cache a name (or its absence) only under a directory it has looked up.
        parent_known = parent.lookups > 0 or parent.ino == ROOT_INODE
        if current is not None and (sig is None or sig.is_dir != current.is_dir):
            if current.lookups > 0:
                notices.append(Notice(NoticeKind.DELETED, current.ino, parent.ino, name))
            self._remove(current)
            current = None
        if sig is None:
            return notices
        if current is None:
            node = self._add(parent, name, sig)
            if node.is_dir:
                self._scan_children(node)
            if parent_known:
                notices.append(Notice(NoticeKind.NEW_NAME, node.ino, parent.ino, name))
        elif current.sig != sig:
            notices.extend(self._changed(current, sig))
        return notices

    def _refresh_root(self) -> list[Notice]:
        root = self.nodes[ROOT_INODE]
        sig = shadow_reader.signature(self.shadow_root)
        if sig is None or not sig.is_dir or sig == root.sig:
            return []
        root.sig = sig
        return [Notice(NoticeKind.ATTRS, ROOT_INODE)]

    def _changed(self, node: Node, sig: Signature) -> list[Notice]:
        old = node.sig
        node.sig = sig
        if node.is_dir:
            return [Notice(NoticeKind.ATTRS, node.ino)] if node.lookups > 0 or node.ino == ROOT_INODE else []
        if old.st_ino == sig.st_ino and old.mtime_ns == sig.mtime_ns and old.size == sig.size:
            # Only the shadow file's own attributes (ctime, atime) moved: the YAML is the same.
            return []
        had_entry = node.entry
        node.entry = None
        node.error = None
        self.live.release(node.ino)
        if had_entry is not None:
            self.file_entry(node)  # reload now: open handles read through the new mapping at once
        return self._drop_cached_data(node)

    def _drop_cached_data(self, node: Node) -> list[Notice]:
        """What the kernel must forget of a file whose bytes now come from elsewhere."""
        if node.lookups <= 0 and node.opens == 0:
            return []
        if node.opens > 0:
            node.data_stale = True
            return [Notice(NoticeKind.ATTRS, node.ino)]
        return [Notice(NoticeKind.INODE, node.ino)]

    def set_geometry(self, geometry: Geometry) -> list[Notice]:
        """Another device (or the file system re-made on it): every YAML is checked again, when
        next used, against the new bounds, and the kernel forgets every file's cached bytes
        (they came from the old device)."""
        self.geometry = geometry
        self.live = LiveUnits(geometry)
        notices: list[Notice] = []
        for node in self.nodes.values():
            if not node.is_dir:
                node.entry = None
                node.error = None
                notices.extend(self._drop_cached_data(node))
        return notices

    def _add(self, parent: Node, name: bytes, sig: Signature) -> Node:
        relpath = parent.relpath + b"/" + name if parent.relpath else name
        ino = self.reserved.pop(relpath, None)
        if ino is None:
            ino = self.next_ino
            self.next_ino += 1
        node = Node(ino, parent.ino, name, relpath, sig)
        self.nodes[node.ino] = node
        self.by_path[relpath] = node.ino
        assert parent.children is not None
        parent.children[name] = node.ino
        return node

    def _scan_children(self, directory: Node) -> None:
        """Add everything below a directory that has just appeared (inotify cannot tell us about
        what was already inside it when it was renamed into place)."""
        pending = [directory]
        while pending:
            current = pending.pop()
            for name, sig in shadow_reader.list_dir(self.shadow_path(current.relpath)).items():
                if self.child(current, name) is None:
                    node = self._add(current, name, sig)
                    if node.is_dir:
                        pending.append(node)

    def _remove(self, node: Node) -> None:
        """Take a node and everything below it out of the namespace."""
        parent = self.nodes.get(node.parent)
        if parent is not None and parent.children is not None and parent.children.get(node.name) == node.ino:
            del parent.children[node.name]
        pending = [node]
        while pending:
            current = pending.pop()
            if current.children:
                pending.extend(self.nodes[ino] for ino in current.children.values())
                current.children = {}
            current.present = False
            self.live.release(current.ino)
            self.by_path.pop(current.relpath, None)
            if current.lookups <= 0 and current.opens == 0:
                del self.nodes[current.ino]

    def reconcile_candidates(self, disk: dict[bytes, Signature]) -> list[bytes]:
        """Paths where a full walk of the disk and the table disagree, parents first.

        The walk ran in another thread and may be older than the table, so the caller re-checks
        each candidate with `refresh` (which looks at the disk now) rather than trusting it.
        """
        differing = {relpath for relpath, sig in disk.items() if self._sig_of(relpath) != sig}
        differing.update(relpath for relpath in self.by_path if relpath not in disk)
        return sorted(differing, key=lambda relpath: (relpath.count(b"/"), relpath))

    def _sig_of(self, relpath: bytes) -> Signature | None:
        ino = self.by_path.get(relpath)
        return None if ino is None else self.nodes[ino].sig
