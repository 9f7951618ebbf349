"""famfs-fuse-mount's Prometheus metrics (docs/operations.md has every metric).

With metrics on, `instrument` puts a counter in front of every request handler of the operations
object (pyfuse3 looks handlers up on the instance, so the class stays untouched and a mount
without metrics pays nothing). Every request is counted, exactly: one list item read and written
on the trio thread, no lock, no clock, and no coroutine of its own: the counter is a plain
function that hands pyfuse3 the handler's own coroutine to await. Its latency is sampled: one
request in SAMPLE_EVERY of each operation (the 1st, the 17th, ...) is handed a coroutine that times
it with perf_counter_ns into a fixed array of buckets, so the time calls, the bucket search and
that frame are paid by one request in 16 (docs/operations.md, "Cost", has what that saves).
Requests answered with an error are counted by the handlers' own wrapper (fusefs.operations.
guarded), with or without metrics. The collector turns those arrays into metric families only
when Prometheus scrapes, from the metrics server's thread. Everything else is read at scrape time
from what the daemon already counts (notifier, tree sync, inode table, open handles).
"""

from __future__ import annotations

import bisect
import errno
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pyfuse3
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from famfs.metrics import build_info, filesystem_info
from fusefs.inodes import InodeTable
from fusefs.notify import Notifier
from fusefs.operations import FamfsOperations
from fusefs.sync import TreeSync

PREFIX = "famfs_fuse"
# Seconds. A request answered from the inode table takes ~10 µs; a 1 MiB read ~0.3 ms.
LATENCY_BOUNDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)
BOUNDS_NS = tuple(round(bound * 1e9) for bound in LATENCY_BOUNDS)
# A power of two (the test is one AND): one request in 16 of each operation is timed.
SAMPLE_EVERY = 16
# Every request pyfuse3 can deliver (its Operations' coroutine methods), each a label value.
OPERATIONS = tuple(name for name, member in inspect.getmembers(pyfuse3.Operations, inspect.iscoroutinefunction))


class MountStats:
    """Plain ints the trio thread bumps and the scrape reads (each read or write of one list item
    is atomic under the GIL): per operation, in OPERATIONS' order, the requests, a count per
    latency bucket of the sampled ones (not cumulative, the last one +Inf) and their sum in ns."""

    def __init__(self) -> None:
        self.requests = [0] * len(OPERATIONS)
        self.sampled = [[0] * (len(BOUNDS_NS) + 1) for _ in OPERATIONS]
        self.sampled_ns = [0] * len(OPERATIONS)


def instrument(ops: FamfsOperations, stats: MountStats) -> None:
    """Count every handler's requests of `ops` and time a sample of them."""
    for index, name in enumerate(OPERATIONS):
        setattr(ops, name, _counted(getattr(ops, name), index, stats))


def _counted(handler: Callable[..., Awaitable[Any]], index: int, stats: MountStats) -> Callable[..., Awaitable[Any]]:
    requests, buckets, sums = stats.requests, stats.sampled[index], stats.sampled_ns
    clock, bounds, mask = time.perf_counter_ns, BOUNDS_NS, SAMPLE_EVERY - 1

    async def timed(*args: Any) -> Any:
        started = clock()
        try:
            return await handler(*args)
        finally:
            elapsed = clock() - started
            buckets[bisect.bisect_left(bounds, elapsed)] += 1
            sums[index] += elapsed

    @functools.wraps(handler)
    def counted(*args: Any) -> Awaitable[Any]:
        seen = requests[index] + 1
        requests[index] = seen
        # The 1st request is timed: a quiet mount shows one.
        return timed(*args) if seen & mask == 1 else handler(*args)

    return counted


class MountCollector:
    def __init__(self, stats: MountStats, ops: FamfsOperations, table: InodeTable, sync: TreeSync,
                 notifier: Notifier, fs_uuid: str) -> None:
        self.stats, self.ops, self.table, self.sync, self.notifier = stats, ops, table, sync, notifier
        self.fs_uuid = fs_uuid

    def collect(self) -> Iterator[Metric]:
        yield build_info(PREFIX)
        yield filesystem_info(PREFIX, self.fs_uuid)
        yield from self._requests()
        errors = CounterMetricFamily(f"{PREFIX}_errors", "FUSE requests answered with an error, by errno",
                                     labels=["errno"])
        for code, count in dict(self.ops.errors).items():
            errors.add_metric([errno.errorcode.get(code, str(code))], count)
        yield errors
        counters = self.notifier.counters
        notices = CounterMetricFamily(f"{PREFIX}_notifications", "Kernel cache invalidations by outcome "
                                      "(not_cached: the kernel had nothing to forget)", labels=["outcome"])
        for outcome in ("sent", "not_cached", "failed"):
            notices.add_metric([outcome], getattr(counters, outcome))
        yield notices
        yield CounterMetricFamily(f"{PREFIX}_rescans", "Full rescans of the shadow tree", value=self.sync.rescans)
        yield CounterMetricFamily(f"{PREFIX}_inotify_lost_rescans", "Rescans forced by events inotify lost "
                                  "(queue overflow, a missing watch, a full channel)", value=self.sync.lost_rescans)
        yield GaugeMetricFamily(f"{PREFIX}_inodes", "Inodes in the inode table", value=self.table.count())
        yield GaugeMetricFamily(f"{PREFIX}_open_files", "Open file handles", value=len(self.ops.file_handles))
        yield GaugeMetricFamily(f"{PREFIX}_open_dirs", "Open directory handles", value=len(self.ops.dir_handles))

    def _requests(self) -> tuple[Metric, Metric]:
        """Every request counted, and the latency histogram of the sampled ones, per operation used."""
        requests = CounterMetricFamily(f"{PREFIX}_requests", "FUSE requests by operation (every one)",
                                       labels=["operation"])
        latency = HistogramMetricFamily(
            f"{PREFIX}_request_duration_sampled_seconds",
            f"FUSE requests by operation: time in the handler, sampled: one request in {SAMPLE_EVERY} of each "
            f"operation is timed (_count = requests timed; {PREFIX}_requests_total counts them all)",
            labels=["operation"])
        stats = self.stats
        for index, name in enumerate(OPERATIONS):
            if not stats.requests[index]:
                continue
            requests.add_metric([name], stats.requests[index])
            counts = list(stats.sampled[index])  # a copy: the trio thread keeps counting
            cumulative, running = [], 0
            for bound, count in zip((*map(str, LATENCY_BOUNDS), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([name], cumulative, stats.sampled_ns[index] / 1e9)
        return requests, latency
