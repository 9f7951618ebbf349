"""Many hosts following one device: 16 following agents (each its own identity and shadow tree,
as 16 client hosts would run them; agents only, no mounts: 16 mounts would not fit a 2-core
machine beside them), an entry appended on the master → its shadow file on all 16, and each
agent's CPU when nothing is appended.

Baseline, in the same samples: the same append → the first of the 16 shadow files (what one host
sees; the difference is the wait for the slowest of 16 agents sharing the machine's cores).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from bench.bench_agent import cpu_seconds, file_at, percentile
from bench.common import Result
from demo.cluster import Cluster, wait_until
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog

AGENTS = 16
SAMPLES = {True: 5, False: 200}
GAP_S = 0.02  # between probes: the agents idle again, as between a master's changes
IDLE_S = {True: 0.3, False: 10.0}
BASELINE = "the same append → the first of the 16 shadow files"


def append(famfs_log: FamfsLog, entry: fmt.Entry) -> float:
    """Append `entry` under the device lock; the time it was in the log (perf_counter)."""
    with famfs_log.device.exclusive():
        famfs_log.append([entry])
        return time.perf_counter()


def until_all(paths: list[Path], since: float, timeout: float = 30.0) -> list[float]:
    """Milliseconds from `since` until each path exists, polling all of them together."""
    seen: dict[Path, float] = {}
    deadline = since + timeout
    while len(seen) < len(paths):
        for path in paths:
            if path not in seen and os.path.exists(path):
                seen[path] = (time.perf_counter() - since) * 1000
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(paths) - len(seen)} of {len(paths)} shadow files still missing after {timeout} s")
        time.sleep(0.00002)
    return list(seen.values())


def run(quick: bool) -> list[Result]:
    samples = SAMPLES[quick]
    cluster = Cluster(size="2g", clients=AGENTS, serve_master=False)
    try:
        cluster.make_filesystem()
        clients = cluster.clients
        for host in clients:
            host.start_agent()  # agents only: no mounts
        with Device(str(cluster.image), writable=True) as device:
            famfs_log = FamfsLog(device)
            start_data = fmt.data_start(famfs_log.superblock.log_len)
            append(famfs_log, fmt.MkdirEntry("probe", 0o755, 0, 0))
            for host in clients:
                wait_until(lambda host=host: (host.shadow_root / "probe").is_dir(), 30, f"probe/ on {host.name}")
            last, first = [], []
            for n in range(samples):
                paths = [host.shadow_root / "probe" / f"f{n}" for host in clients]
                times = until_all(paths, append(famfs_log, file_at(f"probe/f{n}", n, start_data)))
                last.append(max(times))
                first.append(min(times))
                time.sleep(GAP_S)
        time.sleep(0.1 if quick else 1.0)
        pids = [host.agent.pid for host in clients if host.agent is not None]
        before, began = [cpu_seconds(pid) for pid in pids], time.monotonic()
        time.sleep(IDLE_S[quick])
        elapsed = time.monotonic() - began
        idle = [100 * (cpu_seconds(pid) - used) / elapsed for pid, used in zip(pids, before)]
    finally:
        cluster.stop()
    note = f"{AGENTS} famfs-agent --follow on one {os.cpu_count()}-core machine, inotify hint; {samples} appends, idle between"
    return [
        Result(f"append → shadow file on all {AGENTS} following agents, p50", percentile(last, 0.5), "ms",
               percentile(first, 0.5), BASELINE, note),
        Result(f"append → shadow file on all {AGENTS} following agents, p99", percentile(last, 0.99), "ms",
               percentile(first, 0.99), BASELINE, f"{note}; target p99 <= 20 ms"),
        Result(f"idle CPU per following agent, {AGENTS} agents", statistics.mean(idle), "% of a core",
               note=f"mean of {AGENTS}, max {max(idle):.2f} %, over {IDLE_S[quick]:.1f} s; target <= 1% each"),
    ]


if __name__ == "__main__":
    for result in run(quick=False):
        print(result)
