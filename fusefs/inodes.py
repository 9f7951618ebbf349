"""The inode table: what the mount serves, keyed by inode number and by (parent, name).

Only the trio thread touches it. It learns the shadow tree through `refresh(relpath)` (one
path re-checked against the disk) and reports what the kernel must forget as `Notice`s, which
the caller sends from worker threads after the table is updated (never under a lock: there is
none). Inode numbers are handed out per path and stay while the path holds the same file (a
SETATTR rewrites its YAML, the bytes stay); another file at the path is a new inode, and an open
handle of the old one keeps reading its own bytes (_another_file). A deleted node the kernel still
knows (lookup count > 0) stays reachable by number until `forget`.

File YAML is parsed lazily, on the first open or mapping that needs its extents: a mount of half
a million files starts in the time it takes to stat them. A lookup or listing needs attributes
only: they come from the log slot the file's trusted.famfs.file names, once the owner map says
it is the live entry for the path (famfs.ownership.ShadowCheck.listed); a file without a record
that holds is parsed and checked in full, as before.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import pyfuse3
import structlog

from famfs import format as fmt
from famfs import safepath
from famfs.ownership import ListedFile
from famfs.rules import Geometry
from famfs import listing
from famfs.shadowdir import AGENT_DIR, LISTINGS_DIR, DirRecord
from fusefs import shadow_reader
from fusefs.shadow_reader import Signature

log = structlog.get_logger("famfs-fuse-mount")

ROOT_INODE = pyfuse3.ROOT_INODE
NEGATIVES_KEPT = 65536  # names remembered as cached negative lookups; beyond, every new name is notified a while
NEGATIVE_SLACK_S = 1.0  # the kernel starts a negative entry's timeout when our reply reaches it, a little later
# A lookup of a file not listed yet lists its whole directory from the record if the directory
# holds at most this many names (about 5 ms on the benchmark machine): the first stat of one name
# in a directory of 100,000 reads its own xattr instead. A listing (readdir) always uses the record.
LOOKUP_LISTS_UP_TO = 4096


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


class _Unread:
    """A directory's xattr not read yet (None is "read: it has none")."""


_UNREAD = _Unread()


class Negatives:
    """The names the kernel may hold a cached negative lookup for: those a lookup answered "no
    such name" with a timeout (operations' _negative), until that timeout has passed. A new name
    needs its invalidate_entry only if it is one of them: the kernel caches nothing for a name it
    never looked up, and the negative dentry an ENOENT reply or a DELETED notice leaves it is
    marked stale, looked up again at its next use (fs/fuse/dir.c, fuse_invalidate_entry_cache).
    Bounded: past NEGATIVES_KEPT live names, every new name is notified until the last of them
    could have expired."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.until: dict[tuple[int, bytes], float] = {}  # (parent, name) -> when the kernel forgets it
        self.all_until = 0.0  # the set overflowed: every name may be cached until then

    def add(self, parent: int, name: bytes) -> None:
        if self.timeout <= 0:
            return  # a zero timeout caches nothing
        now = time.monotonic()
        if len(self.until) >= NEGATIVES_KEPT:
            self.until = {key: until for key, until in self.until.items() if until > now}
            if len(self.until) >= NEGATIVES_KEPT:
                self.until.clear()
                self.all_until = now + self.timeout + NEGATIVE_SLACK_S
        self.until[parent, name] = now + self.timeout + NEGATIVE_SLACK_S

    def take(self, parent: int, name: bytes) -> bool:
        """Whether the kernel may hold a negative lookup of `name` in `parent` (forgotten here:
        the notice the caller sends drops it)."""
        until = self.until.pop((parent, name), 0.0)
        now = time.monotonic()
        return until > now or self.all_until > now


class Checker(Protocol):
    """What the table asks of famfs.ownership.ShadowCheck: is a shadow file or directory the
    log's (docs/security.md)."""

    def file_problem(self, entry: fmt.FileEntry) -> str | None: ...

    def dir_problem(self, relpath: str, raw: bytes | None) -> DirRecord | str: ...

    def listed(self, relpath: bytes, index: int) -> ListedFile | None: ...

    def listed_many(self, wanted: Iterable[tuple[bytes, int]], prefix: bytes = b"") -> list[ListedFile | None]: ...


