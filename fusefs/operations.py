"""The pyfuse3 request handlers: names and attributes from the inode table, bytes from the
device mapping.

Every handler runs on the trio thread and returns without blocking on anything but the shadow
tmpfs (a lazily parsed YAML) and the device mapping. No handler sends a kernel notification:
they go to worker threads (fusefs/notify.py), started here only as new tasks.

The namespace belongs to famfsctl on the master: create, mkdir, unlink, rmdir, rename, link,
symlink, mknod, chmod, chown, utimes and truncate get EPERM (a refused operation, not a read-only
file system: file data stays writable). Writes on a `ro` mount get EROFS, writes past a file's
fixed size EFBIG. These are answers, not failures: only the first EPERM is logged, once, saying
why and which host may change the namespace (an EPERM reads as a permissions problem otherwise).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import structlog
import trio

from famfs import format as fmt
from famfs import shadowdir
from fusefs.capacity import CapacityCache
from fusefs.datapath import DataError, DataPath
from fusefs.inodes import ROOT_INODE, InodeTable, Node, Notice, NoticeKind

log = structlog.get_logger("famfs-fuse-mount")

SHADOW_XATTR = os.fsencode(shadowdir.SHADOW_XATTR)  # upstream's CLI (and famfsctl) find the shadow dir with it
STATUS_XATTR = b"user.famfs.status"  # one status line: inodes, notifications, rescans
BLOCK_IO_SIZE = 1 << 20  # st_blksize: tools read in this size, the largest request libfuse negotiates
NAME_MAX = 255


@dataclass(slots=True)
class LookupCounters:
    """Name lookups answered from the inode table (upstream's icache search stats)."""

    searches: int = 0
    misses: int = 0


@dataclass(frozen=True, slots=True)
class MountPolicy:
    cache: str  # direct | auto | always
    entry_timeout: float
    negative_timeout: float
    read_only: bool
    master: str = "?"  # the system UUID of the master host (the superblock's), named when EPERM is explained


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def guarded(handler: Handler) -> Handler:
    """Any exception but FUSEError escaping a handler ends pyfuse3's main loop (and the mount):
    turn it into EIO for that one request, with a traceback in the log."""

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> Any:
        try:
            return await handler(*args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("request failed, answered EIO", handler=handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class FamfsOperations(pyfuse3.Operations):
    def __init__(self, table: InodeTable, data: DataPath, capacity: CapacityCache, policy: MountPolicy,
                 shadow_dir: bytes, status: Callable[[], str]) -> None:
        super().__init__()
        self.table = table
        self.data = data
        self.capacity = capacity
        self.policy = policy
        self.shadow_dir = shadow_dir
        self.status = status
        self.spawn_notice: Callable[[Notice], None] = lambda notice: None  # set once trio runs
        self.lookups = LookupCounters()
        self.file_handles: dict[int, Node] = {}
        self.dir_handles: dict[int, list[tuple[bytes, int]]] = {}
        self.next_fh = 1
        self.denial_explained = False  # the first EPERM for a namespace change is logged, then no other

    # --- attributes ---------------------------------------------------------------------------

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        sig = node.sig
        attrs.st_ino = node.ino
        attrs.generation = 0
        attrs.entry_timeout = self.policy.entry_timeout
        attrs.attr_timeout = self.policy.entry_timeout
        attrs.st_atime_ns = sig.atime_ns
        attrs.st_mtime_ns = sig.mtime_ns
        attrs.st_ctime_ns = sig.ctime_ns
        attrs.st_blksize = BLOCK_IO_SIZE
        if node.is_dir:
            attrs.st_mode = stat.S_IFDIR | sig.mode
            attrs.st_nlink = sig.nlink
            attrs.st_uid, attrs.st_gid = sig.uid, sig.gid
            attrs.st_size = sig.size
            attrs.st_blocks = 0
            return attrs
        entry = self._entry(node)
        attrs.st_mode = stat.S_IFREG | entry.mode
        attrs.st_nlink = 1
        attrs.st_uid, attrs.st_gid = entry.uid, entry.gid
        attrs.st_size = entry.size
        attrs.st_blocks = entry.capacity() // 512
        return attrs

    def _entry(self, node: Node) -> fmt.FileEntry:
        entry = self.table.file_entry(node)
        if entry is None:
            raise pyfuse3.FUSEError(errno.EIO)
        return entry

    def _node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _negative(self) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = 0  # a cached negative lookup: invalidate_entry removes it when the name appears
        attrs.entry_timeout = self.policy.negative_timeout
        return attrs

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            node: Node | None = parent
        elif name == b"..":
            node = self._node(parent.parent)
        elif not parent.present:
            raise pyfuse3.FUSEError(errno.ENOENT)  # a deleted directory: nothing to cache
        else:
            node = self.table.child(parent, name)
        self.lookups.searches += 1
        if node is None:
            self.lookups.misses += 1
            return self._negative()
        attrs = self._attributes(node)
        self.table.remember(node)
        return attrs

    @guarded
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.table.forget(ino, count)

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(self._node(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._deny()

    # --- directories --------------------------------------------------------------------------

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        assert node.children is not None
        # A sorted snapshot: offsets stay meaningful however the directory changes meanwhile.
        fh = self._new_fh()
        self.dir_handles[fh] = sorted(node.children.items())
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.dir_handles[fh]
        for index in range(start_id, len(listing)):
            name, ino = listing[index]
            node = self.table.get(ino)
            if node is None or not node.present:
                continue
            if not node.is_dir and self.table.file_entry(node) is None:
                continue  # a refused YAML: lookup answers EIO, the listing leaves it out
            if not pyfuse3.readdir_reply(token, name, self._attributes(node), index + 1):
                return
            self.table.remember(node)  # readdirplus: every entry the kernel took is a lookup

    @guarded
    async def releasedir(self, fh: int) -> None:
        del self.dir_handles[fh]

    # --- files --------------------------------------------------------------------------------

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._entry(node)
        if flags & os.O_TRUNC:
            raise self._deny()  # libfuse negotiates atomic O_TRUNC: the truncate arrives here
        if flags & os.O_ACCMODE != os.O_RDONLY and (self.policy.read_only or not self.data.writable):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self._new_fh()
        self.file_handles[fh] = node
        node.opens += 1
        return pyfuse3.FileInfo(fh=fh, direct_io=self.policy.cache == "direct",
                                keep_cache=self.policy.cache == "always")

    @guarded
    async def read(self, fh: int, off: int, size: int) -> Any:
        entry = self._entry(self.file_handles[fh])  # the current mapping: a re-map applies at once
        return self.data.read(entry, off, size)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        entry = self._entry(self.file_handles[fh])
        try:
            return self.data.write(entry, off, buf)
        except DataError as err:
            raise pyfuse3.FUSEError(err.errno) from None

    async def flush(self, fh: int) -> None:
        return None  # writes went straight into the device mapping

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(self.data.device.map.flush)

    @guarded
    async def release(self, fh: int) -> None:
        node = self.file_handles.pop(fh)
        if self.table.release(node):
            self.spawn_notice(Notice(NoticeKind.INODE, node.ino))

    # --- file system --------------------------------------------------------------------------

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        figures = await trio.to_thread.run_sync(self.capacity.current)
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = figures.unit
        data.f_blocks = figures.total_units
        data.f_bfree = data.f_bavail = figures.free_units
        data.f_files = self.table.count() + figures.free_slots
        data.f_ffree = data.f_favail = figures.free_slots
        data.f_namemax = NAME_MAX
        return data

    @guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._node(inode)
        if inode == ROOT_INODE and name == SHADOW_XATTR:
            return self.shadow_dir
        if inode == ROOT_INODE and name == STATUS_XATTR:
            return self.status().encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        self._node(inode)
        return [SHADOW_XATTR, STATUS_XATTR] if inode == ROOT_INODE else []

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._deny()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._deny()

    # --- the namespace is famfsctl's --------------------------------------------------------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise self._deny()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._deny()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._deny()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._deny()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._deny()

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._deny()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._deny()

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        raise self._deny()

    def _deny(self) -> pyfuse3.FUSEError:
        """EPERM for a change of the namespace; the first one is explained in the log."""
        if not self.denial_explained:
            self.denial_explained = True
            log.warning("namespace_change_refused", errno="EPERM",
                        why="files and directories are created, truncated, renamed and removed only by famfsctl on "
                            "the master host, which logs the change for every host; file data stays writable here",
                        master_system_uuid=self.policy.master, hint="famfsctl creat|cp|mkdir|rm on the master")
        return pyfuse3.FUSEError(errno.EPERM)

    def _new_fh(self) -> int:
        fh = self.next_fh
        self.next_fh += 1
        return fh
