"""famfs-fuse-mount's Prometheus metrics (docs/operations.md has every metric).

With metrics on, `instrument` gives the operations object a MountStats, and the handlers' own
wrapper (fusefs.operations.guarded, the one frame every request has anyway) counts every
request in it, exactly: one list item read and written on the trio thread, no lock, no clock.
Its latency is sampled: one request in SAMPLE_EVERY of each operation (the 1st, the 17th, ...)
is timed with perf_counter_ns into a fixed array of buckets, so the time calls and the bucket
search are paid by one request in 16 (docs/operations.md, "Cost", has what that saves). Without
metrics the wrapper finds no MountStats and counts nothing. Requests answered with an error are
counted by errno by the same wrapper, metrics on or off. The collector turns those arrays into
metric families only when Prometheus scrapes, from the metrics server's thread. Everything else
is read at scrape time from what the daemon already counts (notifier, tree sync, inode table,
open handles).
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from famfs.metrics import build_info, filesystem_info
from fusefs.inodes import InodeTable
from fusefs.notify import Notifier
from fusefs.operations import OPERATIONS, SAMPLE_EVERY, FamfsOperations
from fusefs.sync import TreeSync

PREFIX = "famfs_fuse"
# Seconds. A request answered from the inode table takes ~10 µs; a 1 MiB read ~0.3 ms.
LATENCY_BOUNDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)
BOUNDS_NS = tuple(round(bound * 1e9) for bound in LATENCY_BOUNDS)


class MountStats:
    """Plain ints the trio thread bumps and the scrape reads (each read or write of one list item
    is atomic under the GIL): per operation, in OPERATIONS' order, the requests, a count per
    latency bucket of the sampled ones (not cumulative, the last one +Inf) and their sum in ns.
    A fusefs.operations.RequestStats."""

    def __init__(self) -> None:
        self.requests = [0] * len(OPERATIONS)
        self.sampled = [[0] * (len(BOUNDS_NS) + 1) for _ in OPERATIONS]
        self.sampled_ns = [0] * len(OPERATIONS)

    def timed(self, index: int, elapsed_ns: int) -> None:
        self.sampled[index][bisect.bisect_left(BOUNDS_NS, elapsed_ns)] += 1
        self.sampled_ns[index] += elapsed_ns


def instrument(ops: FamfsOperations, stats: MountStats) -> None:
    """Count every request of `ops` in `stats` and time a sample of them (fusefs.operations.guarded)."""
    ops.stats = stats


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
