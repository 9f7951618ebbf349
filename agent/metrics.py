"""famfs-agent's figures, and their Prometheus form (docs/operations.md has every metric).

`AgentStats` is what the follower bumps as it works: plain ints and one dict, so counting costs
the same whether or not metrics are served. `AgentCollector` reads them, and the follower's
cursor, when Prometheus scrapes (from the metrics server's thread; see famfs/metrics.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from famfs import format as fmt

if TYPE_CHECKING:  # the follower owns the stats; only the collector looks back at it
    from prometheus_client.core import Metric

    from agent.follower import Follower

PREFIX = "famfs_agent"
# The `type` label of famfs_agent_entries_total; an entry that cannot be decoded is "unreadable".
ENTRY_TYPES: dict[type, str] = {fmt.FileEntry: "file", fmt.MkdirEntry: "mkdir", fmt.DeleteEntry: "delete",
                                fmt.RmdirEntry: "rmdir", fmt.AddDaxdevEntry: "add_daxdev", fmt.HoldEntry: "hold",
                                fmt.SetattrEntry: "setattr", fmt.EntryError: "unreadable"}


@dataclass
class AgentStats:
    entries: Counter[tuple[type, str]] = field(default_factory=Counter)  # (entry class, outcome) -> count
    rebuilds: int = 0  # the tree emptied and the log replayed from entry 0 over an existing state
    device_errors: int = 0  # the device could not be opened or held no valid famfs
    shadow_errors: int = 0  # applying failed on the shadow file system
    polls: int = 0  # looks at the log header by the follow loop
    wakeups: int = 0  # waits ended early by the image-file write hint
    poll_interval_s: float = 0.0  # the follow loop's current idle wait


class AgentCollector:
    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from famfs.metrics import build_info, filesystem_info

        yield build_info(PREFIX)
        stats, state = self.follower.stats, self.follower.state
        if state is not None:
            lag = max(state.next_index_seen - state.applied_index - 1, 0)
            # Upper bound on the age of the oldest entry not yet in the tree (as `status` says).
            since = state.caught_up_at if state.caught_up_at is not None else state.updated_at
            gauges = {
                "applied_index": ("Index of the last log entry dealt with (the cursor)", state.applied_index),
                "log_next_index": ("The log's next_index when last polled", state.next_index_seen),
                "lag_entries": ("Logged entries not yet in the shadow tree", lag),
                "lag_seconds": ("Time since the tree last held every logged entry; 0 when caught up",
                                time.time() - since if lag else 0.0),
                "stalled": ("1 while progress is stopped at a corrupt log entry", int(state.stalled_at is not None)),
            }
            for name, (doc, value) in gauges.items():
                yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
            yield filesystem_info(PREFIX, state.fs_uuid, role=state.role)
        entries = CounterMetricFamily(f"{PREFIX}_entries", "Log entries dealt with, by entry type and outcome "
                                      "(applied, present, duplicate, deleted, rejected)", labels=["type", "outcome"])
        for (kind, outcome), count in dict(stats.entries).items():  # a copy: the follower adds keys
            entries.add_metric([ENTRY_TYPES.get(kind, kind.__name__), outcome], count)
        yield entries
        counters = {
            "rebuilds": ("Shadow-tree rebuilds (emptied, the log replayed from entry 0)", stats.rebuilds),
            "device_errors": ("Failures to open the device or find a valid famfs on it", stats.device_errors),
            "shadow_errors": ("Failures to write the shadow tree", stats.shadow_errors),
            "polls": ("Looks at the log header by the follow loop", stats.polls),
            "wakeups": ("Idle waits ended early by the image-file write hint", stats.wakeups),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        yield GaugeMetricFamily(f"{PREFIX}_poll_interval_seconds", "The follow loop's current idle wait",
                                value=stats.poll_interval_s)