class Node:
    __slots__ = ("ino", "parent", "name", "relpath", "sig", "entry", "listed", "error", "refused", "children",
                 "lookups", "opens", "present", "data_stale", "logged", "times", "provisional", "record_read")

    def __init__(self, ino: int, parent: int, name: bytes, relpath: bytes, sig: Signature,
                 logged: DirRecord | None = None) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.relpath = relpath
        self.sig = sig
        self.entry: fmt.FileEntry | None = None  # files: parsed on first use
        self.listed: ListedFile | None = None  # files: attributes from the log, before any parse
        self.error: str | None = None  # files: why the YAML was refused (served as EIO)
        # files: why the log does not hold this YAML (not served: ENOENT; looked at again on use)
        self.refused: str | None = None
        self.logged = logged  # directories: the logged mode and owner served (None: the root)
        self.children: dict[bytes, int] | None = {} if sig.is_dir else None
        # directories: the directory record (famfs.listing) read. Once per directory (and device):
        # a file that appears or changes later is listed from its own xattr, so that a file made
        # in a directory of 100,000 costs one getxattr, not a read of the whole record.
        self.record_read = False
        self.lookups = 0  # the kernel's lookup count
        self.opens = 0
        self.present = True  # False once the shadow path is gone
        self.data_stale = False  # its YAML written again while open: drop cached data at the last close
        # (atime, mtime) in ns set through the master's mount (utimes): famfs logs no times, so
        # they are kept for the mount's lifetime, as upstream's kernel famfs keeps them in its inode
        self.times: tuple[int, int] | None = None
        # Served ahead of the log (docs/fusefs.md, "Served ahead of the log"): a file whose YAML
        # maps only free space, checked again before every use; a directory without its xattr yet.
        self.provisional = False

    @property
    def is_dir(self) -> bool:
        return self.sig.is_dir


