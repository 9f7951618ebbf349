"""The shadow-tree writer: applies log entries to `<shadow>/root` atomically (docs/agent.md).

Every change under root/ is one rename or one unlink: a new file or directory is built whole in
`<shadow>/.agent/staging/` and renamed into place with RENAME_NOREPLACE (so an existing name is
never clobbered by accident and the kernel, not a racy stat, tells us it exists); a changed file
is renamed over the old one; a deleted file is unlinked. A process killed at any instant leaves
at most a stale name in staging/, which `open()` removes.

A first play into an empty root/ (`begin_build`) writes every file and directory straight into a
tree under staging/ (one open or mkdir each, no rename; the files made by a forked process,
agent/first_play.py) and moves its top-level names into root/ at the end (`finish_build`), each a
whole subtree. The follower saves no cursor meanwhile: a kill
leaves root/ empty or partly moved in, with the cursor still before entry 0, so the next run
resets and plays again.

The tree itself is the namespace of files: the agent keeps no per-file table (a 256 MiB log
holds half a million of them), so memory stays flat. Directories are few and their order matters
(a file whose parent was logged later is rejected), so they are kept with the index of the MKDIR
that made them, in memory and in an append-only journal the cursor makes exact on restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import operator
import os
import shutil
import stat
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TypeVar

import structlog

from agent.first_play import FileCreator, NameFilter, write_new_file
from agent.listings import ListingWriter
from famfs import format as fmt
from famfs import devices, rules, safepath
from famfs.famfslog import FamfsLog
from famfs.ownership import FREE, HELD, OwnerMap, OwnerMapError
from famfs.shadowdir import (
    AGENT_DIR,
    AGENT_DIR_MODE,
    DAXDEVS_FILE,
    DIR_XATTR,
    FILE_XATTR,
    DIRS_JOURNAL,
    LOCK_FILE,
    META_DIR,
    OWNERS_FILE,
    ROOT,
    SHADOW_DIR_MODE,
    STAGING,
    SUPERBLOCK_YAML,
    UNITS_FILE,
    DirRecord,
    dirs_journal_line,
    read_dirs_journal,
    read_shadow_file,
    shadow_permission_problem,
    owners_file,
    tree_problem,
)
from famfs.shadowyaml import emit_file_yaml, meta_extents, meta_file_entry, parse_file_yaml

log = structlog.get_logger("famfs-agent")
_T = TypeVar("_T")

RENAME_NOREPLACE = 1
LIVE_FILES_KEPT = 256  # paths whose live FILE entry live_file_index remembers
DIR_FDS_KEPT = 64  # parent directories held open within one batch (ShadowTree.parent)
UNITS_HEADER = struct.Struct("<qQ")  # .agent/units: cursor index, unit count; then a byte per unit

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


class Outcome(Enum):
    APPLIED = "applied"
    PRESENT = "present"  # already in the tree from before a restart: the cursor lagged the tree
    DUPLICATE = "duplicate"  # a path that already exists: the first entry wins, as upstream


class Rejected(Exception):
    """An entry that cannot be applied; the tree is unchanged. str() names index and path."""

    def __init__(self, index: int, reason: str, relpath: str | None = None) -> None:
        super().__init__(str(fmt.EntryError(index, reason, relpath)))
        self.index = index
        self.relpath = relpath


def is_yaml_of(found: bytes | None, entry: fmt.FileEntry) -> bool:
    """Whether shadow file bytes `found` are FILE entry `entry`'s YAML, byte for byte, with the
    mode and owner it logged or any later ones (a SETATTR rewrites only those three fields)."""
    if found is None:
        return False
    made = emit_file_yaml(entry)
    if found == made:
        return True
    try:
        parsed = parse_file_yaml(found)
    except fmt.FormatError:
        return False
    return found == emit_file_yaml(entry._replace(mode=parsed.mode, uid=parsed.uid, gid=parsed.gid))


def _clear(path: Path) -> None:
    """Remove whatever is at `path` (a tree, a file, a symlink: never followed)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _open_own_dir(path: Path) -> int:
    """The directory at `path`, made (0755) if missing; anything else there (a symlink above
    all: never followed) is removed first, so the agent writes only where it made the tree."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.mkdir(path, SHADOW_DIR_MODE)
    except FileExistsError:
        pass
    return os.open(path, safepath.DIR_OPEN)


class ShadowError(OSError):
    """The shadow directory cannot be used, or root/ was changed behind the agent's back."""


class ShadowBusy(ShadowError):
    pass


class _BuildView:
    """The rule book's view of a tree being built (ShadowTree.begin_build): the tree's own, with one
    short cut. A name never made in that tree (sent to the file creator, or made by the agent
    itself) is not a file there (directories are all in the table), which the filter answers from
    memory; only a name it may hold is looked up in the tree, after the creator has caught up."""

    def __init__(self, tree: ShadowTree, sent: NameFilter) -> None:
        self.tree = tree
        self.sent = sent
        self.units = tree.units  # the tree's: a reset or load ends the build first

    def kind(self, relpath: str) -> rules.Kind | None:
        if relpath in self.tree.dirs:
            return rules.Kind.DIR
        return self.tree.kind(relpath) if self.sent.may_hold(relpath) else None

    def holds(self, relpath: str, index: int, entry: fmt.FileEntry) -> bool:
        return self.tree.holds(relpath, index, entry)

    def daxdev_uuids(self) -> list[uuid.UUID]:
        return self.tree.daxdev_uuids()

    def dir_index(self, relpath: str) -> int | None:
        return self.tree.dir_index(relpath)

    def dir_empty(self, relpath: str) -> bool:
        return self.tree.dir_empty(relpath)

    def deleted_by(self, file_index: int) -> int | None:
        return self.tree.deleted_by(file_index)


