"""famfs-fuse-mount's Prometheus metrics (docs/operations.md has every metric).

With metrics on, `instrument` wraps every request handler of the operations object in a timer
(pyfuse3 looks handlers up on the instance, so the class stays untouched and a mount without
metrics pays nothing). A request costs two clock reads, one bisect and three additions on the
trio thread; the histogram is kept as plain lists and only turned into metric families when
Prometheus scrapes, from the metrics server's thread. Everything else is read at scrape time from
what the daemon already counts (notifier, tree sync, inode table, open handles).
"""

from __future__ import annotations

import bisect
import errno
import functools
import inspect
import time
from collections import Counter
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
# Every request pyfuse3 can deliver (its Operations' coroutine methods), each a label value.
OPERATIONS = tuple(name for name, member in inspect.getmembers(pyfuse3.Operations, inspect.iscoroutinefunction))


class OperationStats:
    """One operation's latency histogram: a count per bucket (not cumulative), and the sum."""

    __slots__ = ("buckets", "total_s")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)  # the last one is +Inf
        self.total_s = 0.0


class MountStats:
    def __init__(self) -> None:
        self.operations = {name: OperationStats() for name in OPERATIONS}
        self.errors: Counter[int] = Counter()  # errno -> requests answered with it


def instrument(ops: FamfsOperations, stats: MountStats) -> None:
    """Time every handler of `ops`, count its FUSEError answers by errno."""
    for name in OPERATIONS:
        setattr(ops, name, _timed(getattr(ops, name), stats.operations[name], stats.errors))


def _timed(handler: Callable[..., Awaitable[Any]], figures: OperationStats,
           errors: Counter[int]) -> Callable[..., Awaitable[Any]]:
    clock, buckets, bounds = time.perf_counter, figures.buckets, LATENCY_BOUNDS

    @functools.wraps(handler)
    async def timed(*args: Any) -> Any:
        started = clock()
        try:
            return await handler(*args)
        except pyfuse3.FUSEError as err:
            errors[err.errno] += 1
            raise
        finally:
            elapsed = clock() - started
            buckets[bisect.bisect_left(bounds, elapsed)] += 1
            figures.total_s += elapsed

    return timed


class MountCollector:
    def __init__(self, stats: MountStats, ops: FamfsOperations, table: InodeTable, sync: TreeSync,
                 notifier: Notifier, fs_uuid: str) -> None:
        self.stats, self.ops, self.table, self.sync, self.notifier = stats, ops, table, sync, notifier
        self.fs_uuid = fs_uuid

    def collect(self) -> Iterator[Metric]:
        yield build_info(PREFIX)
        yield filesystem_info(PREFIX, self.fs_uuid)
        latency = HistogramMetricFamily(f"{PREFIX}_request_duration_seconds",
                                        "FUSE requests by operation: time in the handler (_count = requests)",
                                        labels=["operation"])
        for name, figures in self.stats.operations.items():
            counts = list(figures.buckets)  # a copy: the trio thread keeps counting
            if not any(counts):
                continue
            cumulative, running = [], 0
            for bound, count in zip((*map(str, LATENCY_BOUNDS), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([name], cumulative, figures.total_s)
        yield latency
        errors = CounterMetricFamily(f"{PREFIX}_errors", "FUSE requests answered with an error, by errno",
                                     labels=["errno"])
        for code, count in dict(self.stats.errors).items():
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