class InodeTable:
    def __init__(self, shadow_root: bytes, geometry: Geometry, checker: Checker, negative_timeout: float = 0.0,
                 ahead: Callable[[fmt.FileEntry], str | None] | None = None) -> None:
        """`ahead` (the master's ro_namespace mount only: fusefs.ahead.Ahead): why a YAML no log
        entry owns yet may not be served ahead of the log (None: it may); without it, nothing is."""
        self.shadow_root = shadow_root
        self.negatives = Negatives(negative_timeout)
        self.geometry = geometry
        self.checker = checker
        self.refused_dirs: dict[bytes, str] = {}  # directories not served, and why (warned once each)
        self.listings_dir = os.path.join(os.path.dirname(shadow_root), os.fsencode(AGENT_DIR), os.fsencode(LISTINGS_DIR))
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
        self.ahead = ahead
        self.served_ahead: dict[int, Node] = {}  # files served ahead of the log, checked by sweep_ahead
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
        """The node's parsed YAML, loading it on first use; None (and node.error or
        node.refused) if it is not served. `dir_fd`: its parent directory, open
        (shadow_reader.open_dir), to load it by name."""
        if node.entry is None and not node.present:
            # Deleted before anything read its YAML (its path may name a newer file now). With
            # no handle open on it, no such file (ENOENT), as when load_file finds the YAML gone
            # (Gone, below), not a bad one: an open or a stat reaches here when the kernel still
            # held the name as the table dropped the file (make churn's reader EIO, docs/fusefs.md
            # "Live updates"). A handle's request (a read's getattr) is EIO, never ENOENT.
            why = "deleted before it was read"
            node.refused, node.error = (why, None) if node.opens == 0 else (None, why)
            return None
        if node.entry is None and node.error is None:
            try:
                entry = shadow_reader.load_file(self.shadow_root, node.relpath, self.geometry, dir_fd)
            except shadow_reader.Gone as gone:
                # Deleted before the watcher's event reached the table: no such file (ENOENT), not
                # a bad one (EIO); looked at again on use, as the name may be made again.
                node.refused = str(gone)
                return None
            except fmt.FormatError as err:
                node.error = str(err)
            except Exception as err:  # noqa: BLE001 - no shadow file may take the daemon down
                node.error = f"unreadable: {err!r}"
            else:
                self._verify(node, entry)
            if node.error is not None:
                log.error("bad shadow file, served as EIO", shadow_path=os.fsdecode(self.shadow_path(node.relpath)),
                          reason=node.error)
        return node.entry

    def needs_read(self, node: Node) -> bool:
        """Whether file_attributes(node) reads the shadow tree (a listing opens the directory)."""
        return node.entry is None and node.listed is None and node.error is None

    def file_attributes(self, node: Node, dir_fd: int | None = None) -> fmt.FileEntry | ListedFile | None:
        """What a lookup or listing serves of a file: its parsed YAML if loaded; else its
        attributes from the log slot its record names (ShadowCheck.listed); else its YAML, loaded
        now (file_entry). None if it is not served."""
        if node.entry is not None or node.error is not None:
            return node.entry
        if node.listed is None and node.present and node.refused is None:  # refused: checked in full each time
            parent = self.nodes.get(node.parent)
            if parent is not None and not parent.record_read and parent.present and \
                    len(parent.children or ()) <= LOOKUP_LISTS_UP_TO:
                self.list_from_record(parent)
                if node.listed is not None:
                    return node.listed
            index = shadow_reader.file_record(self.shadow_root, node.relpath, dir_fd)
            if index is not None:
                try:
                    node.listed = self.checker.listed(node.relpath, index)
                except Exception as err:  # noqa: BLE001 - no shadow file may take the daemon down
                    log.warning("file record not read", shadow_path=os.fsdecode(self.shadow_path(node.relpath)),
                                reason=repr(err))
        return node.listed if node.listed is not None else self.file_entry(node, dir_fd)

    def list_from_record(self, directory: Node) -> None:
        """Every file of `directory` not listed yet given its attributes from the log entry the
        directory's record names for it, where the log and owner map confirm them (one read and
        one owner-map read for the directory: famfs.listing, ShadowCheck.listed_many). The rest
        (no record, a name it lacks, an entry that is not the live one) each go file by file."""
        directory.record_read = True
        children = directory.children
        assert children is not None
        record = listing.read(self.listings_dir, directory.relpath)
        if not record:
            return
        prefix = directory.relpath + b"/" if directory.relpath else b""
        try:
            found = self.checker.listed_many(record.items(), prefix)
        except Exception as err:  # noqa: BLE001 - no record may take the daemon down
            log.warning("directory record not read", shadow_path=os.fsdecode(self.shadow_path(directory.relpath)),
                        reason=repr(err))
            return
        nodes = self.nodes
        for name, listed_file in zip(record, found):
            if listed_file is None:
                continue
            ino = children.get(name)
            if ino is None:
                continue  # a name whose shadow file is gone (or not there yet)
            node = nodes[ino]
            # Not one the table knows more of: parsed, refused, or gone since.
            if node.listed is None and node.entry is None and node.error is None and node.refused is None \
                    and node.present and node.children is None:
                node.listed = listed_file

    def _verify(self, node: Node, entry: fmt.FileEntry) -> None:
        """Serve `entry` only if the log holds it for this path (famfs.ownership): else it is
        not served, and looked at again next time (the agent may be about to own it)."""
        problem = None
        if not node.relpath.startswith(shadow_reader.META_PREFIX):  # checked by load_file
            problem = self._file_problem(entry)
        if problem is None:
            node.entry, node.refused, node.provisional = entry, None, False
            return
        if self.ahead is not None:
            ahead = self._ahead_problem(node, entry)
            if ahead is not None and self._file_problem(entry) is None:
                node.entry, node.refused, node.provisional = entry, None, False  # played meanwhile
                return
            if ahead is None:
                if not node.provisional:
                    log.info("served ahead of the log", shadow_path=os.fsdecode(self.shadow_path(node.relpath)),
                             kind="file", why=problem)
                node.entry, node.refused, node.provisional = entry, None, True
                self.served_ahead[node.ino] = node
                return
            problem = f"{problem}; not served ahead of the log: {ahead}"
        node.provisional = False
        node.listed = None  # the YAML is not the log's: nothing of it served until it is
        if node.refused != problem:
            log.warning("shadow file not served", shadow_path=os.fsdecode(self.shadow_path(node.relpath)),
                        reason=problem)
        node.refused = problem

    def _file_problem(self, entry: fmt.FileEntry) -> str | None:
        try:
            return self.checker.file_problem(entry)
        except Exception as err:  # noqa: BLE001 - no shadow file may take the daemon down
            return f"cannot be checked against the log: {err!r}"

    def _ahead_problem(self, node: Node, entry: fmt.FileEntry) -> str | None:
        """Why a YAML the log does not own may not be served ahead of it; None if it may. Its
        owner is looked at now (a chown is a change the table may not have taken in yet); a
        YAML gone since it was loaded is judged by the owner it had (an open handle's file)."""
        now = shadow_reader.signature_beneath(self.shadow_root, node.relpath)
        uid = (now or node.sig).uid
        if uid != os.geteuid():
            return f"owned by uid {uid}, not by famfs-agent's {os.geteuid()}"
        if shadow_reader.file_record(self.shadow_root, node.relpath) is not None:
            return "it carries trusted.famfs.file: famfs-agent wrote it for a logged file"
        assert self.ahead is not None
        try:
            return self.ahead(entry)
        except Exception as err:  # noqa: BLE001 - no shadow file may take the daemon down
            return f"cannot be checked against the log: {err!r}"

    def recheck(self, node: Node) -> str | None:
        """A file served ahead of the log, checked again before a use that maps bytes (its units
        may be another file's by now, if whoever wrote it died before logging it): None if it
        may still be served, or is the log's now. Else it is served no longer (EIO), and why."""
        entry = node.entry
        if not node.provisional or entry is None:
            return None
        problem = self._file_problem(entry)
        ahead = None if problem is None else self._ahead_problem(node, entry)
        # Asked again when the ahead check fails: the agent may have played the entry in between
        # (its owner map set), which the ahead check sees as units taken.
        if problem is None or (ahead is not None and self._file_problem(entry) is None):
            node.provisional = False  # the agent has played its entry: an ordinary logged file
            return None
        if ahead is None:
            return None
        # EIO from now on (node.error), to open handles and new lookups alike, until its YAML changes.
        node.entry, node.provisional = None, False
        node.error = f"{problem}; not served ahead of the log any more: {ahead}"
        log.warning("shadow file not served", shadow_path=os.fsdecode(self.shadow_path(node.relpath)),
                    reason=node.error)
        return node.error

    def sweep_ahead(self) -> list[Notice]:
        """Every file served ahead of the log checked again (after each batch of shadow changes,
        and every second): what the kernel must drop of those not served any more, their cached
        pages and mappings, so that the next read or fault asks the mount (and is refused)."""
        notices: list[Notice] = []
        for ino, node in list(self.served_ahead.items()):
            if self.recheck(node) is not None and (node.lookups > 0 or node.opens > 0):
                notices.append(Notice(NoticeKind.INODE, node.ino))
            if not node.provisional or self.nodes.get(ino) is not node:
                del self.served_ahead[ino]
        return notices

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
        """A handle closed; True if its cached data must now be dropped (written again while open)."""
        node.opens -= 1
        stale = node.opens == 0 and node.data_stale
        if stale:
            node.data_stale = False
        if node.opens == 0 and not node.present and node.lookups <= 0:
            del self.nodes[node.ino]
        return stale and node.present

    def new_ino(self) -> int:
        """An inode number no path of the table has or will have (a link of the mount's own)."""
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def reserve(self, relpath: bytes) -> int:
        """An inode number for a path that is not in the shadow tree yet (a file being written
        through the master's mount); the node made when the path appears gets it."""
        ino = self.new_ino()
        self.reserved[relpath] = ino
        return ino

    # --- learning the shadow tree -----------------------------------------------------------

    def refresh(self, relpath: bytes, root_fd: int | None = None) -> list[Notice]:
        """Re-check one path against the disk and update the table; what the kernel must forget.
        `root_fd`: the shadow root, open (one for a whole batch of paths)."""
        if not relpath:
            return self._refresh_root()
        parent_rel, _, name = relpath.rpartition(b"/")
        parent_ino = self.by_path.get(parent_rel)
        if parent_ino is None:
            return []  # its parent is new too: refreshing the parent scans this path
        parent = self.nodes[parent_ino]
        if not parent.is_dir:
            return []  # a stale event below what is now a file
        sig = shadow_reader.signature_beneath(self.shadow_root, relpath, root_fd)
        current = self.child(parent, name)
        notices: list[Notice] = []
        # The kernel can cache a name (or its absence) only under a directory it has looked up.
        parent_known = parent.lookups > 0 or parent.ino == ROOT_INODE
        # Another directory at the path (a new st_ino) is checked again: its xattr may differ.
        # Another file at the path (other bytes) is another inode (_another_file).
        replaced = current is not None and sig is not None and sig.is_dir == current.is_dir and (
            sig.st_ino != current.sig.st_ino if current.is_dir else current.sig != sig and self._another_file(current))
        if current is not None and (sig is None or sig.is_dir != current.is_dir or replaced):
            if current.lookups > 0:
                notices.append(Notice(NoticeKind.DELETED, current.ino, parent.ino, name))
            self._remove(current)
            current = None
        if sig is None:
            return notices
        if current is None:
            node = self._add(parent, name, sig)
            if node is None:
                return notices
            if node.is_dir:
                self._scan_children(node)
            if parent_known and self.negatives.take(parent.ino, name):
                notices.append(Notice(NoticeKind.NEW_NAME, node.ino, parent.ino, name))
        elif current.sig != sig:
            notices.extend(self._changed(current, sig))
        return notices

    def _another_file(self, node: Node) -> bool:
        """Whether the YAML now at a served file's path is another file than the one the node
        serves: other bytes (or another size). A DELETE and a FILE of one path, which the agent
        applies in one batch, leave a changed YAML, not a gap; the new file gets a new inode, and
        the old node keeps serving its handles and mappings their own bytes (its path stays
        pinned until they close: docs/reclaim.md, "Pins"). The same file written again (a
        SETATTR; the agent's copy renamed over a YAML written ahead of it) keeps its node. A node
        whose YAML was never read has served no bytes: it takes the new YAML as it is."""
        if node.entry is None:
            return False
        try:
            new = shadow_reader.load_file(self.shadow_root, node.relpath, self.geometry)
        except fmt.FormatError:  # Gone too: whatever is there now, the handles' file is not
            return True
        old = node.entry
        return (new.size, new.extents, new.stripes) != (old.size, old.extents, old.stripes)

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
            if node.provisional and old.ctime_ns != sig.ctime_ns:
                return self._ahead_dir_changed(node)
            if node.logged is not None and old.ctime_ns != sig.ctime_ns:
                return self._dir_record_changed(node)
            return [Notice(NoticeKind.ATTRS, node.ino)] if node.lookups > 0 or node.ino == ROOT_INODE else []
        if old.st_ino == sig.st_ino and old.mtime_ns == sig.mtime_ns and old.size == sig.size and not node.provisional:
            # Only the shadow file's own attributes (ctime, atime) moved: the YAML is the same.
            # (A file served ahead of the log is checked again: its owner is one of its rules.)
            return []
        had_entry = node.entry
        node.entry = node.listed = None
        node.error = None  # node.refused kept: the same refusal of the new YAML is not warned again
        if had_entry is not None:
            self.file_entry(node)  # reload now: the same bytes (else refresh made a new node), new attributes
        return self._drop_cached_data(node)

    def _dir_record_changed(self, node: Node) -> list[Notice]:
        """A directory's ctime moved: its trusted.famfs.dir may name a SETATTR now (chmod, chown
        on the master). A new record is checked against the log like the first; one that does
        not hold takes the directory out of the namespace, as if it had never been served."""
        raw = shadow_reader.dir_xattr(self.shadow_root, node.relpath)
        assert node.logged is not None
        if raw == node.logged.encode():
            return [Notice(NoticeKind.ATTRS, node.ino)] if node.lookups > 0 else []
        logged = self._logged_dir(node.relpath, raw)
        if logged is not None:
            node.logged = logged
            return [Notice(NoticeKind.ATTRS, node.ino)] if node.lookups > 0 else []
        parent = self.nodes[node.parent]
        notices = [Notice(NoticeKind.DELETED, node.ino, parent.ino, node.name)] if node.lookups > 0 else []
        self._remove(node)
        return notices

    def _ahead_dir_changed(self, node: Node) -> list[Notice]:
        """A directory served ahead of the log changed: the agent may have played its MKDIR (its
        xattr set, the logged mode and owner served from now on). One that is neither the log's
        nor still servable ahead of it (another owner, a bad xattr) leaves the namespace."""
        raw = shadow_reader.dir_xattr(self.shadow_root, node.relpath)
        not_ahead = self._dir_ahead(raw, node.sig)
        ahead = not_ahead is None
        logged = self._logged_dir(node.relpath, raw, not_ahead)
        if logged is not None or ahead:
            node.logged, node.provisional = logged, logged is None
            return [Notice(NoticeKind.ATTRS, node.ino)] if node.lookups > 0 else []
        parent = self.nodes[node.parent]
        notices = [Notice(NoticeKind.DELETED, node.ino, parent.ino, node.name)] if node.lookups > 0 else []
        self._remove(node)
        return notices

    def _dir_ahead(self, raw: bytes | None, sig: Signature) -> str | None:
        """Why a shadow directory without a logged record may not be served ahead of the log;
        None if it may: on a mount that serves ahead, with no xattr at all (not a forged or stale
        one), famfs-agent's uid its owner. A directory maps no memory: nothing else is needed
        (its path was resolved with no symlink or mount crossed, like every path of the tree)."""
        if self.ahead is None:
            return "this mount serves nothing ahead of the log"
        if raw is not None:
            return "it has a trusted.famfs.dir, not one of the log's"
        if sig.uid != os.geteuid():
            return f"owned by uid {sig.uid}, not by famfs-agent's {os.geteuid()}"
        return None

    def _drop_cached_data(self, node: Node) -> list[Notice]:
        """What the kernel must forget of a file whose bytes now come from elsewhere."""
        if node.lookups <= 0 and node.opens == 0:
            return []
        if node.opens > 0:
            node.data_stale = True
            return [Notice(NoticeKind.ATTRS, node.ino)]
        return [Notice(NoticeKind.INODE, node.ino)]

    def set_geometry(self, geometry: Geometry, checker: Checker) -> list[Notice]:
        """Another device (or the file system re-made on it): every YAML is checked again, when
        next used, against the new bounds and log, and the kernel forgets every file's cached
        bytes (they came from the old device)."""
        self.geometry = geometry
        self.checker = checker
        notices: list[Notice] = []
        for node in self.nodes.values():
            node.record_read = False
            if not node.is_dir:
                node.entry = node.listed = None
                node.error = node.refused = None
                notices.extend(self._drop_cached_data(node))
        return notices

    def _add(self, parent: Node, name: bytes, sig: Signature, record: bytes | None | _Unread = _UNREAD) -> Node | None:
        """A node for a new path; None for a directory the log does not account for (not served).
        `record`: a directory's trusted.famfs.dir if already read (shadow_reader.scan_dir)."""
        relpath = parent.relpath + b"/" + name if parent.relpath else name
        logged, ahead = None, False
        if sig.is_dir and relpath != shadow_reader.META_NAME:  # .meta: no entry, checked file by file
            if isinstance(record, _Unread):
                record = shadow_reader.dir_xattr(self.shadow_root, relpath)
            not_ahead = self._dir_ahead(record, sig)
            ahead = not_ahead is None
            logged = self._logged_dir(relpath, record, not_ahead)
            if logged is None and not ahead:
                return None
        ino = self.reserved.pop(relpath, None)
        if ino is None:
            ino = self.new_ino()
        node = Node(ino, parent.ino, name, relpath, sig, logged)
        if ahead and logged is None:
            node.provisional = True
            log.info("served ahead of the log", shadow_path=os.fsdecode(self.shadow_path(relpath)), kind="directory",
                     why="no trusted.famfs.dir yet (its MKDIR not played)")
        self.nodes[node.ino] = node
        self.by_path[relpath] = node.ino
        assert parent.children is not None
        parent.children[name] = node.ino
        return node

    def _logged_dir(self, relpath: bytes, raw: bytes | None, not_ahead: str | None = "") -> DirRecord | None:
        """The logged attributes of shadow directory `relpath`, from its trusted.famfs.dir checked
        against the MKDIR it names; None (warned once per path and reason) if it has none that
        holds: the directory is then not served, nor anything below it, unless `not_ahead` is
        None (served ahead of the log: `_add` says so, at info; else it says why not)."""
        try:
            found = self.checker.dir_problem(os.fsdecode(relpath), raw)
        except Exception as err:  # noqa: BLE001 - no shadow directory may take the daemon down
            found = f"cannot be checked against the log: {err!r}"
        if isinstance(found, DirRecord):
            self.refused_dirs.pop(relpath, None)
            return found
        if not_ahead is None:
            self.refused_dirs.pop(relpath, None)
            return None
        if self.ahead is not None:
            found = f"{found}; not served ahead of the log: {not_ahead}"
        if self.refused_dirs.get(relpath) != found:
            log.warning("shadow directory not served", shadow_path=os.fsdecode(self.shadow_path(relpath)), reason=found)
            self.refused_dirs[relpath] = found
        return None

    def _scan_children(self, directory: Node) -> None:
        """Add everything below a directory that has just appeared (inotify cannot tell us about
        what was already inside it when it was renamed into place)."""
        try:
            opened = safepath.Root(self.shadow_root)
        except OSError:
            return  # the root is gone: the rescan it leads to looks again
        with opened as root_fd:
            self._scan_below(directory, root_fd)

    def _scan_below(self, directory: Node, root_fd: int) -> None:
        pending = [directory]
        while pending:
            current = pending.pop()
            listing, records = shadow_reader.scan_dir(self.shadow_root, current.relpath, root_fd=root_fd)
            for name, sig in listing.items():
                if self.child(current, name) is None:
                    node = self._add(current, name, sig, records.get(name))
                    if node is not None and node.is_dir:
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
            self.by_path.pop(current.relpath, None)
            if current.lookups <= 0 and current.opens == 0:
                del self.nodes[current.ino]

    def reconcile_candidates(self, disk: dict[bytes, Signature]) -> list[bytes]:
        """Paths where a full walk of the disk and the table disagree, parents first.

        The walk ran in another thread and may be older than the table, so the caller re-checks
        each candidate with `refresh` (which looks at the disk now) rather than trusting it.
        """
        differing = {relpath for relpath, sig in disk.items()
                     if self._sig_of(relpath) != sig and relpath not in self.refused_dirs}
        differing.update(relpath for relpath in self.by_path if relpath not in disk)
        return sorted(differing, key=lambda relpath: (relpath.count(b"/"), relpath))

    def _sig_of(self, relpath: bytes) -> Signature | None:
        ino = self.by_path.get(relpath)
        return None if ino is None else self.nodes[ino].sig
