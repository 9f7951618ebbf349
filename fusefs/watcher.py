"""watchdog (inotify) on the shadow root → relpaths in a trio memory channel.

The consumer re-checks each named path against the disk, so an event only has to say *where*
something happened, never what. What inotify cannot say is reported as RESCAN: a kernel queue
overflow (watchdog rebuilds its watches but tells no handler: we hook that callback), a
directory that could not get a watch (the watch limit; watchdog drops that error for anything
below the root), and our own channel being full.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog
import trio
from watchdog import events as wd_events
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import CallbackId, InotifyFD, Mask, WatchCallback, WatchDescriptor

log = structlog.get_logger("famfs-fuse-mount")

# watchdog warns when a directory's watch is added again for the same handler (a renamed-in
# directory it already watches), with the whole watched path list in the message: the watch is
# simply reused, so it tells nothing, and the text can be megabytes.
warnings.filterwarnings("ignore", message="Callback with id .* already exists", category=RuntimeWarning,
                        module=r"watchdog\.")

RESCAN: Final = None  # channel message: reconcile everything
CHANNEL_SIZE = 65536
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
# Open/close events are our own reads of the YAML files: never a change.
EVENT_FILTER: list[type[wd_events.FileSystemEvent]] = [
    wd_events.FileCreatedEvent, wd_events.DirCreatedEvent, wd_events.FileDeletedEvent, wd_events.DirDeletedEvent,
    wd_events.FileModifiedEvent, wd_events.DirModifiedEvent, wd_events.FileMovedEvent, wd_events.DirMovedEvent,
    wd_events.FileAttribEvent, wd_events.DirAttribEvent,
]


class ShadowWatcher(wd_events.FileSystemEventHandler):
    """Feeds `send` with relpaths (bytes, b"" for the root) or RESCAN, from watchdog's threads."""

    def __init__(self, root: bytes, send: trio.MemorySendChannel[bytes | None], token: trio.lowlevel.TrioToken) -> None:
        self.root = root
        self.prefix = root + b"/"
        self.send = send
        self.token = token
        self.lost_events = False  # a message could not be queued (set and read on the trio thread)
        # Messages not yet handed to the trio thread, deduplicated; one hand-over is scheduled at
        # a time, so a burst of events wakes the trio thread once, not once per path.
        self._pending: dict[bytes | None, None] = {}
        self._pending_lock = threading.Lock()  # never held across anything that waits
        self.observer = _observer(self._lost)

    def start(self) -> None:
        check_watch_limit(self.root)
        self.observer.schedule(self, os.fsdecode(self.root), recursive=True, event_filter=EVENT_FILTER)
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join()

    def alive(self) -> bool:
        return self.observer.is_alive() and all(emitter.is_alive() for emitter in self.observer.emitters)

    def on_any_event(self, event: wd_events.FileSystemEvent) -> None:
        for path in (event.src_path, event.dest_path):
            if path:
                self._forward(self._relpath(os.fsencode(path)))

    def _relpath(self, path: bytes) -> bytes | None:
        if path == self.root:
            return b""
        if path.startswith(self.prefix):
            return path[len(self.prefix):]
        return RESCAN  # outside what we watch: cannot be mapped, so trust nothing

    def _lost(self, reason: str) -> None:
        log.warning("inotify lost events, rescanning the shadow tree", reason=reason)
        self._forward(RESCAN)

    def _forward(self, message: bytes | None) -> None:
        with self._pending_lock:
            scheduled = bool(self._pending)  # a hand-over is on its way and will take this too
            self._pending[message] = None
        if scheduled:
            return
        # run_sync_soon, not from_thread.run_sync: watchdog's thread need not wait for a round
        # trip through the trio loop before it reads the next event.
        try:
            self.token.run_sync_soon(self._enqueue_pending)
        except trio.RunFinishedError:
            pass  # shutting down

    def _enqueue_pending(self) -> None:
        with self._pending_lock:
            messages, self._pending = self._pending, {}
        for message in messages:
            try:
                self.send.send_nowait(message)
            except trio.WouldBlock:
                # The consumer is behind by a whole channel: whatever we drop, a rescan recovers.
                self.lost_events = True
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return  # shutting down


def check_watch_limit(root: bytes) -> None:
    """inotify needs one watch per directory: raise the limit if we can, say so if we cannot."""
    directories = sum(1 for _ in os.walk(root))
    try:
        limit = int(MAX_USER_WATCHES.read_text())
    except (OSError, ValueError):
        return
    wanted = 2 * directories + 1024
    if limit >= wanted:
        return
    try:
        MAX_USER_WATCHES.write_text(str(wanted))
        log.info("raised fs.inotify.max_user_watches", old=limit, new=wanted, directories=directories)
    except OSError as err:
        log.error("shadow tree has more directories than inotify watches; periodic rescans will catch what "
                  "inotify misses", directories=directories, max_user_watches=limit, error=err.strerror)


class ReportingInotifyFD(InotifyFD):
    """watchdog's inotify instance, telling `lost` about each directory that could not get a watch.

    Every watch watchdog adds (at start, for each new directory, after an overflow) goes through
    add_callback, so a failure is seen with its errno and success costs nothing. (Asking the
    watch group afterwards whether the path got a watch rebuilds its whole path map per call in
    watchdog 7: start-up was quadratic, 79 s for 15,420 directories.)
    """

    def __init__(self, lost: Callable[[str], None]) -> None:
        super().__init__()
        self.lost = lost

    def add_callback(self, path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId) -> WatchDescriptor:
        try:
            wd = super().add_callback(path, mask, callback, id_)
        except OSError as err:
            self._unwatched(path, err.strerror or str(err))
            raise  # watchdog drops it below the root (a warning), and fails the start for the root
        if wd < 0:  # EACCES: watchdog returns the failed call's -1 as a descriptor
            self._unwatched(path, "permission denied")
        return wd

    def _unwatched(self, path: bytes, why: str) -> None:
        if os.path.isdir(path):  # a directory that vanished meanwhile needs no watch
            self.lost(f"no inotify watch for {os.fsdecode(path)}: {why} (watch limit?)")


def _observer(lost: Callable[[str], None]) -> BaseObserver:
    """An inotify observer that reports overflows and directories left without a watch to `lost`."""

    class ReportingWatchGroup(InotifyWatchGroup):
        def on_queue_overflow(self) -> None:
            super().on_queue_overflow()
            lost("inotify queue overflow")

    class ReportingEmitter(InotifyEmitter):
        def on_thread_start(self) -> None:
            # InotifyEmitter.on_thread_start with our watch group class.
            self._inotify = ReportingWatchGroup(
                self._inotify_fd, os.fsencode(self.watch.path), is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(), follow_symlink=self.watch.follow_symlink,
            )

    class ReportingObserver(BaseObserver):
        def __init__(self) -> None:
            self._inotify_fd = ReportingInotifyFD(lost)
            self._inotify_fd.start()
            super().__init__(ReportingEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self._inotify_fd)

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self._inotify_fd.stop()

    return ReportingObserver()
