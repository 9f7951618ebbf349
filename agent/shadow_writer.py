"""The shadow-tree writer: applies log entries to `<shadow>/root` atomically (docs/agent.md).

Every change under root/ is one rename or one unlink: a new file or directory is built whole in
`<shadow>/.agent/staging/` and renamed into place with RENAME_NOREPLACE (so an existing name is
never clobbered by accident and the kernel, not a racy stat, tells us it exists); a changed file
is renamed over the old one; a deleted file is unlinked. A process killed at any instant leaves
at most a stale name in staging/, which `open()` removes.

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
import json
import os
import shutil
import stat
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import structlog

from famfs import format as fmt
from famfs.famfslog import FamfsLog
from famfs.shadowdir import (
    AGENT_DIR,
    DAXDEVS_FILE,
    DIRS_JOURNAL,
    LOCK_FILE,
    META_DIR,
    ROOT,
    STAGING,
    SUPERBLOCK_YAML,
)
from famfs.shadowyaml import emit_file_yaml, meta_file_entry

log = structlog.get_logger("famfs-agent")

SHADOW_FILE_MODE = 0o644  # upstream's shadow files are 0644 whatever the logged mode
META_DIR_MODE = 0o755
NO_OWNER = 0xFFFFFFFF  # (uid_t)-1: chown(2) reads it as "leave unchanged"
RENAME_NOREPLACE = 1
STAGED_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


class Outcome(Enum):
    APPLIED = "applied"
    PRESENT = "present"  # already in the tree from before a restart: the cursor lagged the tree
    DUPLICATE = "duplicate"  # a path that already exists: the first entry wins, as upstream
    IGNORED = "ignored"


class Rejected(Exception):
    """An entry that cannot be applied; the tree is unchanged. str() names index and path."""

    def __init__(self, index: int, reason: str, relpath: str | None = None) -> None:
        super().__init__(str(fmt.EntryError(index, reason, relpath)))
        self.index = index
        self.relpath = relpath


class ShadowError(OSError):
    """The shadow directory cannot be used, or root/ was changed behind the agent's back."""


class ShadowBusy(ShadowError):
    pass


