"""Wake hints for the follower: something that becomes readable when the log may have changed.

A writer on this host appends to an image-file device with pwrite(2) (agent.device.Device.write),
which raises inotify IN_MODIFY on the image: watching it lets a follower sleep long when idle and
still wake within microseconds of an append. A devdax or pmem device is written through a
mapping, which raises no event, and writers on other hosts raise none at all: there the follower
relies on polling alone. The self-pipe makes SIGTERM/SIGINT end a wait at once.
"""

from __future__ import annotations

import os
import select
import signal

from famfs import inotify

DRAIN_CHUNK = 65536


class ImageWriteWatch:
    """An inotify IN_MODIFY watch on one image file."""

    def __init__(self, path: str) -> None:
        self._inotify = inotify.Inotify()
        try:
            self._inotify.add_watch(os.fsencode(path), inotify.IN_MODIFY)
        except OSError:
            self._inotify.close()
            raise
        self.fd = self._inotify.fd

    def drain(self) -> None:
        while self._inotify.read():
            pass

    def close(self) -> None:
        self._inotify.close()


class Waiter:
    """Sleeps until a timeout, the write hint (if any) fires, or a signal arrives.

    Every wait of the follower goes through one Waiter: signal.set_wakeup_fd writes to its pipe
    as the signal arrives, so no wait, however long, outlives a SIGTERM.
    """

    def __init__(self, hint: ImageWriteWatch | None = None) -> None:
        self.hint = hint
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)

    def watch(self, hint: ImageWriteWatch | None) -> None:
        """Wake on `hint` from now on (the device was opened or re-opened)."""
        if self.hint is not None:
            self.hint.close()
        self.hint = hint

    def wait(self, timeout_s: float) -> bool:
        """True if the write hint fired (the log probably changed)."""
        ready = self._select([self._signal_r] + ([self.hint.fd] if self.hint else []), timeout_s)
        if self.hint is not None and self.hint.fd in ready:
            self.hint.drain()
            return True
        return False

    def sleep(self, timeout_s: float) -> None:
        """Sleep `timeout_s`, or until a signal arrives."""
        self._select([self._signal_r], timeout_s)

    def _select(self, fds: list[int], timeout_s: float) -> list[int]:
        # A signal that arrives before select() starts is already a byte in the pipe: no wait
        # can miss it. The handler has set the caller's flag by the time this returns.
        ready, _, _ = select.select(fds, [], [], timeout_s)
        if self._signal_r in ready:
            try:
                os.read(self._signal_r, DRAIN_CHUNK)
            except BlockingIOError:
                pass
        return ready

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._signal_r)
        os.close(self._signal_w)
        if self.hint is not None:
            self.hint.close()
