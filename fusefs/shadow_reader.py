"""Reading the shadow tree: what is at a path (without following symlinks), a directory's
names, and a shadow file's YAML parsed and checked against the device geometry.

Every path below the shadow root is resolved beneath it with famfs.safepath: no component is a
symlink or a mount point, so nothing read can come from outside the tree (docs/security.md).

Everything here is plain blocking I/O on the shadow tmpfs; callers decide which thread runs it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from famfs import format as fmt
from famfs import safepath
from famfs.rules import Geometry, check_extents
from famfs.shadowdir import DIR_XATTR, FILE_XATTR, META_DIR, SHADOW_FILE_OPEN, decode_file_record, read_shadow_file
from famfs.shadowyaml import meta_extents, parse_shadow_file

META_NAME = os.fsencode(META_DIR)
META_PREFIX = META_NAME + b"/"


@dataclass(frozen=True, slots=True)
class Signature:
    """What identifies one version of a shadow path: a rename over it changes st_ino."""

    is_dir: bool
    st_ino: int
    mtime_ns: int
    ctime_ns: int
    size: int
    mode: int
    uid: int
    gid: int
    nlink: int
    atime_ns: int = field(compare=False)  # reading a YAML moves it; not a change


def signature(path: bytes) -> Signature | None:
    """The path's signature; None if missing, a symlink, or anything but a file or directory
    (we never follow a symlink, so nothing can lead outside the shadow root)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return signature_of(st)


def signature_beneath(root: bytes, relpath: bytes) -> Signature | None:
    """signature() of `relpath` below `root`, no component on the way followed."""
    if not relpath:
        return signature(root)
    try:
        with safepath.Root(root) as root_fd:
            return signature_of(safepath.lstat_beneath(root_fd, os.fsdecode(relpath)))
    except OSError:
        return None  # missing, or beyond a symlink or mount point: not in the tree


def open_beneath_root(root: bytes, relpath: bytes, flags: int) -> int:
    """A descriptor for `relpath` below `root` (b"": root itself), nothing followed."""
    with safepath.Root(root) as root_fd:
        return safepath.open_beneath(root_fd, os.fsdecode(relpath), flags) if relpath else os.dup(root_fd)


def dir_xattr(root: bytes, relpath: bytes) -> bytes | None:
    """The trusted.famfs.dir value of shadow directory `relpath`, or None if it has none."""
    try:
        fd = open_beneath_root(root, relpath, _OPEN_DIR)
    except OSError:
        return None
    return _record_closing(fd)


# O_PATH: a handle on the file itself, nothing read, nothing that blocks (a FIFO in its place).
_OPEN_HANDLE = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def file_record(root: bytes, relpath: bytes, dir_fd: int | None = None) -> int | None:
    """The log index the trusted.famfs.file of shadow file `relpath` below `root` names (read
    by name in its directory `dir_fd`, if given); None if it has none, or it cannot be read.
    Python has no getxattrat: the file is named through /proc/self/fd, the descriptor's
    directory (or an O_PATH handle) and one component that is not followed."""
    try:
        if dir_fd is not None:
            raw = os.getxattr(b"/proc/self/fd/%d/%s" % (dir_fd, relpath.rpartition(b"/")[2]), FILE_XATTR,
                              follow_symlinks=False)
        else:
            fd = open_beneath_root(root, relpath, _OPEN_HANDLE)
            try:
                raw = os.getxattr(b"/proc/self/fd/%d" % fd, FILE_XATTR)  # the magic link: the file itself
            finally:
                os.close(fd)
    except OSError:
        return None
    return decode_file_record(raw)


def signature_of(st: os.stat_result) -> Signature | None:
    if stat.S_ISDIR(st.st_mode):
        is_dir = True
    elif stat.S_ISREG(st.st_mode):
        is_dir = False
    else:
        return None
    return Signature(is_dir, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, stat.S_IMODE(st.st_mode),
                     st.st_uid, st.st_gid, st.st_nlink, st.st_atime_ns)