class ShadowTree:
    """One host's shadow directory, held exclusively (flock) while open."""

    def __init__(self, shadow_dir: str | os.PathLike[str]) -> None:
        self.base = Path(shadow_dir)
        self.root = self.base / ROOT
        self.agent_dir = self.base / AGENT_DIR
        self.staging = self.agent_dir / STAGING
        self.dirs: dict[str, int] = {"": -1}  # relpath -> index of the MKDIR that made it
        self.daxdevs: list[dict[str, object]] = []
        self._temp_prefix = ""
        self._temp_seq = 0
        self._lock_fd = -1
        self._root_fd = -1
        self._staging_fd = -1
        self._journal_fd = -1
        self._resume_horizon = -1  # entries up to here may already be in the tree (see PRESENT)
        self._owner_warned = False

    # --- opening, state files, rebuild --------------------------------------------------------

    def open(self) -> None:
        """Create what is missing, take the lock, and drop whatever a killed run left staged."""
        try:
            for directory in (self.base, self.root, self.agent_dir, self.staging):
                directory.mkdir(mode=0o755, exist_ok=True)
            self._lock_fd = os.open(self.agent_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
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
        shutil.rmtree(self.staging)
        self.staging.mkdir(mode=0o700)
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._staging_fd = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        for fd in (self._journal_fd, self._staging_fd, self._root_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._journal_fd = self._staging_fd = self._root_fd = self._lock_fd = -1

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

    def reset(self, superblock: fmt.Superblock, device_path: str) -> None:
        """Empty root/ (all but .meta) and the tables: the start of a rebuild."""
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
        self.dirs = {"": -1}
        self.write_agent_file(DIRS_JOURNAL, b"")
        self._open_journal()
        self.daxdevs = [self._primary_daxdev(superblock, device_path)]
        self._save_daxdevs()
        self._resume_horizon = -1

    def load(self, applied_index: int, resume_horizon: int, superblock: fmt.Superblock, device_path: str) -> None:
        """Tables as of the cursor; later journal lines are from a run killed before its cursor."""
        self.dirs = {"": -1}
        kept: list[bytes] = []
        for line in (self.read_agent_file(DIRS_JOURNAL) or b"").splitlines(keepends=True):
            try:
                index, relpath = json.loads(line)
            except (ValueError, TypeError):
                break  # a line cut short by a kill: everything from here is past the cursor
            if index > applied_index:
                break
            self.dirs[relpath] = index
            kept.append(line)
        self.write_agent_file(DIRS_JOURNAL, b"".join(kept))
        self._open_journal()
        self.daxdevs = [self._primary_daxdev(superblock, device_path)]
        try:
            saved = json.loads(self.read_agent_file(DAXDEVS_FILE) or b'{"daxdevs": []}')
            self.daxdevs += [row for row in saved["daxdevs"][1:] if row["log_index"] <= applied_index]
        except (ValueError, KeyError, TypeError) as err:
            raise ShadowError(errno.EINVAL, f"{self.agent_dir / DAXDEVS_FILE}: unreadable ({err!r})") from None
        self._save_daxdevs()
        self._resume_horizon = resume_horizon

    def _open_journal(self) -> None:
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
        self._journal_fd = os.open(self.agent_dir / DIRS_JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def write_meta(self, superblock: fmt.Superblock, master: bool) -> None:
        """`.meta/.superblock` and `.meta/.log` as upstream's mount writes them (.log is 0644 on
        the master, 0444 on a client), replaced only if they differ."""
        if not os.path.isdir(self.root / META_DIR):
            temp = self._temp_name()
            os.mkdir(temp, META_DIR_MODE, dir_fd=self._staging_fd)
            os.chmod(temp, META_DIR_MODE, dir_fd=self._staging_fd)
            os.rename(temp, META_DIR, src_dir_fd=self._staging_fd, dst_dir_fd=self._root_fd)
        metas = (
            meta_file_entry(SUPERBLOCK_YAML, fmt.SUPERBLOCK_SIZE, 0, 0o444),
            meta_file_entry(f"{META_DIR}/.log", superblock.log_len, fmt.LOG_OFFSET, 0o644 if master else 0o444),
        )
        for entry in metas:
            data = emit_file_yaml(entry)
            if self.read_tree_file(entry.relpath) != data:
                temp = self._stage_file(data)
                os.rename(temp, entry.relpath, src_dir_fd=self._staging_fd, dst_dir_fd=self._root_fd)

    # --- applying entries ---------------------------------------------------------------------

    def apply(self, index: int, entry: fmt.Entry, famfs_log: FamfsLog) -> Outcome:
        """Apply one decoded entry; raise Rejected if it breaks a rule (nothing is then changed).

        DELETE is not handled here: the follower brackets it with its cursor (check_delete, then
        remove) so a restart knows whether the unlink happened.
        """
        if type(entry) is fmt.FileEntry:
            return self.apply_file(index, entry, famfs_log)
        if type(entry) is fmt.MkdirEntry:
            return self.apply_mkdir(index, entry)
        if type(entry) is fmt.AddDaxdevEntry:
            return self.apply_add_daxdev(index, entry)
        raise TypeError(f"entry {index}: {type(entry).__name__} is not applied by ShadowTree.apply")

    def apply_file(self, index: int, entry: fmt.FileEntry, famfs_log: FamfsLog) -> Outcome:
        relpath = entry.relpath
        parent = relpath.rpartition("/")[0]
        if parent not in self.dirs:
            raise Rejected(index, f"parent directory {parent!r} was never logged", relpath)
        data = emit_file_yaml(entry)
        if self._place_new(self._stage_file(data), relpath, os.unlink):
            return Outcome.APPLIED
        if relpath == META_DIR or relpath in self.dirs:
            raise Rejected(index, "a directory of that name exists", relpath)
        existing = self.read_tree_file(relpath)
        if existing is None:
            raise ShadowError(errno.EEXIST, f"shadow {self.root}: {relpath!r} exists but is not a regular file")
        if existing == data and index <= self._resume_horizon:
            return Outcome.PRESENT
        winner = self.live_file_index(famfs_log, relpath, index)
        log.warning("duplicate_path", index=index, path=relpath, first_index=winner,
                    note="the first entry wins, as upstream; this one is ignored")
        return Outcome.DUPLICATE

    def apply_mkdir(self, index: int, entry: fmt.MkdirEntry) -> Outcome:
        relpath = entry.relpath
        if relpath == META_DIR or relpath.startswith(META_DIR + "/"):
            raise Rejected(index, f"{META_DIR} is reserved for the file system's metadata files", relpath)
        if relpath in self.dirs:
            log.warning("duplicate_path", index=index, path=relpath, first_index=self.dirs[relpath],
                        note="the first entry wins, as upstream; this one is ignored")
            return Outcome.DUPLICATE
        parent = relpath.rpartition("/")[0]
        if parent not in self.dirs:
            raise Rejected(index, f"parent directory {parent!r} was never logged", relpath)
        if NO_OWNER in (entry.uid, entry.gid):
            raise Rejected(index, f"owner {entry.uid}:{entry.gid}: {NO_OWNER} is not a valid uid/gid", relpath)
        temp = self._temp_name()
        os.mkdir(temp, 0o700, dir_fd=self._staging_fd)
        # chown before chmod: the mode then holds exactly, setgid and sticky included, no umask.
        try:
            os.chown(temp, entry.uid, entry.gid, dir_fd=self._staging_fd)
        except PermissionError:
            if not self._owner_warned:  # once: an agent not run as root cannot give directories away
                log.warning("owner_not_set", index=index, path=relpath, uid=entry.uid, gid=entry.gid,
                            reason="not permitted (the agent is not root): directories keep the agent's owner")
                self._owner_warned = True
        os.chmod(temp, entry.mode & 0o7777, dir_fd=self._staging_fd)
        if not self._place_new(temp, relpath, os.rmdir):
            if not stat.S_ISDIR(os.lstat(relpath, dir_fd=self._root_fd).st_mode):
                raise Rejected(index, "a file of that name exists", relpath)
            # A directory no journal line accounts for can only be this entry's, made by a run
            # killed before its journal line: the journal is exact up to the cursor.
            self._add_dir(index, relpath)
            return Outcome.PRESENT
        self._add_dir(index, relpath)
        return Outcome.APPLIED

    def _add_dir(self, index: int, relpath: str) -> None:
        self.dirs[relpath] = index
        os.write(self._journal_fd, (json.dumps([index, relpath]) + "\n").encode())

    def check_delete(self, index: int, entry: fmt.DeleteEntry, famfs_log: FamfsLog) -> None:
        """Raise Rejected unless `entry` deletes the live file its target entry made."""
        relpath, target = entry.relpath, entry.target_index
        if not 0 <= target < index:
            raise Rejected(index, f"DELETE names entry {target}, not an earlier entry", relpath)
        try:
            victim = famfs_log.entry(target)
        except fmt.EntryError as err:
            raise Rejected(index, f"DELETE target is not a valid entry ({err})", relpath) from None
        if type(victim) is not fmt.FileEntry:
            raise Rejected(index, f"DELETE target entry {target} is a {type(victim).__name__}, not a FILE entry", relpath)
        if victim.relpath != relpath:
            raise Rejected(index, f"DELETE target entry {target} is {victim.relpath!r}, not this path", relpath)
        live = self.read_tree_file(relpath)
        if live is None:
            raise Rejected(index, "DELETE of a file that does not exist", relpath)
        if live != emit_file_yaml(victim):
            raise Rejected(index, f"DELETE target entry {target} is not the live file at this path", relpath)

    def remove(self, relpath: str) -> bool:
        """Unlink a shadow file; False if it is already gone (a restart after the unlink)."""
        try:
            os.unlink(relpath, dir_fd=self._root_fd)
        except FileNotFoundError:
            return False
        return True

    def apply_add_daxdev(self, index: int, entry: fmt.AddDaxdevEntry) -> Outcome:
        """The daxdev table for fusefs: dense indexes, unique UUIDs (upstream's table rules)."""
        if entry.dev_index < len(self.daxdevs) and self.daxdevs[entry.dev_index].get("log_index") == index:
            return Outcome.PRESENT
        if entry.dev_index != len(self.daxdevs):
            raise Rejected(index, f"daxdev index {entry.dev_index} is not the next one ({len(self.daxdevs)})")
        if entry.dev_size == 0:
            raise Rejected(index, f"daxdev {entry.dev_index} has size 0")
        if any(row["uuid"] == str(entry.dev_uuid) for row in self.daxdevs):
            raise Rejected(index, f"daxdev UUID {entry.dev_uuid} is already in the table")
        self.daxdevs.append({"index": entry.dev_index, "uuid": str(entry.dev_uuid), "size": entry.dev_size,
                             "path": None, "log_index": index})
        self._save_daxdevs()
        return Outcome.APPLIED

    @staticmethod
    def _primary_daxdev(superblock: fmt.Superblock, device_path: str) -> dict[str, object]:
        return {"index": 0, "uuid": str(superblock.dev_uuid), "size": superblock.dev_size,
                "path": device_path, "log_index": None}

    def _save_daxdevs(self) -> None:
        self.write_agent_file(DAXDEVS_FILE, json.dumps({"daxdevs": self.daxdevs}, indent=1).encode() + b"\n")

    # --- helpers ----------------------------------------------------------------------------

    def _place_new(self, temp: str, relpath: str, discard: Callable[..., None]) -> bool:
        """Rename staged `temp` to root/`relpath` unless that name exists: then False, and `temp`
        is discarded (os.unlink or os.rmdir) so staging/ keeps nothing."""
        if _renameat2(self._staging_fd, temp.encode(), self._root_fd, relpath.encode(), RENAME_NOREPLACE) == 0:
            return True
        failure = ctypes.get_errno()
        discard(temp, dir_fd=self._staging_fd)
        if failure != errno.EEXIST:
            raise ShadowError(failure, f"shadow {self.root}: cannot create {relpath!r}: {os.strerror(failure)}")
        return False

    def _temp_name(self) -> str:
        # Unique: staging/ is private to the lock holder and emptied when it starts.
        self._temp_seq += 1
        return self._temp_prefix + str(self._temp_seq)

    def _stage_file(self, data: bytes) -> str:
        temp = self._temp_name()
        fd = os.open(temp, STAGED_FILE_FLAGS, SHADOW_FILE_MODE, dir_fd=self._staging_fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return temp

    def read_tree_file(self, relpath: str) -> bytes | None:
        """The bytes of a regular file in root/, or None if there is none (or it is a directory)."""
        try:
            fd = os.open(relpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root_fd)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with contextlib.closing(os.fdopen(fd, "rb")) as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return handle.read()

    @staticmethod
    def live_file_index(famfs_log: FamfsLog, relpath: str, before: int) -> int | None:
        """Which FILE entry before `before` owns `relpath` now: a raw scan, for duplicates only."""
        wanted = relpath.encode().ljust(fmt.MAX_PATHLEN, b"\0")
        file_field = fmt.RELPATH_OFFSETS[fmt.EntryType.FILE]
        delete_field = fmt.RELPATH_OFFSETS[fmt.EntryType.DELETE]
        live: int | None = None
        for index in range(before):
            raw = famfs_log.raw_entry(index)
            kind = fmt.ENTRY_HEAD.unpack_from(raw)[1]
            if kind == fmt.EntryType.FILE and raw[file_field:file_field + fmt.MAX_PATHLEN] == wanted:
                live = index if live is None else live
            elif kind == fmt.EntryType.DELETE and raw[delete_field:delete_field + fmt.MAX_PATHLEN] == wanted:
                live = None
        return live

