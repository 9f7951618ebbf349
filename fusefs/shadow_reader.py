"""Reading the shadow tree: what is at a path (without following symlinks), a directory's
names, and a shadow file's YAML parsed and checked against the device geometry.

Everything here is plain blocking I/O on the shadow tmpfs; callers decide which thread runs it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from famfs import format as fmt
from famfs.rules import Geometry, check_extents
from famfs.shadowdir import META_DIR, SHADOW_FILE_OPEN, read_shadow_file
from famfs.shadowyaml import meta_extents, parse_shadow_file

META_PREFIX = os.fsencode(META_DIR) + b"/"


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


def signature_of(st: os.stat_result) -> Signature | None:
    if stat.S_ISDIR(st.st_mode):
        is_dir = True
    elif stat.S_ISREG(st.st_mode):
        is_dir = False
    else:
        return None
    return Signature(is_dir, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, stat.S_IMODE(st.st_mode),
                     st.st_uid, st.st_gid, st.st_nlink, st.st_atime_ns)


def list_dir(path: bytes) -> dict[bytes, Signature]:
    """Name → signature of every file and directory in `path` (others, and races, skipped)."""
    found: dict[bytes, Signature] = {}
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    sig = signature_of(entry.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue
                if sig is not None:
                    found[entry.name] = sig
    except (FileNotFoundError, NotADirectoryError):
        pass
    return found


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
        for name, sig in list_dir(os.path.join(root, rel) if rel else root).items():
            child = rel + b"/" + name if rel else name
            tree[child] = sig
            if sig.is_dir:
                pending.append(child)
    return tree


# Loading runs on the trio thread: a FIFO put in place of a YAML or a directory must not make
# every request to the mount wait for a writer (SHADOW_FILE_OPEN has O_NONBLOCK).
_OPEN_DIR = SHADOW_FILE_OPEN | os.O_DIRECTORY


def open_dir(path: bytes) -> int | None:
    """A directory's descriptor, for loading many of its files by name (a directory listing
    loads them by the hundred); None if it cannot be opened (each file is then opened by path
    and says what is wrong with it)."""
    try:
        return os.open(path, _OPEN_DIR)
    except OSError:
        return None


def load_file(path: bytes, relpath: bytes, geometry: Geometry, dir_fd: int | None = None) -> fmt.FileEntry:
    """Parse and check one shadow file; fmt.FormatError says what is wrong with it. With
    `dir_fd`, `path` is the file's name in that directory (one path component to resolve)."""
    try:
        raw = read_shadow_file(path, dir_fd)
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
