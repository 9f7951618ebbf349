"""Wake hints for the follower: something that becomes readable when the log may have changed.

A writer on this host appends to an image-file device with pwrite(2) (agent.device.Device.write),
which raises inotify IN_MODIFY on the image: watching it lets a follower sleep long when idle and
still wake within microseconds of an append. A devdax or pmem device is written through a
mapping, which raises no event, and writers on other hosts raise none at all: there the follower
relies on polling alone. The self-pipe makes SIGTERM/SIGINT end a wait at once.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal

IN_MODIFY = 0x00000002
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
DRAIN_CHUNK = 65536

_libc = ctypes.CDLL(None, use_errno=True)


class ImageWriteWatch:
    """An inotify IN_MODIFY watch on one image file."""

    def __init__(self, path: str) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if _libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self.fd = fd

    def drain(self) -> None:
        try:
            while os.read(self.fd, DRAIN_CHUNK):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


class Waiter:
    """Sleeps until a timeout, the write hint (if any) fires, or a signal arrives."""

    def __init__(self, hint: ImageWriteWatch | None) -> None:
        self.hint = hint
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        self._fds = [self._signal_r] + ([hint.fd] if hint else [])

    def wait(self, timeout_s: float) -> bool:
        """True if the write hint fired (the log probably changed)."""
        ready, _, _ = select.select(self._fds, [], [], timeout_s)
        if not ready:
            return False
        if self._signal_r in ready:
            try:
                os.read(self._signal_r, DRAIN_CHUNK)
            except BlockingIOError:
                pass
        if self.hint is not None and self.hint.fd in ready:
            self.hint.drain()
            return True
        return False

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._signal_r)
        os.close(self._signal_w)
        if self.hint is not None:
            self.hint.close()
