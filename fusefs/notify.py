"""Telling the kernel what to forget, from worker threads.

pyfuse3's invalidate calls block until related operations on the parent finish, and those are
served by the trio thread: calling them from a handler (or holding anything a handler needs)
deadlocks. So notices go to worker threads through trio.to_thread.run_sync with a
CapacityLimiter, after the inode table has been updated. Notices about one directory run in
order in one thread (a deleted name then its new occupant); different directories run side by
side, so one slow invalidation cannot hold up the rest. ENOENT means the kernel had nothing
cached: that is success.
"""

from __future__ import annotations

import errno
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pyfuse3
import structlog
import trio

from fusefs.inodes import Notice, NoticeKind

log = structlog.get_logger("famfs-fuse-mount")

WORKER_THREADS = 4


@dataclass
class NotifyCounters:
    sent: int = 0
    not_cached: int = 0  # ENOENT: the kernel had no such entry or inode cached
    failed: int = 0


class Notifier:
    def __init__(self, threads: int = WORKER_THREADS) -> None:
        self.limiter = trio.CapacityLimiter(threads)
        self.counters = NotifyCounters()
        self.closed = False  # read by the worker threads before each notification
        self.in_flight = 0  # groups handed to worker threads and not back yet
        self._idle = trio.Event()

    async def close(self) -> None:
        """Send nothing more, and return once no worker thread is delivering a notification.

        A notification can wait for the request loop to answer (the kernel takes the directory's
        lock first): call this while the loop still runs, before pyfuse3.terminate().
        """
        self.closed = True
        while self.in_flight:
            self._idle = trio.Event()
            await self._idle.wait()

    async def send(self, notices: Sequence[Notice]) -> None:
        if not notices or self.closed:
            return
        groups: dict[int, list[Notice]] = defaultdict(list)
        for notice in notices:
            groups[notice.parent if notice.kind in (NoticeKind.NEW_NAME, NoticeKind.DELETED) else notice.ino].append(notice)
        async with trio.open_nursery() as nursery:
            for group in groups.values():
                nursery.start_soon(self._send_group, group)

    async def _send_group(self, group: list[Notice]) -> None:
        self.in_flight += 1
        try:
            outcome = await trio.to_thread.run_sync(self._deliver, group, limiter=self.limiter)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
        # Counted here, on the trio thread, so worker threads share nothing mutable.
        self.counters.sent += outcome.sent
        self.counters.not_cached += outcome.not_cached
        self.counters.failed += outcome.failed

    def _deliver(self, group: list[Notice]) -> NotifyCounters:
        outcome = NotifyCounters()
        for notice in group:
            if self.closed:
                break  # the mount is going away: the kernel forgets everything anyway
            try:
                match notice.kind:
                    case NoticeKind.NEW_NAME:
                        pyfuse3.invalidate_entry(notice.parent, notice.name)
                    case NoticeKind.DELETED:
                        pyfuse3.invalidate_entry(notice.parent, notice.name, deleted=notice.ino)
                    case NoticeKind.ATTRS:
                        pyfuse3.invalidate_inode(notice.ino, attr_only=True)
                    case NoticeKind.INODE:
                        pyfuse3.invalidate_inode(notice.ino)
                outcome.sent += 1
            except OSError as err:
                if err.errno == errno.ENOENT:
                    outcome.not_cached += 1
                else:
                    outcome.failed += 1
                    log.warning("kernel notification failed", kind=notice.kind.value, ino=notice.ino,
                                name=notice.name.decode(errors="replace"), error=str(err))
        return outcome
