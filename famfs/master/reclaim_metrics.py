"""The reclaim coordinator's Prometheus metrics (docs/operations.md, "Reclaim"): built from its
plain counters (reclaim.Figures) only when Prometheus scrapes, in the metrics server's thread.
Imported only when metrics are on (prometheus_client is slow to import)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from famfs import hosts, metrics
from famfs.master.reclaim import LATENCY_BUCKETS, Coordinator

PREFIX = "famfs_reclaim"
HOST_LABELS = ["slot", "host", "hostname"]


class ReclaimCollector:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        figures = self.coordinator.figures
        yield metrics.build_info(PREFIX)
        yield metrics.filesystem_info(PREFIX, str(self.coordinator.log.superblock.fs_uuid))
        yield GaugeMetricFamily(f"{PREFIX}_reclaimable_bytes", "Bytes held by deleted files not yet reclaimed",
                                value=figures.reclaimable_bytes)
        yield CounterMetricFamily(f"{PREFIX}_reclaimed_bytes", "Bytes of deleted files this coordinator reclaimed",
                                  value=figures.reclaimed_bytes)
        yield CounterMetricFamily(f"{PREFIX}_reclaimed_files", "Deleted files this coordinator reclaimed",
                                  value=figures.reclaimed_files)
        yield CounterMetricFamily(f"{PREFIX}_fences", "FENCE entries this coordinator logged", value=figures.fences)
        yield CounterMetricFamily(f"{PREFIX}_compactions", "Log compactions this coordinator ran", value=figures.compactions)
        yield CounterMetricFamily(f"{PREFIX}_compaction_seconds", "Time the coordinator's log compactions took",
                                  value=figures.compaction_seconds)
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), figures.latency_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
        yield HistogramMetricFamily(f"{PREFIX}_latency_seconds", "From the coordinator first seeing a DELETE in the "
                                    "log to its RECLAIM logged", buckets=buckets, sum_value=figures.latency_sum)
        applied = GaugeMetricFamily(f"{PREFIX}_host_applied_lag_entries", "Log entries a host has not applied yet",
                                    labels=HOST_LABELS)
        pinned = GaugeMetricFamily(f"{PREFIX}_host_pin_lag_entries", "Entries since the oldest deleted file a host "
                                   "pins (0: none pinned)", labels=HOST_LABELS)
        for record in figures.hosts:
            labels = [str(record.slot), str(record.system_uuid), record.hostname]
            applied.add_metric(labels, max(0, figures.next_index - record.applied))
            pinned.add_metric(labels, 0 if record.pin_floor == hosts.NO_PIN else max(0, figures.next_index - record.pin_floor))
        yield applied
        yield pinned
