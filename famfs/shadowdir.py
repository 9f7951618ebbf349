"""The shadow directory's layout: the contract between famfs-agent, famfsctl and famfs-fuse-mount
(docs/architecture.md). Every name in it, and how another process finds the device, lives here.

Kept free of heavy imports: famfsctl and famfs-fuse-mount read it at start-up.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from famfs import safepath
from famfs.format import FormatError

ROOT = "root"  # the tree the mount serves
META_DIR = ".meta"  # upstream's, inside root/; reserved: no log entry may name it
SUPERBLOCK_YAML = f"{META_DIR}/.superblock"  # in root/: the superblock as upstream's mount writes it
AGENT_DIR = ".agent"  # agent state: never inside root/
STAGING = "staging"  # in .agent/: everything is built here, then renamed into root/
STATE_FILE = "state.json"  # in .agent/: the cursor, and the device other processes read
DAXDEVS_FILE = "daxdevs.json"
UNITS_FILE = "units"  # in .agent/: the allocation units taken as of the cursor (famfs.rules.Units)
DIRS_JOURNAL = "dirs.jsonl"  # in .agent/: the directories' journal (dirs_journal_line, read_dirs_journal)
LOCK_FILE = "lock"  # flock held by the running agent; holds its pid
PINS_DIR = "pins"  # in .agent/: a pin file per path opened (famfs/pins.py, docs/reclaim.md)
SOCKET = "sock"  # famfs-fuse-mount's REST socket (upstream's name): the C CLI needs it to know the mount
SHADOW_XATTR = "user.famfs.shadow"  # a mount's root answers it with the shadow dir (as upstream's)
OWNERS_FILE = "owners"  # in .agent/: which live log entry owns each allocation unit (famfs.ownership)
LISTINGS_DIR = "listings"  # in .agent/: a record per shadow directory of its files' log entries (famfs.listing)


def owners_file(devindex: int) -> str:
    """The owner map of device `devindex`: OWNERS_FILE for the primary, owners.N for added device N."""
    return OWNERS_FILE if devindex == 0 else f"{OWNERS_FILE}.{devindex}"


# On every directory the agent makes under root/ (itself root's, 0755): the MKDIR entry it was made
# from and the logged attributes the mount serves, b"<index> <mode octal> <uid> <gid>". Only
# CAP_SYS_ADMIN sets trusted.* attributes: an unprivileged user cannot forge it (docs/security.md).
DIR_XATTR = "trusted.famfs.dir"
# On every shadow file the agent writes: the log index its owner map names for the file (its FILE
# entry, or the SETATTR that changed it), b"<index>". The mount lists the file's size, mode and
# owner from that slot, once the owner map confirms it, without parsing the YAML (docs/fusefs.md,
# "Listing"); the YAML stays byte-identical to upstream's. Upstream's CLI sets none: its files are
# parsed in full, as every file is when opened.
FILE_XATTR = "trusted.famfs.file"
SHADOW_DIR_MODE = 0o755  # every directory under root/, whatever mode the log gives it
# .agent/: nobody but the agent lists or writes it; state.json and owners (0644) are read by name
# by the mount, famfsctl and famfs.open, which may run as a user (staging/ inside is 0700).
AGENT_DIR_MODE = 0o711
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
STALE_KEPT = 16  # AgentState.stale_incarnations kept: a mount's handle older than that many fences is rare


@dataclass(frozen=True, slots=True)
class DirRecord:
    """The value of DIR_XATTR: which MKDIR made a shadow directory, and what it logged."""

    index: int
    mode: int
    uid: int
    gid: int

    def encode(self) -> bytes:
        return f"{self.index} {self.mode:o} {self.uid} {self.gid}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> DirRecord | None:
        """The record, or None if `raw` is not one (the directory is then not served)."""
        try:
            index, mode, uid, gid = raw.decode("ascii").split(" ")
            return cls(int(index, 10), int(mode, 8), int(uid, 10), int(gid, 10))
        except (UnicodeDecodeError, ValueError):
            return None


def encode_file_record(index: int) -> bytes:
    """FILE_XATTR's value for a file whose owner-map entry is log entry `index`."""
    return str(index).encode()


def decode_file_record(raw: bytes) -> int | None:
    """The log index FILE_XATTR's value names; None if it is not one (the YAML is then parsed)."""
    return int(raw) if raw.isdigit() and len(raw) < 20 else None