def list_dir(root: bytes, relpath: bytes) -> dict[bytes, Signature]:
    """Name → signature of every file and directory in `relpath` below `root` (others, and
    races, skipped; nothing if the way there is not a directory or crosses a symlink)."""
    return scan_dir(root, relpath, xattrs=False)[0]


def scan_dir(root: bytes, relpath: bytes, *, xattrs: bool = True,
             root_fd: int | None = None) -> tuple[dict[bytes, Signature], dict[bytes, bytes | None]]:
    """list_dir, and (with `xattrs`) each subdirectory's trusted.famfs.dir, read through the
    directory's own descriptor (one open of each subdirectory by name, never followed).
    `root_fd`: `root` already open (a scan of many directories opens it once)."""
    found: dict[bytes, Signature] = {}
    records: dict[bytes, bytes | None] = {}
    try:
        if root_fd is None:
            fd = open_beneath_root(root, relpath, _OPEN_DIR)
        else:
            fd = safepath.open_beneath(root_fd, os.fsdecode(relpath), _OPEN_DIR) if relpath else os.dup(root_fd)
    except OSError:
        return found, records
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    sig = signature_of(entry.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue
                if sig is None:
                    continue
                name = os.fsencode(entry.name)
                found[name] = sig
                if xattrs and sig.is_dir:
                    records[name] = _xattr_at(fd, entry.name)
    except (FileNotFoundError, NotADirectoryError):
        pass
    finally:
        os.close(fd)
    return found, records


def _xattr_at(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except OSError:
        return None
    return _record_closing(fd)


def _record_closing(fd: int) -> bytes | None:
    """The trusted.famfs.dir value of directory `fd` (None if it has none); `fd` is closed."""
    try:
        return os.getxattr(fd, DIR_XATTR)
    except OSError:
        return None
    finally:
        os.close(fd)


def walk(root: bytes) -> dict[bytes, Signature]:
    """Relpath (b"" for the root) → signature of everything below root, for a full rescan."""
    tree: dict[bytes, Signature] = {}
    root_sig = signature(root)
    if root_sig is None or not root_sig.is_dir:
        return tree
    tree[b""] = root_sig
    pending = [b""]
    while pending:
        rel = pending.pop()
        for name, sig in list_dir(root, rel).items():
            child = rel + b"/" + name if rel else name
            tree[child] = sig
            if sig.is_dir:
                pending.append(child)
    return tree


# Loading runs on the trio thread: a FIFO put in place of a YAML or a directory must not make
# every request to the mount wait for a writer (SHADOW_FILE_OPEN has O_NONBLOCK).
_OPEN_DIR = SHADOW_FILE_OPEN | os.O_DIRECTORY


def open_dir(root: bytes, relpath: bytes) -> int | None:
    """Directory `relpath` below `root` open, for loading many of its files by name (a
    directory listing loads them by the hundred); None if it cannot be opened (each file is
    then opened by its path and says what is wrong with it)."""
    try:
        return open_beneath_root(root, relpath, _OPEN_DIR)
    except OSError:
        return None


def load_file(root: bytes, relpath: bytes, geometry: Geometry, dir_fd: int | None = None) -> fmt.FileEntry:
    """Parse and check one shadow file (`relpath` below `root`, or its last component in
    directory `dir_fd`); fmt.FormatError says what is wrong with it, FileNotFoundError that it
    is gone (the agent applied its DELETE since it was listed: no damage)."""
    try:
        if dir_fd is not None:
            raw = read_shadow_file(relpath.rpartition(b"/")[2], dir_fd)
        else:
            with safepath.Root(root) as root_fd:
                raw = read_shadow_file(relpath, root_fd)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise fmt.FormatError("is a symlink") from None
        raise fmt.FormatError(f"cannot open: {err.strerror}") from None
    entry = parse_shadow_file(raw, relpath)
    metadata = relpath.startswith(META_PREFIX)
    check_extents(entry, geometry, metadata=metadata)
    if metadata and (entry.stripes or entry.extents != (meta_extents(geometry.log_len).get(entry.relpath),)):
        # Only the two files the agent writes may map the superblock or the log, and only that.
        raise fmt.FormatError("under .meta/ but not the superblock or log file as the agent writes them")
    return entry
