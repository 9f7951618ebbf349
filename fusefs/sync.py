"""Keeping the inode table in step with the shadow tree: watcher batches, full rescans.

Runs on the trio thread (the only one that touches the table). A batch is everything queued
when the consumer wakes, deduplicated: a replay of thousands of renames costs one refresh per
path and one round of notifications. A full rescan walks the tree in a worker thread, then
re-checks every path where walk and table disagree; it runs after anything inotify could not
tell us, and every `period` seconds to bound the effect of a notification lost anyway.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable

import structlog
import trio

from famfs import safepath
from fusefs import shadow_reader
from fusefs.inodes import InodeTable, Notice
from fusefs.notify import Notifier
from fusefs.watcher import RESCAN, ShadowWatcher

log = structlog.get_logger("famfs-fuse-mount")

BATCH_MAX = 8192
DEGRADED_PERIOD_S = 1.0  # how often the watcher is checked; the rescan period once it is gone


class TreeSync:
    def __init__(self, table: InodeTable, notifier: Notifier, period: float,
                 before_refresh: Callable[[], Awaitable[None]]) -> None:
        self.table = table
        self.notifier = notifier
        self.period = period
        # Runs before any change is taken in: the device check (a new tree may describe a new
        # file system, whose files must not be served from the old device).
        self.before_refresh = before_refresh
        self.rescans = 0
        self.lost_rescans = 0  # rescans forced by events inotify lost
        self.batches = 0

    async def consume(self, receive: trio.MemoryReceiveChannel[bytes | None], watcher: ShadowWatcher) -> None:
        async for first in receive:
            batch = {first}
            while len(batch) < BATCH_MAX:
                try:
                    batch.add(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            self.batches += 1
            if RESCAN in batch or watcher.lost_events:
                watcher.lost_events = False
                self.lost_rescans += 1
                await self.rescan("inotify lost events")
                continue
            paths = sorted((path for path in batch if path is not None), key=lambda path: path.count(b"/"))
            await self.before_refresh()
            await self.notifier.send(self._refresh_all(paths))

    def _refresh_all(self, paths: list[bytes]) -> list[Notice]:
        notices: list[Notice] = []
        try:
            root = safepath.Root(self.table.shadow_root)  # one open for the batch, not one a path
        except OSError:
            root = None  # the root is gone: each path finds it so (and the watcher asks for a rescan)
        try:
            for path in paths:
                notices.extend(self._refresh_one(path, None if root is None else root.fd))
        finally:
            if root is not None:
                root.close()
        notices.extend(self.table.sweep_ahead())  # the agent may have played entries that take their units
        return notices

    def _refresh_one(self, path: bytes, root_fd: int | None) -> list[Notice]:
        try:
            return self.table.refresh(path, root_fd)
        except OSError as err:
            # The next event or rescan looks again; the daemon carries on.
            log.warning("cannot read the shadow tree", shadow_path=os.fsdecode(self.table.shadow_path(path)), error=str(err))
            return []

    async def periodic(self, watcher: ShadowWatcher) -> None:
        """A rescan every `period` seconds (0 or inf: never), and every second once the watcher
        has stopped (its root watch is gone, e.g. the shadow root was replaced)."""
        periodic = math.isfinite(self.period) and self.period > 0
        tick = min(DEGRADED_PERIOD_S, self.period) if periodic else DEGRADED_PERIOD_S
        last = trio.current_time()
        degraded = False
        while True:
            await trio.sleep(tick)
            if not degraded and not watcher.alive():
                degraded = True
                log.error("the inotify watcher stopped; rescanning every second instead", period_s=DEGRADED_PERIOD_S)
            due = periodic and trio.current_time() - last >= self.period
            if degraded or due:
                await self.rescan("watcher stopped" if degraded else "periodic")
                last = trio.current_time()

    async def rescan(self, reason: str) -> None:
        disk = await trio.to_thread.run_sync(shadow_reader.walk, self.table.shadow_root)
        candidates = self.table.reconcile_candidates(disk)
        await self.before_refresh()
        notices = self._refresh_all(candidates)
        self.rescans += 1
        # A routine rescan that found nothing is the normal case: keep it out of the info log.
        emit = log.info if candidates or reason not in ("periodic", "watcher stopped") else log.debug
        emit("rescan", reason=reason, changed_paths=len(candidates), inodes=self.table.count(),
             notifications=self.notifier.counters.sent)
        await self.notifier.send(notices)