def shadow_permission_problem(shadow_dir: str | os.PathLike[str], euid: int | None = None) -> str | None:
    """Why `shadow_dir` may be written by someone other than `euid` (default: ours), or None.

    As sshd's StrictModes: the directory must be owned by euid and not group/other-writable, and
    every ancestor must be owned by root or euid and not writable by group/other unless sticky
    (a sticky /tmp lets nobody replace another user's entry)."""
    euid = os.geteuid() if euid is None else euid
    path = Path(os.path.abspath(shadow_dir))
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as err:
        return f"{path}: {err.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path}: not a directory (a symlink is not accepted)"
    if st.st_uid != euid:
        return f"{path}: owned by uid {st.st_uid}, not by this process's uid {euid}: only it may write the shadow tree"
    if st.st_mode & 0o022:
        return f"{path}: mode {stat.S_IMODE(st.st_mode):04o} is group/other-writable: only its owner may write it"
    for ancestor in path.parents:
        st = os.stat(ancestor)
        if st.st_uid not in (0, euid):
            return f"{ancestor}: an ancestor of the shadow directory owned by uid {st.st_uid}, who could replace it"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return (f"{ancestor}: an ancestor of the shadow directory is group/other-writable "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}) without the sticky bit: others could replace it")
    return None


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


@dataclass
class AgentState:
    """The schema of state.json, read and written only through this class. famfsctl and
    famfs-fuse-mount read `device` from it; famfs-fuse-mount its identity too."""

    device: str
    fs_uuid: str
    # An image file's identity (st_dev, st_ino of what the agent read): the mount serves bytes only
    # from that file, not from one that replaced it at the same path. None on a devdax or pmem.
    device_dev: int | None = None
    device_ino: int | None = None
    applied_index: int = -1  # the cursor: every entry up to here is dealt with
    log_epoch: int = 0  # which log the cursor is in: a compaction starts a new one (docs/reclaim.md)
    applied_seqnum: int | None = None
    applied_crc: int | None = None
    next_index_seen: int = 0  # the log's next_index when last polled
    rejected: int = 0  # entries up to the cursor that were rejected
    live_files: int | None = None  # shadow files the tree holds as of the cursor (None: not counted yet)
    last_error: str | None = None
    stalled_at: int | None = None  # a corrupt entry progress is stopped at
    # A run of checked DELETEs from applied_index + 1 on, [index, relpath] each: their unlinks may
    # have happened (the agent's restart finishes them). Written once per run, not per DELETE.
    pending_deletes: list[list[object]] = field(default_factory=list)
    role: str = "client"  # identity.Role.value
    # The host's identity the agent runs with (identity.HostIdentity): the absolute path of its
    # system-UUID file and the UUID it held (None: no such file, a client). famfs-fuse-mount takes
    # its identity from here (identity.agents_identity): one host, one identity.
    system_uuid_file: str | None = None
    system_uuid: str | None = None
    boot_id: str = field(default_factory=boot_id)
    pid: int = field(default_factory=os.getpid)
    following: bool = False
    updated_at: float = field(default_factory=time.time)
    caught_up_at: float | None = None  # last time the tree held every logged entry
    # Reclaim (docs/reclaim.md): this agent's record in the host table, for its mount's self-fence.
    host_slot: int | None = None  # None: no record (an agent from before reclaim, or a hand-made tree)
    incarnation: int | None = None  # the record's incarnation while this agent runs
    # Incarnations that served the tree as it is now (since its last fresh play); a FENCE naming
    # any of them fences the tree. Their handles in the mount stay good across agent restarts.
    tree_incarnations: list[int] = field(default_factory=list)
    # Incarnations whose tree was dropped (fenced, or the record lost): the mount answers their
    # handles ESTALE. The most recent STALE_KEPT.
    stale_incarnations: list[int] = field(default_factory=list)
    # Born-dead files (agent/borndead.py) whose FILE is at or below the cursor and whose DELETE is
    # not: "DELETE index": [FILE index, relpath]. Their YAML was never made.
    born_dead: dict[str, list[object]] = field(default_factory=dict)
    # The space figures as of the cursor, in allocation units of every device: total, free (no
    # accepted file holds them), held by deleted files not yet reclaimed. The mount answers statfs
    # from them while the cursor is the log's last entry (fusefs/capacity.py), instead of replaying
    # the log. None: not published (an agent from before them).
    total_units: int | None = None
    free_units: int | None = None
    held_units: int | None = None

    def dump(self) -> bytes:
        """One line of JSON. The agent writes it once per batch and once per run of DELETEs: no
        indent (which takes json's pure-Python encoder) and no asdict() (a deep copy of
        born_dead): 0.05 ms instead of 0.24 ms, 3.6 ms with 50 born-dead files (python -m timeit,
        this VM)."""
        return json.dumps({name: getattr(self, name) for name in self.__dataclass_fields__}).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes | None) -> AgentState | None:
        """The saved state, or None if there is none or it is unreadable (then: rebuild)."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            if isinstance(old := data.get("pending_delete"), dict):  # one DELETE, by an agent before runs
                data["pending_deletes"] = [[old["index"], old["path"]]]
            return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except (ValueError, TypeError, KeyError):
            return None


def state_path(shadow_dir: str | os.PathLike[str]) -> Path:
    return Path(shadow_dir) / AGENT_DIR / STATE_FILE


def read_state(shadow_dir: str | os.PathLike[str]) -> AgentState | None:
    """The agent's saved state; None if there is none or it cannot be read."""
    try:
        return AgentState.parse(state_path(shadow_dir).read_bytes())
    except OSError:
        return None


