"""Linux inotify through libc (ctypes): an instance, its watches, and its events parsed in bulk.

What the mount's shadow watcher (fusefs/watcher.py) and the agent's write hint (agent/wakeup.py)
need. One `os.read` returns every event queued (up to the buffer),
parsed with one `struct.unpack_from` each: no thread, no per-event objects beyond a tuple.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator
from typing import Final

IN_MODIFY: Final = 0x2
IN_ATTRIB: Final = 0x4
IN_MOVED_FROM: Final = 0x40
IN_MOVED_TO: Final = 0x80
IN_CREATE: Final = 0x100
IN_DELETE: Final = 0x200
IN_DELETE_SELF: Final = 0x400
IN_MOVE_SELF: Final = 0x800
IN_Q_OVERFLOW: Final = 0x4000
IN_IGNORED: Final = 0x8000
IN_ONLYDIR: Final = 0x01000000
IN_DONT_FOLLOW: Final = 0x02000000
IN_ISDIR: Final = 0x40000000

# The changes of a tree, never our own opens and reads of its YAML files. A symlink is never
# followed, and only a directory gets a watch (a name swapped for a symlink or a file: ENOTDIR).
WATCH_MASK: Final = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
                     | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)

_HEADER: Final = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
READ_SIZE: Final = 1 << 16  # thousands of events a read; below malloc's mmap threshold (128 KiB)

_libc = ctypes.CDLL(None, use_errno=True)  # ctypes releases the GIL for each call
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]

Event = tuple[int, int, int, bytes]  # wd, mask, cookie, name (b"" for the watched directory itself)


class Inotify:
    """One nonblocking inotify instance (close-on-exec)."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add_watch(self, path: bytes, mask: int = WATCH_MASK) -> int:
        """The watch descriptor (the same one again for a directory already watched); OSError if none."""
        wd = _libc.inotify_add_watch(self.fd, path, mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Drop a watch (its IN_IGNORED follows); one already gone is no error."""
        _libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> bytes:
        """Whatever is queued, b"" if nothing is (never waits)."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # every watch goes with it
            self.fd = -1


def events(data: bytes) -> Iterator[Event]:
    """The events of one read: the kernel only returns whole events."""
    unpack, size, offset, end = _HEADER.unpack_from, _HEADER.size, 0, len(data)
    while offset < end:
        wd, mask, cookie, length = unpack(data, offset)
        offset += size
        yield wd, mask, cookie, data[offset:offset + length].rstrip(b"\0")
        offset += length
