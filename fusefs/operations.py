"""The pyfuse3 request handlers: names and attributes from the inode table, bytes from the
device mapping.

Every handler runs on the trio thread and returns without blocking on anything but the shadow
tmpfs (a lazily parsed YAML) and the device mapping. No handler sends a kernel notification:
they go to worker threads (fusefs/notify.py), started here only as new tasks.

The namespace is written only on the master host. A client's mount (no `writer`) answers create,
mkdir, unlink, rmdir, rename, link, symlink, mknod, chmod, chown, utimes and truncate with EPERM
(a refused operation, not a read-only file system: file data stays writable). The master's mount
is given a famfs.namespace.NamespaceWriter and turns mkdir, create + write + close, ftruncate of a
new empty file, unlink, rmdir, chmod and chown into log entries (docs/fusefs.md, "Writing the
namespace on the master"): the writer runs in a worker thread (device lock, device writes), then
the handler waits for famfs-agent to play the entry into the shadow tree and answers from the
inode table, so what the log holds the mount shows. Times set there are kept in memory for the
mount's lifetime (famfs logs none), and so are symbolic links (famfs has none: fusefs/links.py).
The rest stays refused (rename with EXDEV, so mv copies; a logged file's size, hard links and
special files with EPERM). Writes on a `ro` mount get EROFS, writes past a file's fixed size
EFBIG. These are answers, not failures: only the first EPERM is logged, once, saying why and
which host may change the namespace (an EPERM reads as a permissions problem otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import pyfuse3
import structlog
import trio

from famfs import format as fmt
from famfs import hosts, shadowdir
from famfs.compaction import RECORD_SPAN, read_record
from famfs.shadowdir import DirRecord
from famfs.pins import RETRY_S, PathPins
from famfs.namespace import NamespaceError, NamespaceWriter, Owner
from famfs.ownership import ListedFile
from fusefs import shadow_reader
from fusefs.capacity import Capacity
from fusefs.datapath import DataError
from fusefs.devicecheck import DeviceCheck, Served
from fusefs.groupcommit import GroupCommitter
from fusefs.inodes import ROOT_INODE, InodeTable, Node, Notice, NoticeKind
from fusefs.lease import Lease
from fusefs.links import Link, Links
from fusefs.shadow_reader import Signature
from fusefs.staging import Staged, StagingArea, StagingFull

log = structlog.get_logger("famfs-fuse-mount")

# Upstream's CLI (and famfsctl) find the shadow dir with it, asking on the path they are handed:
# answered on every inode, as famfs_fused does.
SHADOW_XATTR = os.fsencode(shadowdir.SHADOW_XATTR)
STATUS_XATTR = b"user.famfs.status"  # one status line: inodes, notifications, rescans (the root only)
USER_XATTRS = b"user."  # the only namespace served: the two above
S_IFREG = stat.S_IFREG
BLOCK_IO_SIZE = 1 << 20  # st_blksize: tools read in this size, the largest request libfuse negotiates
NAME_MAX = 255
# How often a handler that logged a change looks for famfs-agent's result in the shadow tree:
# the agent on this host wakes on the device write and plays it in well under a millisecond.
APPLY_POLL_MIN_S = 0.0002
APPLY_POLL_MAX_S = 0.02
PIN_WAIT_S = 1.0  # the agent holds a pin file's LOCK_EX for microseconds: a pin refused this long is EIO
# A request that finds the agent starting (joined, not yet renewed after its catch-up) waits this
# long for the lease before it is answered EIO: a restarted agent resumes in well under a second.
LEASE_WAIT_S = 2.0
LEASE_POLL_S = 0.005
# How long a lookup of a name the shadow tree holds but the table does not serve (a YAML
# upstream's CLI wrote ahead of this host's agent) waits for the agent to catch up with the log.
AHEAD_WAIT_S = 1.0
RECLAIM_POLL_MAX_S = 0.2  # a write waiting for space being reclaimed looks again at most this often
T = TypeVar("T")


@dataclass(slots=True)
class LookupCounters:
    """Name lookups answered from the inode table (upstream's icache search stats)."""

    searches: int = 0
    misses: int = 0


@dataclass(frozen=True, slots=True)
class Handle:
    node: Node
    generation: int  # of the device it was opened on (fusefs/devicecheck.py)
    incarnation: int | None = None  # the agent's, when it was opened (fusefs/lease.py)
    pinned: bytes | None = None  # the relpath whose pin it holds (famfs/pins.py)
    ahead: bool = False  # opened while its file was served ahead of the log (docs/fusefs.md)


@dataclass(frozen=True, slots=True)
class MountPolicy:
    cache: str  # direct | auto | always
    entry_timeout: float
    negative_timeout: float
    read_only: bool
    master: str = "?"  # the system UUID of the master host (the superblock's), named when EPERM is explained
    staging_bytes: int = 0  # master: the bound on new files' bytes held until their last close
    apply_wait_s: float = 10.0  # master: how long a logged change may take to appear in the shadow tree
    reclaim_wait_s: float = 10.0  # master: how long a new file waits for space being reclaimed ([master] reclaim_wait)
    read_only_namespace: bool = False  # -o ro_namespace: refused on the master too (upstream's CLI writes the log)


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])
# Every request pyfuse3 can deliver (its Operations' coroutine methods): each handler's index in
# RequestStats' lists, and each a label value of the metrics (fusefs/metrics.py).
OPERATIONS = tuple(name for name, member in inspect.getmembers(pyfuse3.Operations, inspect.iscoroutinefunction))
# A power of two (the test is one AND): with metrics on, one request in 16 of each operation is timed.
SAMPLE_EVERY = 16


class RequestStats(Protocol):
    """What `guarded` counts when metrics are on (fusefs.metrics.MountStats): trio thread only."""

    requests: list[int]  # per operation, in OPERATIONS' order: every request

    def timed(self, index: int, elapsed_ns: int) -> None:
        """One sampled request of OPERATIONS[index] took elapsed_ns in its handler."""


def guarded(handler: Handler) -> Handler:
    """Any exception but FUSEError escaping a handler ends pyfuse3's main loop (and the mount):
    turn it into EIO for that one request, with a traceback in the log. Every request answered
    with an error is counted by errno (FamfsOperations.errors), and with metrics on
    (FamfsOperations.stats) every request is counted and one in SAMPLE_EVERY timed: here, in the
    one frame every request has anyway (a wrapper of its own around each handler cost a stat
    with metrics on several µs of the daemon's CPU: docs/operations.md, "Cost")."""
    index, mask, clock = OPERATIONS.index(handler.__name__), SAMPLE_EVERY - 1, time.perf_counter_ns

    @functools.wraps(handler)
    async def wrapper(self: FamfsOperations, *args: Any) -> Any:
        stats, started = self.stats, 0
        if stats is not None:
            requests = stats.requests
            seen = requests[index] + 1
            requests[index] = seen
            if seen & mask == 1:  # the 1st request is timed: a quiet mount shows one
                started = clock()
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError as err:
            self.errors[err.errno] += 1
            raise
        except Exception:
            log.exception("request failed, answered EIO", handler=handler.__name__)
            self.errors[errno.EIO] += 1
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if started:
                stats.timed(index, clock() - started)  # type: ignore[union-attr]  # started: stats is set

    return wrapper  # type: ignore[return-value]