class StateReader:
    """The agent's saved state for a process that asks often (the mount: each check of a file
    served ahead of the log, each statfs after an append). The agent replaces state.json by a
    rename, so one stat (its inode, times and size: ~1 µs) says whether the last parse (~0.2 ms)
    still holds. Missing a change would take a freed inode number reused within one timestamp
    tick at the same size; what the mount decides from the state is checked against the log
    anyway (the cursor's seal, its epoch)."""

    def __init__(self, shadow_dir: str | os.PathLike[str]) -> None:
        self.path = state_path(shadow_dir)
        self.cached: tuple[tuple[int, int, int, int, int], AgentState | None] | None = None

    def read(self) -> AgentState | None:
        """read_state(), parsed again only when state.json is another file or was written since."""
        try:
            st = os.stat(self.path)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            cached = self.cached  # one read: worker threads may replace it meanwhile
            if cached is not None and cached[0] == key:
                return cached[1]
            state = AgentState.parse(self.path.read_bytes())
        except OSError:
            return None
        self.cached = key, state
        return state


def image_identity(fd: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of an open image file; None for a device node (its identity is the UUID)."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def recorded_device(shadow_dir: str | os.PathLike[str]) -> str:
    """The device famfs-agent recorded in `<shadow>/.agent/state.json` (AgentState.device).

    FileNotFoundError if the agent never ran there; ValueError, naming the file, if it names no
    usable device. The agent writes an absolute path: a relative one cannot be trusted.
    """
    path = state_path(shadow_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"{path}: cannot read the device from it: {err}") from None
    state = AgentState.parse(raw)
    if state is None:
        raise ValueError(f"{path}: cannot read the device from it: not an agent state")
    device = state.device
    if not device:
        raise ValueError(f"{path}: names no device")
    if not isinstance(device, str) or not os.path.isabs(device):
        raise ValueError(f"{path}: device {device!r} is not an absolute path (relative to where famfs-agent ran?)")
    return device


def agent_pid(shadow: str | os.PathLike[str]) -> int | None:
    """The pid of the famfs-agent running on `shadow` (holding the flock on its lock file), read
    from /proc/locks: looking must not take the lock, or an agent starting at that instant would
    find its shadow busy."""
    try:
        info = (Path(shadow) / AGENT_DIR / LOCK_FILE).stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{info.st_ino}"):
            major, minor = (int(part, 16) for part in fields[5].split(":")[:2])
            if os.makedev(major, minor) == info.st_dev:
                return int(fields[4])
    return None


# Opening a shadow file: a shadow tree is a directory any root process can write, so every reader
# (the agent, the mount, famfs.open) opens without following a symlink and without waiting for a
# writer on a FIFO put in a file's place (O_NONBLOCK), and reads only a regular file of the size
# the agent writes.
SHADOW_FILE_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_SHADOW_FILE_BYTES = 64 * 1024  # a 16-extent file is ~1.2 KiB; anything this big is not ours


def read_shadow_file(path: str | bytes, dir_fd: int | None = None) -> bytes:
    """The bytes of the shadow file at `path` (a relative path beneath `dir_fd`, if given). OSError
    if it cannot be opened (ELOOP: a symlink on the way); FormatError if it is not a regular file
    or is too large."""
    if dir_fd is None:
        fd = os.open(path, SHADOW_FILE_OPEN)
    else:  # no component of `path` followed, none leaving dir_fd's tree (famfs.safepath)
        fd = safepath.open_beneath(dir_fd, path, SHADOW_FILE_OPEN)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FormatError(f"not a regular file (mode {mode:#o})")
        raw = os.read(fd, MAX_SHADOW_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_SHADOW_FILE_BYTES:
        raise FormatError(f"larger than {MAX_SHADOW_FILE_BYTES} bytes")
    return raw


def dirs_journal_line(index: int, relpath: str, *, removed: bool = False) -> bytes:
    """One line of the directories' journal, appended in log order: `[index, relpath]` for an
    applied MKDIR, `[index, relpath, "rmdir"]` for an applied RMDIR."""
    return (json.dumps([index, relpath, "rmdir"] if removed else [index, relpath]) + "\n").encode()


def read_dirs_journal(raw: bytes, applied_index: int) -> tuple[dict[str, int], int]:
    """The logged directories live as of the cursor (relpath: the index of the MKDIR that made
    it), and how many leading bytes of `raw` hold them: what follows is from a run killed before
    its cursor moved (or a line the kill cut short)."""
    dirs: dict[str, int] = {}
    used = 0
    for line in raw.splitlines(keepends=True):
        try:
            index, relpath, *removed = json.loads(line)
        except (ValueError, TypeError):
            break
        if index > applied_index:
            break
        if removed:
            dirs.pop(relpath, None)
        else:
            dirs[relpath] = index
        used += len(line)
    return dirs, used


def tree_problem(shadow_dir: str | os.PathLike[str], applied_index: int) -> str | None:
    """Why `<shadow>/root` does not hold what the cursor says was applied, or None.

    Cheap enough for a probe (one stat per logged directory): root/ and its .meta/.superblock
    exist, and so does every directory the journal says is live at the cursor (made by a MKDIR,
    not removed by an RMDIR since). It catches a tree wiped or replaced behind the agent's back,
    not a single file changed.
    """
    base = Path(shadow_dir)
    root = base / ROOT
    try:
        opened = safepath.Root(root)
    except OSError as err:
        return f"{root}: {err.strerror}"
    with opened as root_fd:
        return _tree_problem(base, root_fd, applied_index)


def _tree_problem(base: Path, root_fd: int, applied_index: int) -> str | None:
    """tree_problem in root/ open as `root_fd`: nothing followed (a symlink where a logged
    directory should be is damage, never a way out of the tree)."""
    root = base / ROOT
    if _mode_beneath(root_fd, SUPERBLOCK_YAML, stat.S_ISREG) is not True:
        return f"{root / SUPERBLOCK_YAML} is missing"
    try:
        journal = (base / AGENT_DIR / DIRS_JOURNAL).read_bytes()
    except FileNotFoundError:
        journal = b""
    except OSError as err:
        return f"{base / AGENT_DIR / DIRS_JOURNAL}: {err.strerror}"
    for relpath, index in read_dirs_journal(journal, applied_index)[0].items():
        found = _mode_beneath(root_fd, relpath, stat.S_ISDIR)
        if found is None:
            return f"directory {relpath!r} (log entry {index}) is missing from {root}"
        if not found:
            return f"directory {relpath!r} (log entry {index}) in {root} is not a directory (a symlink?)"
    return None


def _mode_beneath(root_fd: int, relpath: str, kind: Callable[[int], bool]) -> bool | None:
    """Whether `relpath` beneath root_fd is of `kind`; None if it is missing or lies beyond a
    symlink or a mount point."""
    try:
        return kind(safepath.lstat_beneath(root_fd, relpath).st_mode)
    except OSError:
        return None


class MountError(ValueError):
    """A path that is not inside a mounted famfs, or whose mount names no usable device."""


@dataclass(frozen=True, slots=True)
class MountTarget:
    device: str  # as famfs-agent recorded it in <shadow>/.agent/state.json
    relpath: str  # "" for the mount root
    shadow: str
    root: str  # the mount point


def locate_in_mount(path: str | os.PathLike[str]) -> MountTarget:
    """Where a path inside a mounted famfs lives: the device, the relpath, the shadow dir.

    The mount answers getxattr(user.famfs.shadow) with its shadow dir (as upstream's does), whose
    .agent/state.json names the device. The mount root is the topmost directory on that file
    system (same st_dev).
    """
    given = os.fspath(path)
    absolute = os.path.abspath(given)
    probe = absolute
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    while True:
        try:
            shadow = os.fsdecode(os.getxattr(probe, SHADOW_XATTR))
            break
        except OSError:
            if probe == "/":
                raise MountError(f"{given}: not inside a mounted famfs (no {SHADOW_XATTR} xattr)") from None
            probe = os.path.dirname(probe)
    root = probe
    while root != "/" and os.stat(os.path.dirname(root)).st_dev == os.stat(root).st_dev:
        root = os.path.dirname(root)
    try:
        device = recorded_device(shadow)
    except (OSError, ValueError) as err:
        raise MountError(f"{given}: famfs mount at {root}, but its device is unknown: {err}") from None
    relpath = os.path.relpath(absolute, root)
    return MountTarget(device, "" if relpath == "." else relpath, shadow, root)