def _copy_record(built_fd: int, found_fd: int, name: str) -> None:
    """Give shadow file `name` in directory `found_fd` the FILE_XATTR of the one built in
    `built_fd` (a reconcile keeps a file whose YAML is unchanged, under its new log index)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    built, found = os.open(name, flags, dir_fd=built_fd), os.open(name, flags, dir_fd=found_fd)
    try:
        try:
            record = os.getxattr(built, FILE_XATTR)
        except OSError as err:
            if err.errno != errno.ENODATA:
                raise
            with contextlib.suppress(OSError):  # .meta/'s files have none: neither has the found one then
                os.removexattr(found, FILE_XATTR)
        else:
            os.setxattr(found, FILE_XATTR, record)
    finally:
        os.close(built)
        os.close(found)


class ShadowTree:
    """One host's shadow directory, held exclusively (flock) while open."""

    def __init__(self, shadow_dir: str | os.PathLike[str]) -> None:
        self.base = Path(shadow_dir)
        self.root = self.base / ROOT
        self.agent_dir = self.base / AGENT_DIR
        self.staging = self.agent_dir / STAGING
        self.dirs: dict[str, int] = {"": -1}  # relpath -> index of the MKDIR that made it
        self.daxdevs: list[devices.DeviceRow] = []  # the daxdev table, where this host found each device
        # Until reset() or load() reads the superblock: no device, no units.
        self.geometry = rules.Geometry(dev_size=0, log_len=fmt.DEFAULT_LOG_LEN)
        self.units = rules.Units(self.geometry)
        # rules.Model.deleted_by: which DELETE deleted a FILE not yet reclaimed (the follower's
        # list of deleted files answers it: agent/deleted.py).
        self.deleted_by: Callable[[int], int | None] = lambda file_index: None
        self._temp_prefix = ""
        self._temp_seq = 0
        self._lock_fd = -1
        self._root_fd = -1
        self._staging_fd = -1
        self._journal_fd = -1
        # Where entries are applied: root/, or the tree a first play builds in staging/.
        self._tree_fd = -1
        self._build: str | None = None  # that tree's name in staging/ while building
        self._reconcile = False  # the build reconciles root/ instead of moving into an empty one
        self._creator: FileCreator | None = None  # the process making that tree's files
        self._build_view: _BuildView | None = None  # the rule book's view of that tree
        self._resume_horizon = -1  # entries up to here may already be in the tree (see PRESENT)
        self.owners: OwnerMap | None = None  # .agent/owners, kept in place (famfs.ownership)
        # While a move to a compacted log builds its tree: the map installed in .agent/owners
        # (the previous log's, carried to the new indexes), self.owners the played one in memory.
        self._installed: OwnerMap | None = None
        self._live_files: dict[str, tuple[int, int | None]] = {}  # relpath -> (searched up to, live FILE)
        # (tree descriptor, directory relpath) -> that directory, resolved beneath it by openat2:
        # held until forget_dirs() (the end of the follower's batch; an RMDIR; the tree's fds change)
        self._dir_fds: dict[tuple[int, str], int] = {}
        self.listings = ListingWriter(self.agent_dir)  # the directory records the mount lists from

    # --- opening, state files, rebuild --------------------------------------------------------

    def open(self) -> None:
        """Create what is missing, take the lock, and drop whatever a killed run left staged."""
        try:
            self.base.mkdir(mode=0o755, parents=True, exist_ok=True)  # /run/famfs/shadow on a fresh boot
            problem = shadow_permission_problem(self.base)
            if problem is not None:  # before anything is made in it (docs/security.md)
                raise ShadowError(errno.EPERM, f"shadow {self.base} refused: {problem}")
            self.root.mkdir(mode=SHADOW_DIR_MODE, exist_ok=True)
            self.agent_dir.mkdir(mode=AGENT_DIR_MODE, exist_ok=True)  # chmod below: no umask
            os.chmod(self.agent_dir, AGENT_DIR_MODE, follow_symlinks=False)
            self._lock_fd = os.open(self.agent_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if isinstance(err, ShadowError):
                raise
            raise ShadowError(err.errno, f"shadow {self.base}: {err.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise ShadowBusy(errno.EBUSY, f"shadow {self.base}: another famfs-agent (pid {holder}) is using it") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        self._temp_prefix = f"{os.getpid()}."
        try:
            _clear(self.staging)
            self.staging.mkdir(mode=0o700)
            self._root_fd = _open_own_dir(self.root)
            self._staging_fd = _open_own_dir(self.staging)
        except OSError as err:
            raise ShadowError(err.errno, f"shadow {self.base}: {err.strerror}") from None
        self._tree_fd = self._root_fd
        self._check_trusted_xattrs()
        self.listings.open()

    def _check_trusted_xattrs(self) -> None:
        """Refuse a shadow whose file system (or whose agent: not root) cannot keep trusted.*
        xattrs: the mount serves a directory only from one (docs/security.md)."""
        try:
            os.setxattr(self._staging_fd, DIR_XATTR, b"probe")
            os.removexattr(self._staging_fd, DIR_XATTR)
        except OSError as err:
            raise ShadowError(err.errno, f"shadow {self.base}: cannot set the {DIR_XATTR} xattr the mount serves "
                              f"directories from ({err.strerror}): run famfs-agent as root, the shadow on tmpfs "
                              f"or ext4") from None

    def close(self) -> None:
        self.forget_dirs()
        if self._creator is not None:
            self._creator.abandon()  # what it made is in staging/, emptied by the next open()
            self._creator = None
        if self._tree_fd != self._root_fd:
            os.close(self._tree_fd)
        for fd in (self._journal_fd, self._staging_fd, self._root_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        for owners in (self.owners, self._installed):
            if owners is not None:
                owners.attach(-1)
        self.owners = self._installed = None
        self.listings.close()
        self._journal_fd = self._staging_fd = self._root_fd = self._lock_fd = self._tree_fd = -1
        self._build = None

    def __enter__(self) -> ShadowTree:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_agent_file(self, name: str, data: bytes) -> None:
        """Replace `<shadow>/.agent/<name>` atomically."""
        temp = self._stage_file(data)
        os.rename(temp, self.agent_dir / name, src_dir_fd=self._staging_fd)

    def read_agent_file(self, name: str) -> bytes | None:
        try:
            return (self.agent_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def reset(self, superblock: fmt.Superblock, device_path: str, *, keep_tree: bool = False) -> None:
        """Empty root/ (all but .meta) and the tables: the start of a rebuild. A root/ removed or
        replaced behind the agent's back is made again first. `keep_tree`: the tables only, root/
        as it is: the next first play reconciles root/ with what it builds (a compacted log:
        the same files, new log indexes; see finish_build)."""
        self.forget_dirs()
        if self._build is not None:  # a first play that failed before moving in: start over
            self._drop_build()
        if self.root_replaced():
            os.close(self._root_fd)
            self._root_fd = self._tree_fd = _open_own_dir(self.root)
        self._reconcile = keep_tree
        if not keep_tree:
            self._empty_root()
        self.dirs = {"": -1}
        self._live_files.clear()
        self.listings.reset()
        self.write_agent_file(DIRS_JOURNAL, b"")
        self._open_journal()
        self.daxdevs = [self._primary_daxdev(superblock, device_path)]
        self._save_daxdevs()
        self.geometry = rules.Geometry.of(superblock)
        self.units = rules.Units(self.geometry)
        if not (keep_tree and self._keep_installed_owners()):
            self._new_owners()
        self._resume_horizon = -1

    def _empty_root(self) -> None:
        with os.scandir(self.root) as listing:
            for child in listing:
                if child.name == META_DIR:
                    continue
                if child.is_dir(follow_symlinks=False):
                    # Out of root/ in one rename first, so a watcher sees the subtree go at once.
                    doomed = self._temp_name()
                    os.rename(child.name, doomed, src_dir_fd=self._root_fd, dst_dir_fd=self._staging_fd)
                    shutil.rmtree(self.staging / doomed)
                else:
                    os.unlink(child.name, dir_fd=self._root_fd)

    def _new_owners(self) -> None:
        """A fresh owner map (the metadata's units held, every other free), replacing the file:
        the old one's header is cleared first, so a reader holding it opens the new one."""
        units = self.units
        owners = OwnerMap(units.nunits, units.unit, units.first_data_unit, time.time_ns())
        temp = self._stage_file(owners.image())
        for held in (self.owners, self._installed):
            if held is not None:
                held.retire()
        if self.owners is None and self._installed is None:
            with contextlib.suppress(OSError):
                stale = os.open(self.agent_dir / OWNERS_FILE, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                os.pwrite(stale, bytes(32), 0)
                os.close(stale)
        self._installed = None
        os.rename(temp, self.agent_dir / OWNERS_FILE, src_dir_fd=self._staging_fd)
        owners.attach(os.open(self.agent_dir / OWNERS_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))
        self.owners = owners
        for name in os.listdir(self.agent_dir):  # added devices' maps of the table just reset
            if name.startswith(OWNERS_FILE + "."):
                os.unlink(self.agent_dir / name)

    def _keep_installed_owners(self) -> bool:
        """A move to a compacted log (reset with keep_tree): the map the mount checks against
        stays installed until finish_build installs the new log's, whole, in one rename
        (carry_owners translates it to the new log's indexes first); the play's map is built in
        memory. False if there is no installed map of this geometry to keep (a fresh one then)."""
        if self._installed is None:
            installed = self.owners
            if installed is None or installed.nunits != self.units.nunits or installed.unit != self.units.unit:
                installed = self._loaded_owners()
            if installed is None:
                return False
            self._installed = installed
        elif self.owners is not None:
            self.owners.attach(-1)  # the played map of a move that did not finish: played again
        units = self.units
        self.owners = OwnerMap(units.nunits, units.unit, units.first_data_unit, time.time_ns())
        return True

    def _loaded_owners(self) -> OwnerMap | None:
        """The owner map in .agent/owners if it is one of this device's geometry, else None."""
        if self.owners is not None:
            self.owners.attach(-1)
            self.owners = None
        try:
            fd = os.open(self.agent_dir / OWNERS_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return OwnerMap.load(fd, self.units.nunits, self.units.unit)
        except OSError:
            os.close(fd)
            return None

    def carry_owners(self, famfs_log: FamfsLog) -> None:
        """Install the map the mount checks against carried to `famfs_log`'s indexes
        (OwnerMap.carried): every file the previous log and this one both hold live, at the same
        path with the same extents, is served while the agent moves to this log
        (docs/reclaim.md). Called as soon as a move is seen, and again once the tables are reset
        for it (the log may have moved on from the staging copy meanwhile: the same indexes)."""
        replaced = self._installed if self._installed is not None else self.owners
        if replaced is None or (replaced.nunits, replaced.unit) != (self.units.nunits, self.units.unit):
            return
        kinds = {fmt.EntryType.FILE, fmt.EntryType.HOLD, fmt.EntryType.DELETE, fmt.EntryType.RECLAIM,
                 fmt.EntryType.SETATTR}
        stop = min(famfs_log.next_index(), fmt.log_capacity(self.geometry.log_len))
        entries: list[tuple[int, fmt.Entry]] = []
        for index, _, entry in famfs_log.slots_of(kinds, 0, stop):
            if entry is None:
                break  # the play stops here too: nothing past it is carried
            entries.append((index, entry))
        carried = replaced.carried(entries, self.units.first_data_unit, time.time_ns())
        self._install(carried)
        replaced.retire(added=False)  # the played map of the previous log is not written again
        self._installed = carried

    def _install(self, owners: OwnerMap) -> None:
        """`owners` written whole into .agent/owners in one rename, and kept in step from now
        on. The caller then retires the map it replaced (a reader holding it opens this one)."""
        temp = self._stage_file(owners.image())
        os.rename(temp, self.agent_dir / OWNERS_FILE, src_dir_fd=self._staging_fd)
        owners.deferred = False
        owners.attach(os.open(self.agent_dir / OWNERS_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))

    def _add_owner_map(self, devindex: int) -> None:
        """A fresh owner map for added device `devindex` (its metadata area held), beside the primary's."""
        assert self.owners is not None
        units = self.units
        owners = OwnerMap(units.device_units(devindex), units.unit, units.reserved_units(devindex), time.time_ns())
        owners.deferred = self.owners.deferred
        temp = self._stage_file(owners.image())
        os.rename(temp, self.agent_dir / owners_file(devindex), src_dir_fd=self._staging_fd)
        owners.attach(os.open(self.agent_dir / owners_file(devindex), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))
        self.owners.added[devindex] = owners

    def _load_owners(self) -> None:
        try:
            fd = os.open(self.agent_dir / OWNERS_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise ShadowError(err.errno, f"{self.agent_dir / OWNERS_FILE}: {err.strerror} (no owner map)") from None
        try:
            owners = OwnerMap.load(fd, self.units.nunits, self.units.unit)
        except OwnerMapError as err:
            os.close(fd)
            raise ShadowError(errno.EINVAL, f"{self.agent_dir / OWNERS_FILE}: {err.strerror}") from None
        for devindex in range(1, len(self.units.maps)):
            path = self.agent_dir / owners_file(devindex)
            try:
                added_fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                owners.added[devindex] = OwnerMap.load(added_fd, self.units.device_units(devindex), self.units.unit)
            except OSError as err:
                owners.attach(-1)
                raise ShadowError(errno.EINVAL, f"{path}: {err.strerror} (no owner map)") from None
        for held in (self.owners, self._installed):
            if held is not None:
                held.attach(-1)
        self.owners, self._installed = owners, None

    def disown(self, target: fmt.Entry) -> None:
        """A deleted file's units (`target`: the FILE entry its DELETE names): held by no live
        file, after its shadow file is unlinked."""
        if type(target) is fmt.FileEntry and self.owners is not None:
            self.owners.set(target.all_extents(), HELD)

    def load(self, applied_index: int, resume_horizon: int, superblock: fmt.Superblock, device_path: str) -> None:
        """Tables as of the cursor; later journal lines are from a run killed before its cursor."""
        journal = self.read_agent_file(DIRS_JOURNAL) or b""
        dirs, used = read_dirs_journal(journal, applied_index)
        self.dirs = {"": -1, **dirs}
        self._live_files.clear()
        self.write_agent_file(DIRS_JOURNAL, journal[:used])
        self._open_journal()
        self.daxdevs = [self._primary_daxdev(superblock, device_path)]
        try:
            saved = devices.decode_table(self.read_agent_file(DAXDEVS_FILE) or b'{"daxdevs": []}')
            self.daxdevs += [row for row in saved[1:] if row.log_index is not None and row.log_index <= applied_index]
        except ValueError as err:
            raise ShadowError(errno.EINVAL, f"{self.agent_dir / DAXDEVS_FILE}: unreadable ({err})") from None
        self._save_daxdevs()
        self.geometry = rules.Geometry.of(superblock)
        self.units = rules.Units(self.geometry)
        for row in self.daxdevs[1:]:  # the added devices' units, before the saved map is taken back
            self.units.add_device(rules.device_geometry(row.size, self.geometry))
        self._load_units(applied_index)
        self._load_owners()
        self._resume_horizon = resume_horizon

    # --- checking the tree against the cursor ------------------------------------------------

    def root_replaced(self) -> bool:
        """Whether root/ is gone or is no longer the directory the agent holds open."""
        try:
            on_path = os.stat(self.root, follow_symlinks=False)
        except FileNotFoundError:
            return True
        held = os.fstat(self._root_fd)
        return (on_path.st_dev, on_path.st_ino) != (held.st_dev, held.st_ino)

    def count_files(self) -> int:
        """Shadow files in every logged directory (the .meta files are not counted)."""
        files = 0
        for relpath in self.dirs:
            try:
                fd = safepath.open_beneath(self._root_fd, relpath, safepath.DIR_OPEN)
            except OSError:
                continue  # damage() names it (missing, or a symlink: never followed)
            try:
                with os.scandir(fd) as listing:
                    files += sum(1 for child in listing if child.is_file(follow_symlinks=False))
            finally:
                os.close(fd)
        return files

    def damage(self, applied_index: int, live_files: int | None, *, exact: Callable[[], bool]) -> str | None:
        """How root/ differs from what the cursor says was applied, as far as a cheap look can
        tell (None: it does not): root/ itself, the metadata and logged directories
        (shadowdir.tree_problem), the number of files. `exact()`, asked after the files are
        counted and only if there are more than `live_files`: whether the count must match; else
        it may be higher (entries past the cursor may be in the tree already)."""
        if self.root_replaced():
            return f"{self.root} was removed or replaced"
        problem = tree_problem(self.base, applied_index)
        if problem is not None:
            return problem
        if live_files is not None:
            files = self.count_files()
            if files < live_files or (files > live_files and exact()):
                return f"{files} shadow files where the log has {live_files}"
        return None

    def _open_journal(self) -> None:
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
        self._journal_fd = os.open(self.agent_dir / DIRS_JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def write_meta(self, superblock: fmt.Superblock, master: bool) -> None:
        """`.meta/.superblock` and `.meta/.log` as upstream's mount writes them (.log is 0644 on
        the master, 0444 on a client), replaced only if they differ."""
        try:
            meta_is_dir = stat.S_ISDIR(os.lstat(META_DIR, dir_fd=self._root_fd).st_mode)
        except FileNotFoundError:
            meta_is_dir = False
        if not meta_is_dir:
            temp = self._temp_name()
            os.mkdir(temp, SHADOW_DIR_MODE, dir_fd=self._staging_fd)
            os.chmod(temp, SHADOW_DIR_MODE, dir_fd=self._staging_fd)
            os.rename(temp, META_DIR, src_dir_fd=self._staging_fd, dst_dir_fd=self._root_fd)
        modes = {SUPERBLOCK_YAML: 0o444, f"{META_DIR}/.log": 0o644 if master else 0o444}
        for relpath, extent in meta_extents(superblock.log_len).items():
            entry = meta_file_entry(relpath, extent.length, extent.offset, modes[relpath])
            data = emit_file_yaml(entry)
            if self.read_tree_file(entry.relpath) != data:
                temp = self._stage_file(data)
                os.rename(temp, entry.relpath, src_dir_fd=self._staging_fd, dst_dir_fd=self._root_fd)

    # --- a first play: the whole tree built in staging/, moved in once ---------------------------

    @property
    def building(self) -> bool:
        return self._build is not None

    def begin_build(self) -> None:
        """Apply entries to a new tree in staging/ until finish_build(): for a first play into an
        empty root/ (the caller's to know: the cursor is before entry 0). Its files are made by a
        forked process (agent/first_play.py)."""
        assert self._build is None
        self.forget_dirs()
        build = self._temp_name()
        os.mkdir(build, SHADOW_DIR_MODE, dir_fd=self._staging_fd)
        self._tree_fd = os.open(build, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._staging_fd)
        self._build = build
        try:
            self._creator = FileCreator(self._tree_fd, close_in_child=(self._lock_fd,))
        except OSError as err:  # no process to be had (EAGAIN, ENOMEM): the same tree, on one core
            log.warning("file_creator_unavailable", error=str(err), action="the agent makes the files itself")
        self._build_view = _BuildView(self, NameFilter(fmt.log_capacity(self.geometry.log_len)))
        if self.owners is not None:
            self.owners.deferred = True  # written whole before the tree moves in

    def finish_build(self) -> None:
        """Wait for the built tree's files, then move its top-level names into root/, each a whole
        subtree in one rename (a watcher of root/ sees IN_MOVED_TO for each), and apply to root/
        again. If a file could not be made, the whole tree is dropped (CreatorFailed): none of it
        is moved in, and no cursor was saved for it."""
        assert self._build is not None
        self.forget_dirs()  # the built tree's directories move into root/ (and its descriptor closes)
        try:
            if self._creator is not None:
                self._creator.close()
        except OSError:
            self._drop_build()
            raise
        self._creator = None
        self._build_view = None
        if self.owners is not None and self._installed is not None:
            self._install(self.owners)  # a move: the new log's map replaces the carried one at once
            for added in self.owners.added.values():
                added.flush()
            self._installed.retire()
            self._installed = None
        elif self.owners is not None:
            self.owners.flush()  # every file's owner set before any of them is in root/
        if self._reconcile:
            self._reconcile_dir(self._tree_fd, self._root_fd, "")
            self._reconcile = False
        with os.scandir(self._tree_fd) as listing:
            names = [child.name for child in listing]
        for name in names:
            if not self._place_new(name, name, None, src_fd=self._tree_fd):
                self._merge_built(self._tree_fd, self._root_fd, name, name)
        os.close(self._tree_fd)
        self._tree_fd = self._root_fd
        os.rmdir(self._build, dir_fd=self._staging_fd)
        self._build = None

    def _reconcile_dir(self, built_fd: int, found_fd: int, relpath: str) -> None:
        """Make directory `found_fd` of root/ what the built directory holds, changing only what
        differs (a compacted log: every file that is still there keeps its shadow file and so its
        inode in the mount, its handles and mappings): a shadow file with the built bytes stays
        and the built one is dropped; one that differs is replaced by the built one (a rename
        over it); a name the built tree lacks is removed (a file deleted meanwhile); a directory
        in both is reconciled in turn and given the built one's record. Built names left over are
        moved in by the caller (finish_build's merge)."""
        built = set(os.listdir(built_fd))
        for name in os.listdir(found_fd):
            if not relpath and name == META_DIR:
                continue
            path = f"{relpath}/{name}" if relpath else name
            found = os.lstat(name, dir_fd=found_fd)
            if name not in built:
                self._remove_found(found_fd, name, found)
                continue
            made = os.lstat(name, dir_fd=built_fd)
            if stat.S_ISDIR(made.st_mode) and stat.S_ISDIR(found.st_mode):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                inner_built, inner_found = os.open(name, flags, dir_fd=built_fd), os.open(name, flags, dir_fd=found_fd)
                try:
                    self._reconcile_dir(inner_built, inner_found, path)
                    self._move_children(inner_built, inner_found, path)  # what only the new log has
                    os.setxattr(inner_found, DIR_XATTR, os.getxattr(inner_built, DIR_XATTR))
                finally:
                    os.close(inner_built)
                    os.close(inner_found)
                os.rmdir(name, dir_fd=built_fd)
            elif stat.S_ISREG(made.st_mode) and stat.S_ISREG(found.st_mode):
                if read_shadow_file(name, built_fd) == read_shadow_file(name, found_fd):
                    _copy_record(built_fd, found_fd, name)  # the same file under its new index
                    os.unlink(name, dir_fd=built_fd)  # the same file: its shadow file stays
                else:  # another file at the path: the built one over it, in one rename
                    os.rename(name, name, src_dir_fd=built_fd, dst_dir_fd=found_fd)
            else:
                self._remove_found(found_fd, name, found)  # another kind: the built one moves in

    def _remove_found(self, dir_fd: int, name: str, found: os.stat_result) -> None:
        if stat.S_ISDIR(found.st_mode):
            doomed = self._temp_name()  # out of root/ in one rename, then removed in staging
            os.rename(name, doomed, src_dir_fd=dir_fd, dst_dir_fd=self._staging_fd)
            shutil.rmtree(self.staging / doomed)
        else:
            os.unlink(name, dir_fd=dir_fd)

    def _merge_built(self, src_fd: int, dst_fd: int, name: str, relpath: str) -> None:
        """Move built `name` into directory `dst_fd`, where the name exists already: upstream's
        CLI makes the shadow directories and files of what it logs itself, so they may be in
        root/ before a first play moves its tree in. What is there is the entries played if it
        is what the agent built: a directory (given the built one's logged mode and owner, its
        built contents merged in), or a file holding the built bytes or a prefix of them (the
        CLI mid-write: the built file replaces it). Anything else appeared behind the agent's
        back: ShadowError, and the tree is rebuilt."""
        built, found = os.lstat(name, dir_fd=src_fd), os.lstat(name, dir_fd=dst_fd)
        if stat.S_ISDIR(built.st_mode) and stat.S_ISDIR(found.st_mode):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            built_fd, found_fd = os.open(name, flags, dir_fd=src_fd), os.open(name, flags, dir_fd=dst_fd)
            try:
                self._move_children(built_fd, found_fd, relpath)
                os.fchown(found_fd, built.st_uid, built.st_gid)  # the agent's, as built (docs/security.md)
                os.fchmod(found_fd, stat.S_IMODE(built.st_mode))
                os.setxattr(found_fd, DIR_XATTR, os.getxattr(built_fd, DIR_XATTR))
            finally:
                os.close(built_fd)
                os.close(found_fd)
            os.rmdir(name, dir_fd=src_fd)
        elif stat.S_ISREG(built.st_mode) and stat.S_ISREG(found.st_mode) and \
                read_shadow_file(name, src_fd).startswith(read_shadow_file(name, dst_fd)):
            os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        else:
            raise ShadowError(errno.EEXIST, f"shadow {self.root}: {relpath!r} appeared behind the agent's back")
        log.info("ahead_written_accepted", path=relpath, kind="directory" if stat.S_ISDIR(built.st_mode) else "file")

    def _move_children(self, built_fd: int, found_fd: int, relpath: str) -> None:
        """Move every name of built directory `built_fd` into `found_fd` (directory `relpath` of
        root/), each in one rename that never replaces: a name there already (upstream's CLI
        writing ahead) is merged (_merge_built)."""
        for child in os.listdir(built_fd):
            if _renameat2(built_fd, child.encode(), found_fd, child.encode(), RENAME_NOREPLACE) == 0:
                continue
            if (failure := ctypes.get_errno()) != errno.EEXIST:
                raise ShadowError(failure, f"shadow {self.root}: cannot move {relpath}/{child} in: {os.strerror(failure)}")
            self._merge_built(built_fd, found_fd, child, f"{relpath}/{child}")

    def _drop_build(self) -> None:
        assert self._build is not None
        if self._creator is not None:
            self._creator.abandon()
            self._creator = None
        self._build_view = None
        self.forget_dirs()
        os.close(self._tree_fd)
        self._tree_fd = self._root_fd
        shutil.rmtree(self.staging / self._build)
        self._build = None

    @property
    def rules_view(self) -> rules.Model:
        """What the rule book reads: this tree, or while building the _BuildView of it."""
        return self if self._build_view is None else self._build_view

    def _look(self, look: Callable[[], _T], found: Callable[[_T], bool]) -> _T:
        """`look` at the tree entries are applied to. While building, what it shows is true of
        the files already there, but a file it lacks (or shows short) may still be on its way to
        the creator: when `found` says no, wait until the creator has made every file sent, and
        look again."""
        seen = look()
        if not found(seen) and self._creator is not None:
            self._creator.drain()
            seen = look()
        return seen

    # --- applying entries ---------------------------------------------------------------------

    def check(self, index: int, entry: fmt.Entry, famfs_log: FamfsLog, relpath: str | None = None, *,
              model: rules.Model | None = None, entry_at: rules.EntryAt | None = None) -> None:
        """The rule book's check of `entry` as log entry `index` against `model` (default: this
        tree's rules_view): Rejected, naming `relpath`, if it breaks a rule."""
        try:
            rules.check(index, entry, model if model is not None else self.rules_view, self.geometry,
                        entry_at or famfs_log.entry)
        except rules.Violation as err:
            raise Rejected(index, str(err), relpath) from None

    def apply(self, index: int, entry: fmt.Entry, famfs_log: FamfsLog, raw: bytes | None = None) -> Outcome:
        """Apply one decoded entry; raise Rejected if it breaks a rule (nothing is then changed).
        `raw`: the slot's bytes `entry` was decoded from (a first play makes the file from them).

        DELETE is not handled here: the follower brackets it with its cursor (check_delete, then
        remove) so a restart knows whether the unlink happened.
        """
        if type(entry) is fmt.FileEntry:
            return self.apply_file(index, entry, famfs_log, raw)
        if type(entry) is fmt.MkdirEntry:
            return self.apply_mkdir(index, entry, famfs_log)
        if type(entry) is fmt.AddDaxdevEntry:
            return self.apply_add_daxdev(index, entry, famfs_log)
        if type(entry) is fmt.RmdirEntry:
            return self.apply_rmdir(index, entry, famfs_log)
        if type(entry) is fmt.HoldEntry:
            return self.apply_hold(index, entry, famfs_log)
        if type(entry) is fmt.SetattrEntry:
            return self.apply_setattr(index, entry, famfs_log)
        raise TypeError(f"entry {index}: {type(entry).__name__} is not applied by ShadowTree.apply")

    def apply_file(self, index: int, entry: fmt.FileEntry, famfs_log: FamfsLog, raw: bytes | None = None) -> Outcome:
        relpath = entry.relpath
        try:
            rules.check(index, entry, self.rules_view, self.geometry, famfs_log.entry)
        except rules.Violation as err:
            if err.rule != rules.path_free.__name__ or self.kind(relpath) is not rules.Kind.FILE:
                raise Rejected(index, str(err), relpath) from None
            if index <= self._resume_horizon and is_yaml_of(self.read_tree_file(relpath), entry):
                self.units.claim(entry.all_extents())
                self._own(index, entry)
                return Outcome.PRESENT
            if self._build_view is None and self._ahead_file(index, entry, famfs_log):
                self.units.claim(entry.all_extents())
                return Outcome.APPLIED
            return self._duplicate(index, relpath, famfs_log)
        self._own(index, entry)  # before its shadow file can be seen: a reader checks it against the map
        if self._build_view is not None:  # not visible before finish_build: made in place, no rename
            if self._creator is not None and raw is not None:
                self._creator.create(raw)
            else:  # no creator, or an entry read again after a wait (the follower's _settle)
                write_new_file(relpath, emit_file_yaml(entry), self._tree_fd, index)
            self._build_view.sent.add(relpath)
        elif not self._place_new(self._stage_file(emit_file_yaml(entry), index), relpath, os.unlink):
            # The rules found the name free, and it has appeared since: upstream's CLI writing
            # the entry's YAML at this moment, or else damage.
            self._ahead_file(index, entry, famfs_log, earlier_checked=True)
        self.units.claim(entry.all_extents())
        return Outcome.APPLIED

    def _own(self, index: int, entry: fmt.FileEntry) -> None:
        if self.owners is not None:
            self.owners.set(entry.all_extents(), index + 1)
        self.listings.added(entry.relpath, index)

    def _duplicate(self, index: int, relpath: str, famfs_log: FamfsLog) -> Outcome:
        """The follower's policy for rule path_free when the name has the same kind (a file over a
        file, a directory over a directory): the first entry wins, as upstream's readers keep it;
        this one is skipped with a warning (fsck lists it). Another kind is rejected."""
        first = self.dirs.get(relpath)
        if first is None:
            first = self.live_file_index(famfs_log, relpath, index)
        log.warning("duplicate_path", index=index, path=relpath, first_index=first,
                    note="the first entry wins, as upstream; this one is ignored")
        return Outcome.DUPLICATE

    def _ahead_file(self, index: int, entry: fmt.FileEntry, famfs_log: FamfsLog, *,
                    earlier_checked: bool = False) -> bool:
        """A shadow file at the path of FILE entry `index`, which the rules found taken: True if
        it is this entry written ahead of the agent (upstream's CLI writes the YAML of what it
        just logged itself, in place, maybe before the agent plays the entry); False if an
        earlier entry made it (a duplicate path). It is this entry if it holds what the agent
        writes for it, byte for byte: no earlier live file can (its units would be taken, and the
        rules found them free); or a prefix of it (the CLI mid-write) where no earlier entry
        made the path (`earlier_checked`: the rules said so already). Then the agent's own copy
        is renamed over it (atomic). A file no earlier entry made that is anything else is
        damage: ShadowError, and the tree is rebuilt."""
        relpath = entry.relpath
        made = emit_file_yaml(entry)
        found = self.read_tree_file(relpath)
        ahead = found == made or (found is not None and made.startswith(found) and (
            earlier_checked or self.live_file_index(famfs_log, relpath, index) is None))
        if not ahead:
            if earlier_checked or self.live_file_index(famfs_log, relpath, index) is None:
                raise ShadowError(errno.EEXIST, f"shadow {self.root}: {relpath!r} is not what log entry {index} "
                                                "logs, and no earlier entry made it")
            return False
        self._own(index, entry)  # its units this entry's before its own copy is in place
        temp = self._stage_file(made, index)
        with safepath.parent_of(self._root_fd, relpath) as (parent, name):
            os.rename(temp, name, src_dir_fd=self._staging_fd, dst_dir_fd=parent)
        log.info("ahead_written_accepted", index=index, path=relpath, kind="file", whole=found == made)
        return True

    def apply_mkdir(self, index: int, entry: fmt.MkdirEntry, famfs_log: FamfsLog) -> Outcome:
        relpath = entry.relpath
        try:
            rules.check(index, entry, self.rules_view, self.geometry, famfs_log.entry)
        except rules.Violation as err:
            if err.rule != rules.path_free.__name__ or self.kind(relpath) is not rules.Kind.DIR:
                raise Rejected(index, str(err), relpath) from None
            return self._duplicate(index, relpath, famfs_log)
        if self._build is not None:
            # Not visible before finish_build: made in place. The rules found the name free.
            self._make_dir(index, entry, relpath, self._tree_fd)
            self._add_dir(index, relpath)
            return Outcome.APPLIED
        temp = self._temp_name()
        self._make_dir(index, entry, temp, self._staging_fd)
        if not self._place_new(temp, relpath, os.rmdir):
            if not stat.S_ISDIR(safepath.lstat_beneath(self._root_fd, relpath).st_mode):
                raise ShadowError(errno.EEXIST, f"shadow {self.root}: {relpath!r} exists but is not a directory")
            # A directory no journal line accounts for is this entry's: made by a run killed
            # before its journal line (the journal is exact up to the cursor), or by upstream's
            # CLI, which makes the directory it just logged in the shadow itself (its umask may
            # have changed the mode): the agent gives it the logged mode and owner.
            self._own_dir(index, entry, relpath)
            self._add_dir(index, relpath)
            return Outcome.PRESENT
        self._add_dir(index, relpath)
        return Outcome.APPLIED

    def _make_dir(self, index: int, entry: fmt.MkdirEntry, name: str, dir_fd: int) -> None:
        """The agent's own 0755 directory; the logged mode and owner go in its trusted xattr,
        which the mount serves them from (docs/security.md): the shadow directory is never the
        logged 0777 or 1777 that would let a user write the tree."""
        os.mkdir(name, SHADOW_DIR_MODE, dir_fd=dir_fd)
        fd = os.open(name, safepath.DIR_OPEN, dir_fd=dir_fd)
        try:
            os.chmod(fd, SHADOW_DIR_MODE)  # exactly: no umask
            os.setxattr(fd, DIR_XATTR, DirRecord(index, entry.mode & 0o7777, entry.uid, entry.gid).encode())
        finally:
            os.close(fd)

    def _own_dir(self, index: int, entry: fmt.MkdirEntry, relpath: str) -> None:
        """Make a directory found at a MKDIR's path (see above) the agent's, as _make_dir makes its
        own: root's 0755, the logged mode and owner in its trusted xattr (docs/security.md). A
        directory upstream's CLI made has the logged mode and owner on itself instead."""
        record = DirRecord(index, entry.mode & 0o7777, entry.uid, entry.gid).encode()
        fd = safepath.open_beneath(self._root_fd, relpath, safepath.DIR_OPEN)
        try:
            st = os.fstat(fd)
            with contextlib.suppress(OSError):
                if os.getxattr(fd, DIR_XATTR) == record and stat.S_IMODE(st.st_mode) == SHADOW_DIR_MODE \
                        and st.st_uid == os.geteuid():
                    return
            os.fchown(fd, os.geteuid(), os.getegid())
            os.fchmod(fd, SHADOW_DIR_MODE)
            os.setxattr(fd, DIR_XATTR, record)
        finally:
            os.close(fd)
        log.info("ahead_written_accepted", index=index, path=relpath, kind="directory",
                 mode_found=f"{stat.S_IMODE(st.st_mode):04o}", owner_found=f"{st.st_uid}:{st.st_gid}")

    def _add_dir(self, index: int, relpath: str) -> None:
        self.dirs[relpath] = index
        os.write(self._journal_fd, dirs_journal_line(index, relpath))

    def apply_rmdir(self, index: int, entry: fmt.RmdirEntry, famfs_log: FamfsLog) -> Outcome:
        """Remove an empty directory, then journal it. Idempotent: a run killed between the two
        finds the directory still in its table (the journal line is past the cursor) and gone
        from the tree, and finishes."""
        self.check(index, entry, famfs_log, entry.relpath)
        self.forget_dirs()  # none held may name the directory removed (a MKDIR may make it again)
        with contextlib.suppress(FileNotFoundError), safepath.parent_of(self._tree_fd, entry.relpath) as (parent, name):
            os.rmdir(name, dir_fd=parent)
        del self.dirs[entry.relpath]
        self.listings.dir_removed(entry.relpath)
        os.write(self._journal_fd, dirs_journal_line(index, entry.relpath, removed=True))
        return Outcome.APPLIED

    def check_delete(self, index: int, entry: fmt.DeleteEntry, famfs_log: FamfsLog) -> fmt.FileEntry:
        """Raise Rejected unless `entry` deletes the live file its target entry made; that FILE
        entry (decoded once: disown needs it too)."""
        read: list[fmt.Entry] = []

        def entry_at(at: int) -> fmt.Entry:
            read.append(famfs_log.entry(at))
            return read[-1]

        self.check(index, entry, famfs_log, entry.relpath, entry_at=entry_at)
        victim = read[-1]  # the rules read the target (and only it) to pass
        assert type(victim) is fmt.FileEntry
        return victim

    def remove(self, relpath: str) -> bool:
        """Unlink a shadow file; False if it is already gone (a restart after the unlink)."""
        self.listings.removed(relpath)
        return self._look(lambda: self._unlinked(relpath), bool)

    def _unlinked(self, relpath: str) -> bool:
        try:
            parent, name = self.parent(self._tree_fd, relpath)
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            return False
        return True

    def apply_hold(self, index: int, entry: fmt.HoldEntry, famfs_log: FamfsLog) -> Outcome:
        """A deleted file a compaction carried over (docs/reclaim.md): its units stay taken until
        reclaimed; nothing appears in the tree."""
        self.check(index, entry, famfs_log, entry.file.relpath)
        self.units.claim(entry.file.all_extents())
        if self.owners is not None:
            self.owners.set(entry.file.all_extents(), HELD)  # no live file's: never served
        return Outcome.APPLIED

    def apply_setattr(self, index: int, entry: fmt.SetattrEntry, famfs_log: FamfsLog) -> Outcome:
        """A live file's or directory's new mode and owner (docs/format.md, SETATTR). A directory:
        its trusted.famfs.dir names this entry, which the mount checks (set in place: one
        setxattr replaces the value whole). A file: its units this entry's in the owner map first
        (the mount checks a YAML against the entry the map names), then its YAML with the new
        mode and owner renamed over the old one. Played again after a kill, it does the same."""
        self.check(index, entry, famfs_log, entry.relpath)
        target = famfs_log.entry(entry.target_index)
        if isinstance(target, fmt.MkdirEntry):
            fd = safepath.open_beneath(self._tree_fd, entry.relpath, safepath.DIR_OPEN)
            try:
                os.setxattr(fd, DIR_XATTR, DirRecord(index, entry.mode, entry.uid, entry.gid).encode())
            finally:
                os.close(fd)
            return Outcome.APPLIED
        assert isinstance(target, fmt.FileEntry)
        changed = target._replace(mode=entry.mode, uid=entry.uid, gid=entry.gid)
        if self.owners is not None:
            self.owners.set(changed.all_extents(), index + 1)
        self.listings.added(entry.relpath, index)
        if self._creator is not None:
            self._creator.drain()  # a first play: the file it replaces is made first
        temp = self._temp_name()
        write_new_file(temp, emit_file_yaml(changed), self._staging_fd, index)
        with safepath.parent_of(self._tree_fd, entry.relpath) as (parent, name):
            os.rename(temp, name, src_dir_fd=self._staging_fd, dst_dir_fd=parent)
        return Outcome.APPLIED

    def apply_add_daxdev(self, index: int, entry: fmt.AddDaxdevEntry, famfs_log: FamfsLog) -> Outcome:
        """The daxdev table for fusefs (upstream's table rules are the rule book's)."""
        if entry.dev_index < len(self.daxdevs) and self.daxdevs[entry.dev_index].log_index == index:
            return Outcome.PRESENT
        self.check(index, entry, famfs_log)
        self.daxdevs.append(devices.DeviceRow(entry.dev_index, str(entry.dev_uuid), entry.dev_size, None, index))
        self.units.add_device(rules.device_geometry(entry.dev_size, self.geometry))
        if self.owners is not None:
            self._add_owner_map(entry.dev_index)
        self._save_daxdevs()
        return Outcome.APPLIED

    # --- the rule book's view of this tree (rules.Model) -------------------------------------

    def kind(self, relpath: str) -> rules.Kind | None:
        """Directories from the journal's table, files from the tree itself (no file table: flat
        memory). A directory the journal does not know is not in the namespace yet."""
        if relpath in self.dirs:
            return rules.Kind.DIR
        mode = self._look(lambda: self._mode_in_tree(relpath), lambda mode: mode is not None)
        return rules.Kind.FILE if mode is not None and stat.S_ISREG(mode) else None

    def _mode_in_tree(self, relpath: str) -> int | None:
        try:
            parent, name = self.parent(self._tree_fd, relpath)
            return os.lstat(name, dir_fd=parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None

    def holds(self, relpath: str, index: int, entry: fmt.FileEntry) -> bool:
        return self._look(lambda: is_yaml_of(self.read_tree_file(relpath), entry), bool)

    def dir_index(self, relpath: str) -> int | None:
        return self.dirs.get(relpath)

    def dir_empty(self, relpath: str) -> bool:
        """From the tree itself: its files are the namespace (a rejected entry left nothing there)."""
        return self._look(lambda: self._listing_empty(relpath), operator.not_)

    def _listing_empty(self, relpath: str) -> bool:
        try:
            fd = safepath.open_beneath(self._tree_fd, relpath, safepath.DIR_OPEN)
        except (FileNotFoundError, NotADirectoryError):
            return True
        try:
            return not os.listdir(fd)
        finally:
            os.close(fd)

    def daxdev_uuids(self) -> list[uuid.UUID]:
        return [uuid.UUID(row.uuid) for row in self.daxdevs]

    def resolve_devices(self, fs_uuid: uuid.UUID, configured: Sequence[str]) -> list[devices.DeviceRow]:
        """Find the added devices on this host again (famfs.devices.resolve); the table is
        rewritten when a row changed. Returns the rows that changed."""
        resolved = devices.resolve(fs_uuid, self.daxdevs, configured)
        changed = [row for old, row in zip(self.daxdevs, resolved, strict=True) if old != row]
        if changed:
            self.daxdevs = resolved
            self._save_daxdevs()
        return changed

    def devices_unresolved(self) -> bool:
        return any(row.state != devices.FOUND for row in self.daxdevs)

    def units_freed(self, file_index: int, famfs_log: FamfsLog) -> None:
        """Reclaim's hook (docs/reclaim.md, RECLAIM): the deleted FILE at `file_index` no longer
        holds its units. The follower has checked the RECLAIM names a deleted, unreclaimed file."""
        entry = famfs_log.entry(file_index)
        file = entry.file if isinstance(entry, fmt.HoldEntry) else entry  # a HOLD: a compaction's deleted file
        assert isinstance(file, fmt.FileEntry)
        self.units.release(file.all_extents())
        if self.owners is not None:
            self.owners.set(file.all_extents(), FREE)

    def save_units(self, applied_index: int) -> None:
        """The units as of the cursor, written just before the cursor itself (load() checks that
        the two agree; a kill between the two writes costs a rebuild, never a wrong verdict).
        The batch's directory records first: nothing waits on them, they only save the mount work."""
        self.listings.flush()
        self.write_agent_file(UNITS_FILE, UNITS_HEADER.pack(applied_index, self.units.total_units) + self.units.image())

    def _load_units(self, applied_index: int) -> None:
        raw = self.read_agent_file(UNITS_FILE) or b""
        if len(raw) >= UNITS_HEADER.size:
            saved_index, nunits = UNITS_HEADER.unpack_from(raw)
            if saved_index == applied_index and nunits == len(raw) - UNITS_HEADER.size and \
                    self.units.load_image(raw[UNITS_HEADER.size:]):
                return
        raise ShadowError(errno.EINVAL, f"{self.agent_dir / UNITS_FILE}: the allocation map does not match the cursor")

    @staticmethod
    def _primary_daxdev(superblock: fmt.Superblock, device_path: str) -> devices.DeviceRow:
        return devices.logged_rows(superblock, device_path, ())[0]

    def _save_daxdevs(self) -> None:
        self.write_agent_file(DAXDEVS_FILE, devices.encode_table(self.daxdevs))

    # --- helpers ----------------------------------------------------------------------------

    def _place_new(self, temp: str, relpath: str, discard: Callable[..., None] | None, src_fd: int | None = None) -> bool:
        """Rename staged `temp` (in staging/, or in directory `src_fd`) to root/`relpath` unless
        that name exists: then False, and `temp` is discarded with `discard` (os.unlink or
        os.rmdir; None leaves it to the next run, which empties staging/)."""
        src_fd = self._staging_fd if src_fd is None else src_fd
        try:
            parent, name = self.parent(self._root_fd, relpath)
            if _renameat2(src_fd, temp.encode(), parent, name.encode(), RENAME_NOREPLACE) == 0:
                return True
            failure = ctypes.get_errno()
        except OSError as err:  # the parent is missing, or a symlink: damage, never followed
            failure = err.errno or errno.EIO
        if discard is not None:
            discard(temp, dir_fd=src_fd)
        if failure != errno.EEXIST:
            raise ShadowError(failure, f"shadow {self.root}: cannot create {relpath!r}: {os.strerror(failure)}")
        return False

    def parent(self, tree_fd: int, relpath: str) -> tuple[int, str]:
        """(descriptor of relpath's directory, its last component), as safepath.parent_of
        resolves it (openat2, nothing followed), the descriptor kept until forget_dirs(): a run of
        entries in one directory resolves it once. Safe to keep because only this agent changes
        directories under root/ (the shadow is root's 0755, docs/security.md) and it forgets them
        whenever it removes or moves one (RMDIR, reset, a first play moving in), and at the end of
        every batch, before tree_problem looks at the tree again."""
        head, _, name = relpath.rpartition("/")
        if not head:
            return tree_fd, name
        fd = self._dir_fds.get((tree_fd, head))
        if fd is None:
            if len(self._dir_fds) >= DIR_FDS_KEPT:
                self.forget_dirs()
            fd = safepath.open_beneath(tree_fd, head, safepath.DIR_OPEN)
            self._dir_fds[tree_fd, head] = fd
        return fd, name

    def forget_dirs(self) -> None:
        """Close the directories parent() holds: they are resolved again from the tree's root."""
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()

    def _temp_name(self) -> str:
        # Unique: staging/ is private to the lock holder and emptied when it starts.
        self._temp_seq += 1
        return self._temp_prefix + str(self._temp_seq)

    def _stage_file(self, data: bytes, index: int | None = None) -> str:
        """`data` in a new file in staging/; `index`: a shadow file's owner-map entry (FILE_XATTR)."""
        temp = self._temp_name()
        write_new_file(temp, data, self._staging_fd, index)
        return temp

    def read_tree_file(self, relpath: str) -> bytes | None:
        """The bytes of a shadow file in root/, or None if there is none (or something else than
        a file the agent could have written: a directory, a FIFO, a file too large)."""
        try:
            return read_shadow_file(relpath, self._tree_fd)
        except (FileNotFoundError, NotADirectoryError, fmt.FormatError):
            return None

    def live_file_index(self, famfs_log: FamfsLog, relpath: str, before: int) -> int | None:
        """Which FILE entry before `before` owns `relpath` now, from the raw slots naming it (for
        duplicate warnings only). Resumed from the last answer for that path, kept for a few
        hundred paths: a log that repeats one name over and over is still read once."""
        start, live = self._live_files.pop(relpath, (0, None))
        if start > before:
            start, live = 0, None
        for index, kind in famfs_log.slots_naming(relpath, start, before):
            if kind == fmt.EntryType.FILE:
                live = index if live is None else live
            elif kind == fmt.EntryType.DELETE:
                live = None
        if len(self._live_files) >= LIVE_FILES_KEPT:
            del self._live_files[next(iter(self._live_files))]  # the least recently asked
        self._live_files[relpath] = (before, live)
        return live