class FamfsOperations(pyfuse3.Operations):
    def __init__(self, table: InodeTable, devices: DeviceCheck, policy: MountPolicy,
                 shadow_dir: bytes, status: Callable[[], str], writer: NamespaceWriter | None = None) -> None:
        super().__init__()
        self.writer = writer  # None: a client's mount (or a read-only one): the namespace is refused
        self.staging = StagingArea(policy.staging_bytes)
        self.links = Links()  # symbolic links made here: this mount's only (fusefs/links.py)
        self.writer_slot = trio.CapacityLimiter(1)  # one writer call at a time: they serialize on the lock anyway
        # New files' last closes, logged in groups (fusefs/groupcommit.py) through the same slot.
        self.grouped = GroupCommitter(writer.create_group, self.writer_slot) if writer is not None else None
        self.staging_full_explained = False
        self.table = table
        self.devices = devices
        self.policy = policy
        self.shadow_dir = shadow_dir
        self.status = status
        self.spawn_notice: Callable[[Notice], None] = lambda notice: None  # set once trio runs
        self.lookups = LookupCounters()
        self.errors: Counter[int] = Counter()  # errno -> requests answered with it (counted by `guarded`)
        self.stats: RequestStats | None = None  # metrics on: every request counted (by `guarded`)
        self.file_handles: dict[int, Handle | Staged] = {}
        self.dir_handles: dict[int, tuple[Node, list[tuple[bytes, int]]]] = {}
        self.next_fh = 1
        self.denial_explained = False  # the first EPERM for a namespace change is logged, then no other
        self.initialized = trio.Event()  # set when the kernel's INIT is answered
        # Reclaim (docs/reclaim.md): serve bytes only under the agent's lease; pin what is open.
        self.lease = Lease(os.fsdecode(shadow_dir))
        self.pins = PathPins(shadow_dir)

    # pyfuse3's own answers (ENOSYS), guarded like every other handler, so counted like them.
    access = guarded(pyfuse3.Operations.access)
    fsyncdir = guarded(pyfuse3.Operations.fsyncdir)
    poll = guarded(pyfuse3.Operations.poll)

    def init(self) -> None:
        # pyfuse3 calls this (on the trio thread) just before it sends the INIT reply; waiters
        # run only after this request returns, so by then the kernel has the reply.
        self.initialized.set()

    # --- attributes ---------------------------------------------------------------------------

    def _attributes(self, node: Node, listed: fmt.FileEntry | ListedFile | None = None) -> pyfuse3.EntryAttributes:
        """`listed`: a file's attributes, when the caller has them (a listing) already."""
        attrs = self._new_attributes()
        sig = node.sig
        attrs.st_ino = node.ino
        attrs.st_atime_ns, attrs.st_mtime_ns = (sig.atime_ns, sig.mtime_ns) if node.times is None else node.times
        attrs.st_ctime_ns = sig.ctime_ns
        if node.is_dir:
            logged = node.logged  # the log's mode and owner, never the shadow directory's 0755 root
            attrs.st_mode = stat.S_IFDIR | (sig.mode if logged is None else logged.mode)
            attrs.st_nlink = sig.nlink
            attrs.st_uid, attrs.st_gid = (sig.uid, sig.gid) if logged is None else (logged.uid, logged.gid)
            attrs.st_size = sig.size
            attrs.st_blocks = 0
            return attrs
        entry = self._listed(node) if listed is None else listed
        attrs.st_mode = S_IFREG | entry.mode
        attrs.st_uid, attrs.st_gid = entry.uid, entry.gid
        attrs.st_size = entry.size
        attrs.st_blocks = entry.capacity() // 512
        return attrs

    def _new_attributes(self) -> pyfuse3.EntryAttributes:
        """Attributes with what every entry of this mount shares set: timeouts, block size, and
        a file's one link (a directory sets its own)."""
        attrs = pyfuse3.EntryAttributes()
        attrs.generation = 0
        attrs.entry_timeout = attrs.attr_timeout = self.policy.entry_timeout
        attrs.st_blksize = BLOCK_IO_SIZE
        attrs.st_nlink = 1
        return attrs

    def _listed(self, node: Node) -> fmt.FileEntry | ListedFile:
        """A file's attributes (fusefs.inodes.InodeTable.file_attributes), or the error to answer."""
        entry = self.table.file_attributes(node)
        if entry is None:  # not the log's: no such file; else a YAML that cannot be read
            raise pyfuse3.FUSEError(errno.ENOENT if node.refused is not None else errno.EIO)
        return entry

    def _entry(self, node: Node, *, held: bool = False) -> fmt.FileEntry:
        """The node's entry, or the error to answer; `held`: for an open handle's read or write,
        which answer EIO either way (no ENOENT for a file already open)."""
        entry = self.table.file_entry(node)
        if entry is None:  # not the log's (or deleted): no such file; else a YAML that cannot be read
            raise pyfuse3.FUSEError(errno.ENOENT if node.refused is not None and not held else errno.EIO)
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
        elif (staged := self.staging.named(parent.ino, name)) is not None:
            self.lookups.searches += 1
            staged.lookups += 1
            return self._staged_attributes(staged)
        elif (link := self.links.named(parent.ino, name)) is not None:
            self.lookups.searches += 1
            return self._link_attributes(link)
        else:
            node = self.table.child(parent, name)
            if node is not None and node.provisional:  # served ahead of the log: as the shadow is now
                node = self._reread(parent, name, node.relpath)  # (a chown the table has not taken in yet)
            if node is None or not self._servable(node):
                node = await self._from_shadow(parent, name)
        self.lookups.searches += 1
        if node is None:
            self.lookups.misses += 1
            self.table.negatives.add(parent.ino, name)  # cached: the name's arrival must drop it
            return self._negative()
        attrs = self._attributes(node)
        self.table.remember(node)
        return attrs

    def _servable(self, node: Node) -> bool:
        return node.is_dir or self.table.file_attributes(node) is not None

    async def _from_shadow(self, parent: Node, name: bytes) -> Node | None:
        """A name the table does not serve: look at the shadow tree now, as famfs_fused reads
        the shadow on every lookup. Upstream's CLI appends a file's entry, writes its YAML into
        the shadow itself and opens the file through the mount at once, before inotify has told
        the table. The path is taken in by the table's own `refresh`, so it passes every check a
        watched change does. If the shadow holds something there that is still not served (a
        YAML being written, or not yet the agent's) while this host's agent is behind the log,
        wait for the agent, bounded by AHEAD_WAIT_S, and look again."""
        relpath = parent.relpath + b"/" + name if parent.relpath else name
        if self.table.child(parent, name) is None and not self._in_shadow(relpath):
            return None  # the usual miss: one lstat
        node = self._reread(parent, name, relpath)
        deadline = trio.current_time() + AHEAD_WAIT_S
        pause = APPLY_POLL_MIN_S
        while self._unserved(node, relpath) and trio.current_time() < deadline:
            # Whether the agent was behind is read before the look that follows: once it has
            # played everything, one more look sees what it did, and that look is the answer.
            behind = self._agent_behind()
            if behind:
                await trio.sleep(pause)
                pause = min(2 * pause, APPLY_POLL_MAX_S)
            node = self._reread(parent, name, relpath)
            if not behind:
                break
        return node

    def _reread(self, parent: Node, name: bytes, relpath: bytes) -> Node | None:
        """refresh(relpath) into the table; the node it serves at that name now. What the kernel
        must forget is sent, except about this very name: the reply to the lookup tells it."""
        for notice in self.table.refresh(relpath):
            if (notice.parent, notice.name) != (parent.ino, name):
                self.spawn_notice(notice)
        return self.table.child(parent, name) if parent.present else None

    def _unserved(self, node: Node | None, relpath: bytes) -> bool:
        """Whether the shadow holds something at relpath that the table does not serve."""
        if node is not None:
            return not self._servable(node)
        return self._in_shadow(relpath)

    def _in_shadow(self, relpath: bytes) -> bool:
        """A file or directory at relpath in the shadow tree, no symlink on the way followed."""
        return shadow_reader.signature_beneath(self.table.shadow_root, relpath) is not None

    async def _await_agent(self, node: Node) -> None:
        """A file refused as not the log's while this host's agent is behind the log: wait for
        it, bounded by AHEAD_WAIT_S, checking again after each pause. A compaction moves the log
        under the owner map until the agent has seen the move and carried the map over
        (docs/reclaim.md, "What the mount serves while a host moves"); or the agent is about to
        play the file's entry."""
        deadline = trio.current_time() + AHEAD_WAIT_S
        pause = APPLY_POLL_MIN_S
        while (node.present and node.refused is not None and self.table.file_entry(node) is None
               and trio.current_time() < deadline and self._agent_behind()):
            await trio.sleep(pause)
            pause = min(2 * pause, APPLY_POLL_MAX_S)

    def _agent_behind(self) -> bool:
        """This host's agent follows the log and has not yet played all of it (its cursor in
        state.json, saved after each batch, against the log's next_index)."""
        state = shadowdir.read_state(os.fsdecode(self.shadow_dir))
        if state is None or not state.following or state.stalled_at is not None:
            return False
        famfs_log = self.devices.served.famfs_log
        with contextlib.suppress(fmt.FormatError):  # a compacted log the agent has not moved to yet
            if read_record(famfs_log.device.fresh(*RECORD_SPAN)).epoch != state.log_epoch:
                return True
        return state.applied_index + 1 < famfs_log.next_index()

    @guarded
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            staged = self.staging.by_ino.get(ino)
            if staged is not None:
                staged.lookups -= count
            else:
                self.table.forget(ino, count)

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        staged = self.staging.by_ino.get(inode)
        if staged is not None:
            return self._staged_attributes(staged)
        link = self.links.by_ino.get(inode)
        if link is not None:
            return self._link_attributes(link)
        return self._attributes(self._node(inode))

    @guarded
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """On the master's mount: a file still being written changes its pending entry (nothing
        of it is logged yet), and a size given to it while it is empty is the fast path
        (allocated and logged at once, then written in place); a logged file or directory gets a
        SETATTR entry for a new mode or owner, answered once this host's agent has played it.
        Times are kept for the mount's lifetime, not logged. A client's mount changes nothing."""
        staged = self.staging.by_ino.get(inode)
        if staged is not None and staged.committing:
            await staged.settled.wait()  # closed a moment ago and being logged: change what is logged
            staged = None
        link = self.links.by_ino.get(inode)
        if link is not None:
            return self._set_link(link, attr, fields)
        if staged is None:
            return await self._set_logged(self._node(inode), attr, fields)
        owner = staged.owner
        staged.owner = Owner(stat.S_IMODE(attr.st_mode) if fields.update_mode else owner.mode,
                             attr.st_uid if fields.update_uid else owner.uid,
                             attr.st_gid if fields.update_gid else owner.gid)
        if fields.update_atime or fields.update_mtime:
            now = time.time_ns()
            atime, mtime = staged.times or (now, now)  # (touch -m: the other one is now, as on any file system)
            staged.times = (attr.st_atime_ns if fields.update_atime else atime,
                            attr.st_mtime_ns if fields.update_mtime else mtime)
        if fields.update_size:
            if attr.st_size > 0 and not staged.data:
                await self._commit(staged, size=attr.st_size)
                return self._attributes(self._node(inode))
            try:
                self.staging.truncate(staged, attr.st_size)
            except StagingFull:
                staged.failed = "a truncate did not fit the staging area (EFBIG)"
                raise self._staging_full(staged) from None
        return self._staged_attributes(staged)

    async def _set_logged(self, node: Node, attr: pyfuse3.EntryAttributes,
                          fields: pyfuse3.SetattrFields) -> pyfuse3.EntryAttributes:
        """A logged file or directory. A size change is refused (a FILE entry fixes the size);
        a new mode or owner is one SETATTR entry (none when it is the current one: cp -r sets a
        new directory's mode again, rsync --inplace truncates to the size it wrote); times are
        kept in the node. The root and .meta are no entry's: their mode and owner stay."""
        current = self._attributes(node)
        mode = stat.S_IMODE(attr.st_mode) if fields.update_mode else stat.S_IMODE(current.st_mode)
        owner = Owner(mode, attr.st_uid if fields.update_uid else current.st_uid,
                      attr.st_gid if fields.update_gid else current.st_gid)
        resized = fields.update_size and attr.st_size != current.st_size
        changed = owner != Owner(stat.S_IMODE(current.st_mode), current.st_uid, current.st_gid)
        timed = fields.update_atime or fields.update_mtime
        if self.writer is None or resized or (changed and not self._loggable(node)):
            raise self._deny()
        if changed:
            node = await self._log_setattr(node, owner)
        if timed:
            atime, mtime = node.times or (current.st_atime_ns, current.st_mtime_ns)
            node.times = (attr.st_atime_ns if fields.update_atime else atime,
                          attr.st_mtime_ns if fields.update_mtime else mtime)
        return self._attributes(node)

    def _set_link(self, link: Link, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> pyfuse3.EntryAttributes:
        """lchown and times of a link of this mount's (a link has no mode of its own, no size)."""
        if fields.update_size:
            raise self._deny()
        link.uid = attr.st_uid if fields.update_uid else link.uid
        link.gid = attr.st_gid if fields.update_gid else link.gid
        link.atime_ns = attr.st_atime_ns if fields.update_atime else link.atime_ns
        link.mtime_ns = attr.st_mtime_ns if fields.update_mtime else link.mtime_ns
        return self._link_attributes(link)

    def _link_attributes(self, link: Link) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = link.ino
        attrs.generation = 0
        attrs.entry_timeout = attrs.attr_timeout = self.policy.entry_timeout  # only this mount changes it
        attrs.st_mode = stat.S_IFLNK | 0o777
        attrs.st_nlink = 1
        attrs.st_uid, attrs.st_gid = link.uid, link.gid
        attrs.st_size = len(link.target)
        attrs.st_atime_ns, attrs.st_mtime_ns, attrs.st_ctime_ns = link.atime_ns, link.mtime_ns, link.ctime_ns
        attrs.st_blksize = BLOCK_IO_SIZE
        return attrs

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        link = self.links.by_ino.get(inode)
        if link is None:
            raise pyfuse3.FUSEError(errno.EINVAL)  # not a link: famfs serves no other
        return link.target

    @staticmethod
    def _loggable(node: Node) -> bool:
        """Whether a log entry made this node (the root and .meta are no entry's)."""
        return node.ino != ROOT_INODE and node.relpath.split(b"/", 1)[0] != shadow_reader.META_NAME

    async def _log_setattr(self, node: Node, owner: Owner) -> Node:
        """Log the SETATTR and wait until this host's agent shows it: a file's YAML renamed over
        (another shadow inode), a directory's xattr naming the entry. The node then served."""
        assert self.writer is not None
        index = await self._write_log(self.writer.setattr, node.relpath.decode(), owner)
        if index is None:
            return node  # it had them already: famfsctl or another request was first
        if node.is_dir:
            record = DirRecord(index, owner.mode, owner.uid, owner.gid).encode()
            root = self.table.shadow_root
            played: Callable[[Signature | None], bool] = \
                lambda sig: sig is not None and shadow_reader.dir_xattr(root, node.relpath) == record
        else:
            played = functools.partial(self._yaml_shows, node.relpath, owner)
        parent = self._node(node.parent)
        found = await self._applied(node.relpath, played, parent.ino, node.name)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)  # removed meanwhile (famfsctl rm): the next lookup tells
        return found

    # --- directories --------------------------------------------------------------------------

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        for staged in [staged for staged in self.staging.by_ino.values() if staged.parent == inode and staged.committing]:
            await staged.settled.wait()  # files closed just before (cp, then ls or diff) are listed
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        assert node.children is not None
        # A sorted snapshot: offsets stay meaningful however the directory changes meanwhile.
        fh = self._new_fh()
        links = [(link.name, link.ino) for link in self.links.in_dir(node.ino)]
        self.dir_handles[fh] = (node, sorted([*node.children.items(), *links]))
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory, listing = self.dir_handles[fh]
        table = self.table
        nodes, reply = table.nodes, pyfuse3.readdir_reply
        dir_fd: int | None = None  # opened for the first YAML this call loads (a cold listing loads hundreds)
        if not directory.record_read and directory.present:
            table.list_from_record(directory)  # every file it names listed at once: none then needs a read
        # One object for every listed file of this call: readdir_reply copies it into the reply,
        # and every field that differs from one file to the next is set for each.
        reused = self._new_attributes()
        try:
            for index in range(start_id, len(listing)):
                name, ino = listing[index]
                node = nodes.get(ino)
                if node is None:
                    link = self.links.by_ino.get(ino)
                    if link is not None and not reply(token, name, self._link_attributes(link), index + 1):
                        return
                    continue
                if not node.present:
                    continue
                listed = node.listed
                if listed is not None and node.entry is None and node.error is None:  # file_attributes' answer
                    # _attributes of a file, inlined (the same fields from the same places): a
                    # cold listing of 100,000 files runs this for each.
                    size, mode, uid, gid, mapped = listed
                    sig = node.sig
                    reused.st_ino = ino
                    if node.times is None:
                        reused.st_atime_ns = sig.atime_ns
                        reused.st_mtime_ns = sig.mtime_ns
                    else:
                        reused.st_atime_ns, reused.st_mtime_ns = node.times
                    reused.st_ctime_ns = sig.ctime_ns
                    reused.st_mode = S_IFREG | mode
                    reused.st_uid = uid
                    reused.st_gid = gid
                    reused.st_size = size
                    reused.st_blocks = mapped // 512
                    if not reply(token, name, reused, index + 1):
                        return
                    node.lookups += 1  # table.remember, inlined
                    continue
                if node.is_dir:
                    attrs = self._attributes(node)
                else:
                    if dir_fd is None and table.needs_read(node) and directory.present:
                        dir_fd = shadow_reader.open_dir(table.shadow_root, directory.relpath)
                    entry = table.file_attributes(node, dir_fd)
                    if entry is None:
                        continue  # a refused YAML: lookup answers EIO (ENOENT: not the log's), not listed
                    attrs = self._attributes(node, entry)
                if not reply(token, name, attrs, index + 1):
                    return
                table.remember(node)  # readdirplus: every entry the kernel took is a lookup
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    @guarded
    async def releasedir(self, fh: int) -> None:
        del self.dir_handles[fh]

    # --- files --------------------------------------------------------------------------------

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        staged = self.staging.by_ino.get(inode)
        if staged is not None and staged.committing:
            await staged.settled.wait()  # closed a moment ago and being logged: open what is logged
        elif staged is not None:
            if flags & os.O_TRUNC:
                self.staging.truncate(staged, 0)
            return self._open_staged(staged)
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if node.present and self.table.file_entry(node) is None:
            # Refused as last read: upstream's CLI may have just rewritten the YAML in place
            # (truncate, write) and closed it, its last events not yet taken in: read it again.
            for notice in self.table.refresh(node.relpath):
                self.spawn_notice(notice)
            await self._await_agent(node)
        self._entry(node)
        if self.table.recheck(node) is not None:
            raise pyfuse3.FUSEError(errno.EIO)  # served ahead of the log, its units taken since
        if flags & os.O_TRUNC:
            raise self._deny()  # libfuse negotiates atomic O_TRUNC: the truncate arrives here
        if not self.devices.intact():
            raise pyfuse3.FUSEError(errno.EIO)  # the device is not the one the shadow tree describes
        served = self.devices.served
        if flags & os.O_ACCMODE != os.O_RDONLY and (self.policy.read_only or not served.data.writable):
            raise pyfuse3.FUSEError(errno.EROFS)
        await self._leased(None)  # famfs.open maps through an open: none while self-fenced
        pinned = await self._pin(node, look=True)
        fh = self._new_fh()
        self.file_handles[fh] = Handle(node, served.generation, self.lease.incarnation, pinned, node.provisional)
        node.opens += 1
        return pyfuse3.FileInfo(fh=fh, direct_io=self.policy.cache == "direct",
                                keep_cache=self.policy.cache == "always")

    def _served(self, handle: Handle) -> Served:
        """The device to serve this handle's bytes from; ESTALE once the file system it was
        opened on is gone (re-made, or the image replaced), EIO while nothing may be served."""
        served = self.devices.served
        if handle.generation != served.generation:
            raise pyfuse3.FUSEError(errno.ESTALE)
        if not self.devices.intact():
            raise pyfuse3.FUSEError(errno.ESTALE if self.devices.refusal is None else errno.EIO)
        return served

    @guarded
    async def read(self, fh: int, off: int, size: int) -> Any:
        handle = self.file_handles[fh]
        if isinstance(handle, Staged):
            if handle.gone:
                raise pyfuse3.FUSEError(errno.EIO)  # dropped (its close said why)
            return bytes(handle.data[off:off + size])
        data = self._read_now(handle, off, size)
        if data is not None:
            return data
        await self._leased(handle.incarnation)
        served = self._served(handle)  # no await since the check: the device it checked
        node = handle.node
        entry = self._mapped(handle)
        ahead = node.provisional
        try:
            if not (ahead or self.lease.guarded()):
                return served.data.read(entry, off, size)
            data = bytes(served.data.read(entry, off, size))
        except DataError as err:  # a device this host has not found (logged once by famfs.devices)
            raise pyfuse3.FUSEError(err.errno) from None
        # Checked once more after the copy: a lease that expired, or a fence that came, while the
        # bytes were copied must not answer them (the space may be another file's by now); nor
        # units of a file served ahead of the log that the log gave another file meanwhile.
        if (code := self._refusal(handle.incarnation)) is not None:
            raise pyfuse3.FUSEError(code)
        if ahead and self.table.recheck(node) is not None:
            self._unserved_ahead(node)
        return data

    def _read_now(self, handle: Handle, off: int, size: int) -> memoryview | bytes | None:
        """The common read, answered at once: a logged file (not served ahead of the log, its YAML
        parsed), on the device it was opened on, intact, the lease holding. None on any doubt:
        read()'s full path then answers, with every wait, refusal and error (the same answer
        this one would give when it gives one). Under a lease, the bytes are copied first and the
        lease checked once, after the copy: that check is the one that counts (docs/reclaim.md,
        step 4); the full path's check before it is there to wait for a starting agent."""
        node, devices = handle.node, self.devices
        served, entry = devices.served, node.entry
        if entry is None or node.provisional or handle.generation != served.generation or not devices.intact():
            return None
        lease, record = self.lease, served.famfs_log.device.map
        try:
            if not lease.guarded():  # no lease window: checked, then served from the mapping (no copy)
                if lease.refusal(record, handle.incarnation) is not None or lease.guarded():
                    return None
                return served.data.read(entry, off, size)
            data = served.data.read(entry, off, size, copy=True)
        except DataError:
            return None
        return data if lease.refusal(record, handle.incarnation) is None else None

    def _mapped(self, handle: Handle) -> fmt.FileEntry:
        """The extents a read or write goes through: the node's (another file at the path is
        another node), checked again first if the file is served ahead of the log (docs/fusefs.md). A
        handle opened ahead of the log whose file is not served now: EIO (not ENOENT)."""
        node = handle.node
        if node.provisional and self.table.recheck(node) is not None:
            self._unserved_ahead(node)
        if handle.ahead and self.table.file_entry(node) is None:
            raise pyfuse3.FUSEError(errno.EIO)
        return self._entry(node, held=True)

    def _unserved_ahead(self, node: Node) -> NoReturn:
        """A file served ahead of the log whose units are not free any more: EIO, and the kernel
        drops its cached pages and mappings (the next fault asks again, and is refused too)."""
        self.spawn_notice(Notice(NoticeKind.INODE, node.ino))
        raise pyfuse3.FUSEError(errno.EIO)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.file_handles[fh]
        if isinstance(handle, Staged) and handle.committing:
            await handle.settled.wait()  # being logged: the bytes go in place once it is
            handle = self.file_handles[fh]
        if isinstance(handle, Staged):
            if handle.gone:
                raise pyfuse3.FUSEError(errno.EIO)
            try:
                await self._check_space(handle, off + len(buf))
                return self.staging.write(handle, off, buf)
            except StagingFull:
                handle.failed = "a write did not fit the staging area (EFBIG)"
                raise self._staging_full(handle) from None
            except pyfuse3.FUSEError as err:
                handle.failed = f"a write was refused ({errno.errorcode.get(err.errno, err.errno)})"
                raise
        await self._leased(handle.incarnation)
        served = self._served(handle)
        entry = self._mapped(handle)
        try:
            return served.data.write(entry, off, buf)
        except DataError as err:
            raise pyfuse3.FUSEError(err.errno) from None

    @guarded
    async def flush(self, fh: int) -> None:
        # Logged files: writes went straight into the device mapping. A file being written through
        # the master's mount is logged at release, not here: a flush comes at every close(2),
        # of a dup'ed descriptor too (a shell's `> file` closes one before writing), never only the last.
        return None

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.file_handles[fh]
        if isinstance(handle, Staged):
            return  # nothing of it is on the device before its last close
        await trio.to_thread.run_sync(self._served(handle).data.device.map.flush)

    @guarded
    async def release(self, fh: int) -> None:
        handle = self.file_handles.pop(fh)
        if isinstance(handle, Staged):
            handle.opens -= 1
            if handle.opens == 0 and not (handle.gone or handle.committing):
                if handle.unlinked or handle.failed:
                    self._drop(handle, handle.failed or "unlinked before it was closed")
                else:
                    # The last close: log it now. The kernel does not wait for release, so a
                    # refusal here can only be logged (file_dropped): the checks that can answer
                    # the program come earlier (at create, and at writes: _check_space).
                    with contextlib.suppress(pyfuse3.FUSEError):
                        await self._commit(handle)
            return
        if handle.pinned is not None:
            self.pins.drop(handle.pinned)
        if self.table.release(handle.node):
            self.spawn_notice(Notice(NoticeKind.INODE, handle.node.ino))

    # --- file system --------------------------------------------------------------------------

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        figures = await trio.to_thread.run_sync(self.devices.served.capacity.current)
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
        if not name.startswith(USER_XATTRS):
            # security.*, system.posix_acl_*: not supported here. ls -l asks for two of them per
            # file (each a request); EOPNOTSUPP makes it stop asking on this file system.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if inode not in self.staging.by_ino and inode not in self.links.by_ino:
            self._node(inode)
        if name == SHADOW_XATTR:
            return self.shadow_dir
        if inode == ROOT_INODE and name == STATUS_XATTR:
            return self.status().encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode in self.links.by_ino or inode in self.staging.by_ino:
            return []
        self._node(inode)
        return [SHADOW_XATTR, STATUS_XATTR] if inode == ROOT_INODE else []

    @guarded
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._xattr_refused(name)

    @guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._xattr_refused(name)

    def _xattr_refused(self, name: bytes) -> pyfuse3.FUSEError:
        """famfs keeps no extended attributes. Outside `user.`, and on the master's mount,
        EOPNOTSUPP: what cp -a and tar --xattrs take for "none here" (an ACL setter then falls
        back to chmod), as getxattr answers; a client's `user.` change is a refused change (EPERM)."""
        if self.writer is not None or not name.startswith(USER_XATTRS):
            return pyfuse3.FUSEError(errno.EOPNOTSUPP)
        return self._deny()

    # --- the namespace: written on the master, refused elsewhere -------------------------------

    @guarded
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        writer, parent, raw, relpath = self._new_name(parent_inode, name)
        owner = self._owner(parent, mode, ctx, directory=False)
        # Refused now, not at close; from the writer's memory when it can, so a program's next
        # create waits neither for a thread nor for the group of its previous files being logged.
        if not writer.precheck(relpath, owner):
            await self._write_log(writer.check_new, relpath, owner)
        staged = Staged(ino=self.table.reserve(raw), parent=parent.ino, name=name, relpath=relpath, owner=owner)
        staged.lookups = 1
        self.staging.add(staged)
        return self._open_staged(staged), self._staged_attributes(staged)

    @guarded
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        writer, parent, raw, relpath = self._new_name(parent_inode, name)
        await self._write_log(writer.mkdir, relpath, self._owner(parent, mode, ctx, directory=True))
        node = await self._applied(raw, lambda sig: sig is not None and sig.is_dir, parent.ino, name)
        if node is None or not node.is_dir:
            raise pyfuse3.FUSEError(errno.EIO)  # changed again meanwhile (famfsctl): the next lookup tells
        self.table.remember(node)
        return self._attributes(node)

    @guarded
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._deny()

    @guarded
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """The master's mount keeps a link for itself, never logged (fusefs/links.py)."""
        _, parent, raw, relpath = self._new_name(parent_inode, name)
        if not self.links.explained:
            self.links.explained = True
            log.warning("symlinks_not_logged", first=relpath, target=os.fsdecode(target),
                        why="famfs has no symbolic links: each one made here is served by this mount only, until "
                            "it is removed or the mount stops; no other host sees it (said once)")
        wall = time.time_ns()
        owner = self._owner(parent, 0o777, ctx, directory=False)
        link = Link(self.table.new_ino(), parent.ino, name, target, owner.uid, owner.gid, wall, wall, wall)
        self.links.add(link)
        return self._link_attributes(link)

    @guarded
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._deny()

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self.writer is None:
            raise self._deny()
        parent = self._node(parent_inode)
        link = self.links.named(parent.ino, name)
        if link is not None:
            self.links.remove(link)
            return
        staged = self.staging.named(parent.ino, name)
        if staged is not None and staged.committing:
            await staged.settled.wait()  # being logged: remove what was logged
        elif staged is not None:
            self.staging.unname(staged)  # never logged: it goes at its last close, nothing logged
            if staged.opens == 0:
                self._drop(staged, "unlinked")
            return
        node = self._existing(parent, name)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._remove(self.writer.unlink, parent, node)

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self.writer is None:
            raise self._deny()
        parent = self._node(parent_inode)
        node = self._existing(parent, name)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.links.in_dir(node.ino):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)  # links of this mount's are in it
        await self._remove(self.writer.rmdir, parent, node)

    @guarded
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        if self.writer is not None:
            # The log has no rename; EXDEV makes mv copy and remove instead, which the log has.
            raise pyfuse3.FUSEError(errno.EXDEV)
        raise self._deny()

    def _deny(self) -> pyfuse3.FUSEError:
        """EPERM for a change of the namespace; the first one is explained in the log."""
        if not self.denial_explained:
            self.denial_explained = True
            if self.policy.read_only_namespace:
                log.warning("namespace_change_refused", errno="EPERM",
                            why="this mount serves the namespace read-only (-o ro_namespace, as upstream's "
                                "famfs_fused): files and directories are made and removed with the famfs CLI, "
                                "which logs them; file data stays writable", master_system_uuid=self.policy.master)
            elif self.writer is None:
                log.warning("namespace_change_refused", errno="EPERM",
                            why="files and directories are created, truncated, renamed and removed only on the master "
                                "host (famfsctl or its mount), which logs the change for every host; file data stays "
                                "writable here", master_system_uuid=self.policy.master,
                            hint="famfsctl creat|cp|mkdir|rm, or cp/mkdir/rm in the mount, on the master")
            else:
                log.warning("namespace_change_refused", errno="EPERM",
                            why="famfs logs files of a fixed size: a logged file cannot be truncated or "
                                "overwritten, and there are no hard links or special files (docs/fusefs.md)")
        return pyfuse3.FUSEError(errno.EPERM)

    # --- helpers of the master's namespace changes ---------------------------------------------

    def _new_name(self, parent_inode: int, name: bytes) -> tuple[NamespaceWriter, Node, bytes, str]:
        """The writer, the parent and the new path (bytes and text) of a name to be created."""
        if self.writer is None:
            raise self._deny()
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not parent.present:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.table.child(parent, name) is not None or self.staging.named(parent.ino, name) is not None \
                or self.links.named(parent.ino, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        raw = parent.relpath + b"/" + name if parent.relpath else name
        try:
            relpath = raw.decode()
        except UnicodeDecodeError:
            log.info("namespace_change_refused", errno="EINVAL", path=os.fsdecode(raw),
                     reason="famfs paths are UTF-8 (upstream's YAML cannot hold anything else)")
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        return self.writer, parent, raw, relpath

    def _existing(self, parent: Node, name: bytes) -> Node:
        node = self.table.child(parent, name) if parent.is_dir and parent.present else None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    @staticmethod
    def _owner(parent: Node, mode: int, ctx: pyfuse3.RequestContext, *, directory: bool) -> Owner:
        """The requester's owner and mode (umask applied), with the setgid directory rule the
        kernel leaves to a FUSE file system: the parent's group, and setgid for a directory."""
        perm = stat.S_IMODE(mode) & ~ctx.umask
        gid = ctx.gid
        logged = parent.logged  # the log's mode and owner (the shadow directory is root's 0755)
        if logged is not None and logged.mode & stat.S_ISGID:
            gid = logged.gid
            if directory:
                perm |= stat.S_ISGID
        return Owner(perm, ctx.uid, gid)

    async def _write_log(self, call: Callable[..., T], *args: Any) -> T:
        """One writer call in a worker thread (device lock and device writes never block the trio
        thread); a refusal answers the request with its errno, said once in the log."""
        try:
            return await trio.to_thread.run_sync(functools.partial(call, *args), limiter=self.writer_slot)
        except NamespaceError as err:
            raise self._refused(err) from None

    @staticmethod
    def _refused(err: NamespaceError) -> pyfuse3.FUSEError:
        code = err.errno or errno.EIO  # (a NamespaceError always has one)
        emit = log.warning if code in (errno.ENOSPC, errno.EIO) else log.info
        emit("namespace_change_refused", errno=errno.errorcode.get(code, code), reason=err.strerror)
        return pyfuse3.FUSEError(code)

    async def _applied(self, relpath: bytes, played: Callable[[Signature | None], bool], parent: int,
                       name: bytes) -> Node | None:
        """Wait until famfs-agent has played a logged change into the shadow tree (`played` says
        when), then take it into the inode table; the node now at relpath. What the kernel must
        forget is sent, except about this very name: the reply to this request tells it that. None:
        nothing is at relpath now."""
        deadline = trio.current_time() + self.policy.apply_wait_s
        pause = APPLY_POLL_MIN_S
        while not played(shadow_reader.signature_beneath(self.table.shadow_root, relpath)):
            if trio.current_time() >= deadline:
                log.error("change_not_played", path=os.fsdecode(relpath), waited_s=self.policy.apply_wait_s,
                          why="the entry is logged but famfs-agent has not played it into the shadow tree; "
                              "is `famfs-agent --follow` running on this host?")
                raise pyfuse3.FUSEError(errno.EIO)
            await trio.sleep(pause)
            pause = min(2 * pause, APPLY_POLL_MAX_S)
        for notice in self.table.refresh(relpath):
            if (notice.parent, notice.name) != (parent, name):
                self.spawn_notice(notice)
        ino = self.table.by_path.get(relpath)
        return None if ino is None else self.table.nodes[ino]

    def _yaml_shows(self, relpath: bytes, owner: Owner, sig: Signature | None) -> bool:
        """Whether the shadow file at relpath holds this mode and owner (the agent renames the
        whole YAML over: a new shadow inode, which inotify may have taken in already)."""
        if sig is None or sig.is_dir:
            return False
        try:
            entry = shadow_reader.load_file(self.table.shadow_root, relpath, self.table.geometry)
        except (OSError, fmt.FormatError):
            return False
        return Owner(entry.mode, entry.uid, entry.gid) == owner

    async def _remove(self, call: Callable[[str], int], parent: Node, node: Node) -> None:
        """Log an unlink or rmdir and wait until the agent has removed the shadow path."""
        await self._write_log(call, node.relpath.decode())
        before = node.sig.st_ino
        await self._applied(node.relpath, lambda sig: sig is None or sig.st_ino != before, parent.ino, node.name)

    def _open_staged(self, staged: Staged) -> pyfuse3.FileInfo:
        staged.opens += 1
        fh = self._new_fh()
        self.file_handles[fh] = staged
        return pyfuse3.FileInfo(fh=fh, direct_io=self.policy.cache == "direct", keep_cache=False)

    def _staged_attributes(self, staged: Staged) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = staged.ino
        attrs.generation = 0
        attrs.entry_timeout = attrs.attr_timeout = 0  # it changes with every write, and at its close
        attrs.st_mode = stat.S_IFREG | staged.owner.mode
        attrs.st_nlink = 1
        attrs.st_uid, attrs.st_gid = staged.owner.uid, staged.owner.gid
        attrs.st_size = len(staged.data)
        attrs.st_blksize = BLOCK_IO_SIZE
        if staged.times is not None:
            attrs.st_atime_ns, attrs.st_mtime_ns = staged.times
        return attrs

    async def _commit(self, staged: Staged, size: int | None = None) -> None:
        """Log a file written through the mount: allocate, copy its bytes into device memory,
        append its entry (one writer call), then serve it from the inode table under the same
        inode. With `size` (the fast path), allocate that size and log it at once, no bytes
        copied: the writer then writes in place. A refusal drops the file whole."""
        assert self.writer is not None
        staged.committing = True
        # Not copied: nothing changes these bytes while they are logged (a write, a truncate or a
        # size change of a committing file waits for `settled`; the staging area drops its
        # reference rather than clear the buffer). One copy of every file less, into device memory.
        data = staged.data
        try:
            if size is None:  # its bytes are at hand: logged with the files closed at about the same time
                await self._commit_grouped(staged, data)
            else:
                await self._write_log(self.writer.create, staged.relpath, size, staged.owner, None)
        except pyfuse3.FUSEError:
            self._drop(staged, "the log refused it")
            raise
        relpath = staged.relpath.encode()
        try:
            node = await self._applied(relpath, lambda sig: sig is not None and not sig.is_dir, staged.parent,
                                       staged.name)
        finally:
            self.staging.remove(staged)  # logged: from now on served like any file (or, late, once played)
        if node is None or node.ino != staged.ino:
            self.table.reserved.pop(relpath, None)
            log.error("logged file not served", path=staged.relpath, why="its shadow file is not the one logged")
            raise pyfuse3.FUSEError(errno.EIO)
        node.lookups += staged.lookups
        node.times = staged.times
        node.opens += staged.opens
        for fh, handle in list(self.file_handles.items()):
            if handle is staged:
                self.file_handles[fh] = Handle(node, self.devices.served.generation, self.lease.incarnation,
                                               await self._pin(node, look=False))

    def _drop(self, staged: Staged, why: str) -> None:
        """Forget a file that was never logged (nothing of it is on the device or in the log)."""
        self.staging.remove(staged)
        self.table.reserved.pop(staged.relpath.encode(), None)
        log.warning("file_dropped", path=staged.relpath, reason=why, note="nothing was logged for it")
        if staged.lookups > 0 and not staged.unlinked:
            self.spawn_notice(Notice(NoticeKind.DELETED, staged.ino, staged.parent, staged.name))

    def drop_all_staged(self, why: str) -> None:
        """At unmount or SIGTERM: files still open are dropped whole, never logged half-written."""
        for staged in list(self.staging.by_ino.values()):
            if not staged.committing:
                self._drop(staged, why)

    async def _check_space(self, staged: Staged, end: int) -> None:
        """ENOSPC for the write that takes a new file past the device's free space, checked each
        time it grows into one more allocation unit past its first (every file gets one), so the
        program hears it: a refusal at its last close could only be logged."""
        unit = self.devices.served.geometry.alloc_unit
        units = -(-end // unit)
        if units <= max(1, -(-len(staged.data) // unit)):
            return
        figures = await trio.to_thread.run_sync(self.devices.served.capacity.replayed)
        figures = await self._wait_for_space(units, trio.current_time() + self.policy.reclaim_wait_s, figures)
        if units > figures.free_units:
            log.warning("namespace_change_refused", errno="ENOSPC", path=staged.relpath,
                        reason=f"{units * unit} bytes do not fit: {figures.free_units * unit} bytes are free on "
                               f"{self.devices.path}, {figures.held_units * unit} held by deleted files not yet "
                               f"reclaimed")
            raise pyfuse3.FUSEError(errno.ENOSPC)

    async def _wait_for_space(self, units: int, deadline: float, figures: Capacity) -> Capacity:
        """The device's figures (`figures`: as last read) once `units` fit, or once space held by
        deleted files cannot make them fit, or at `deadline`. Held space comes back once the
        reclaim coordinator has reclaimed it (docs/reclaim.md): waited for only while one runs on
        this host, as famfsctl creat and famfs.Master.create wait."""
        served = self.devices.served
        pause = APPLY_POLL_MIN_S
        while (figures.free_units < units <= figures.free_units + figures.held_units
               and trio.current_time() < deadline and hosts.coordinator_running(served.famfs_log.device.fd)):
            await trio.sleep(pause)
            pause = min(2 * pause, RECLAIM_POLL_MAX_S)
            figures = await trio.to_thread.run_sync(served.capacity.replayed)
        return figures

    async def _commit_grouped(self, staged: Staged, data: bytes) -> None:
        """Log the file with the others closed about now. The write-time check (_check_space) saw
        room, but another writer (famfsctl, famfs.Master) may have taken it since, while deleted
        files' space is still being reclaimed: then wait for that, bounded by [master] reclaim_wait, and
        try again. Any other refusal, or one no reclaim can answer, is the close's answer."""
        assert self.grouped is not None
        units = max(1, -(-len(data) // self.devices.served.geometry.alloc_unit))
        deadline = trio.current_time() + self.policy.reclaim_wait_s
        while True:
            try:
                await self.grouped.commit(staged.relpath, staged.owner, data)
                return
            except NamespaceError as err:
                refusal = err
            if refusal.errno != errno.ENOSPC or trio.current_time() >= deadline:
                raise self._refused(refusal)
            before = await trio.to_thread.run_sync(self.devices.served.capacity.replayed)
            if before.free_units >= units or before.free_units + before.held_units < units:
                raise self._refused(refusal)  # not space (the log is full), or more than reclaim can give
            if (await self._wait_for_space(units, deadline, before)).free_units < units:
                raise self._refused(refusal)

    def _staging_full(self, staged: Staged) -> pyfuse3.FUSEError:
        if not self.staging_full_explained:
            self.staging_full_explained = True
            log.warning("staging_full", errno="EFBIG", path=staged.relpath, limit_mib=self.policy.staging_bytes >> 20,
                        why="new files' bytes are held in memory until their last close, up to [mount] staging_mib",
                        hint="give a large file its size first (ftruncate on the new, empty file): it is allocated "
                             "at once and written in place")
        return pyfuse3.FUSEError(errno.EFBIG)

    # --- reclaim: the lease and pins (fusefs/lease.py, famfs/pins.py) ----------------------------

    async def _leased(self, incarnation: int | None) -> None:
        """Raise EIO (or ESTALE for a fenced incarnation's handle) unless the agent's lease allows
        serving bytes now for a handle opened under `incarnation` (None: an open). While the agent
        is starting (a restart's catch-up), wait a little for its lease rather than answer EIO."""
        deadline = trio.current_time() + LEASE_WAIT_S
        while (code := self._refusal(incarnation)) is not None:
            if not (self.lease.starting and trio.current_time() < deadline):
                raise pyfuse3.FUSEError(code)
            await trio.sleep(LEASE_POLL_S)

    def _refusal(self, incarnation: int | None) -> int | None:
        return self.lease.refusal(self.devices.served.famfs_log.device.map, incarnation)

    async def _pin(self, node: Node, *, look: bool) -> bytes | None:
        """Pin the node's path (None: no agent record, nothing to pin for), then, with `look`,
        check its YAML is still the one served: ENOENT if it is gone or another (*pin, then
        look*: the agent unlinks before it tests the pin)."""
        if self.lease.slot is None:
            return None
        relpath = node.relpath
        deadline = trio.current_time() + PIN_WAIT_S
        try:
            while not self.pins.try_take(relpath):
                if trio.current_time() >= deadline:
                    raise pyfuse3.FUSEError(errno.EIO)
                await trio.sleep(RETRY_S)
        except OSError as err:
            log.error("pin failed", path=os.fsdecode(relpath), error=str(err))
            raise pyfuse3.FUSEError(errno.EIO) from None
        if look and not self._still_served(node):
            self.pins.drop(relpath)
            raise pyfuse3.FUSEError(errno.ENOENT)
        return relpath

    def _still_served(self, node: Node) -> bool:
        """The YAML at the node's path is the one served: the same shadow file, or one with the
        same entry (the agent renames its own copy over a YAML upstream's CLI wrote ahead of it:
        a new inode, the same file)."""
        if shadow_reader.signature_beneath(self.table.shadow_root, node.relpath) == node.sig:
            return True
        try:
            return shadow_reader.load_file(self.table.shadow_root, node.relpath, self.table.geometry) == node.entry
        except (OSError, fmt.FormatError):
            return False  # gone, or not a shadow file now

    def _new_fh(self) -> int:
        fh = self.next_fh
        self.next_fh += 1
        return fh
