"""Resolving a path inside the shadow tree without leaving it (docs/security.md).

A relative path is opened beneath a directory descriptor with openat2(2) and RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV: a symlink, a `..`, an absolute path or a mount point
anywhere on the way fails (ELOOP or EXDEV) instead of being followed. Where the kernel has no
openat2 (ENOSYS, before Linux 5.6) the same rule is applied one component at a time with
O_NOFOLLOW | O_DIRECTORY and an st_dev check per component (which cannot see a bind mount of the
same file system: openat2 can).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

SYS_OPENAT2 = 437  # x86_64, arm64 and every arch with the generic syscall table
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_have_openat2 = True  # until the kernel says ENOSYS (a test may clear it to try the walk)


def open_beneath(dir_fd: int, relpath: str | bytes, flags: int, mode: int = 0) -> int:
    """A descriptor for `relpath` (relative, no `..`) beneath directory `dir_fd`; OSError if
    it cannot be opened or the way leads through a symlink or out of dir_fd's mount (ELOOP,
    EXDEV). The last component is not followed either (O_NOFOLLOW is implied)."""
    global _have_openat2
    path = os.fsencode(relpath)
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if not path:
        path = b"."
    if _have_openat2:
        how = _OpenHow(flags, mode, RESOLVE)
        fd = _syscall(SYS_OPENAT2, dir_fd, path, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code != errno.ENOSYS:
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        _have_openat2 = False
    return _walk(dir_fd, path, flags, mode)


def _walk(dir_fd: int, path: bytes, flags: int, mode: int) -> int:
    """open_beneath without openat2: one component at a time, none followed, none on another
    file system."""
    parts = path.split(b"/")
    if path.startswith(b"/") or b".." in parts:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fsdecode(path))
    parts = [part for part in parts if part not in (b"", b".")] or [b"."]
    device = os.fstat(dir_fd).st_dev
    current = dir_fd
    try:
        for part in parts[:-1]:
            step = os.open(part, DIR_OPEN, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = step
            if os.fstat(current).st_dev != device:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fsdecode(path))
        fd = os.open(parts[-1], flags, mode, dir_fd=current)
        if os.fstat(fd).st_dev != device:
            os.close(fd)
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fsdecode(path))
        return fd
    finally:
        if current != dir_fd:
            os.close(current)


@contextlib.contextmanager
def parent_of(dir_fd: int, relpath: str) -> Iterator[tuple[int, str]]:
    """(descriptor of relpath's directory, its last component), the directory resolved beneath
    `dir_fd`: every call that makes, renames, unlinks or looks at a name then acts on that one
    component only, in that descriptor."""
    head, _, name = relpath.rpartition("/")
    if not head:
        yield dir_fd, name
        return
    fd = open_beneath(dir_fd, head, DIR_OPEN)
    try:
        yield fd, name
    finally:
        os.close(fd)


def lstat_beneath(dir_fd: int, relpath: str) -> os.stat_result:
    """lstat of `relpath` beneath `dir_fd`, no component followed (FileNotFoundError if missing)."""
    with parent_of(dir_fd, relpath) as (parent, name):
        return os.lstat(name, dir_fd=parent)


class Root:
    """A tree's top directory open (itself not followed if a symlink), to resolve beneath for
    the length of a with block: opened here (OSError if it cannot be), closed at the block's end."""

    def __init__(self, path: str | bytes | os.PathLike[str]) -> None:
        self.fd = os.open(path, DIR_OPEN)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        os.close(self.fd)
