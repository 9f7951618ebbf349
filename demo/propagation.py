"""Append-to-visible latency: from the moment an entry lands in the log to the moment a name
appears (or disappears) on a host.

The clock starts when the log header's next_index advances on the device (read directly, so
the time famfsctl takes to start up is not counted), and stops, per watched path, when `stat`
on that path first agrees. Before the append every watched name is looked up once, so a client
that caches negative lookups has cached this one: the measurement includes the invalidation.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from demo.cluster import Cluster, HarnessError

POLL_S = 0.0001  # short enough for sub-millisecond resolution, long enough to leave the CPU to the daemons
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Propagation:
    append_s: float  # famfsctl start → header advanced (informational)
    visible_s: dict[str, float]  # watched label → seconds from header advance to stat agreeing


def exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


def measure(cluster: Cluster, ctl_args: Sequence[str], watched: Mapping[str, Path], *, appear: bool = True,
            timeout: float = TIMEOUT_S) -> Propagation:
    """Run `famfsctl ctl_args` as the master and time each watched path to reach `appear`."""
    for label, path in watched.items():
        if exists(path) == appear:
            raise HarnessError(f"{label}: {path} is already {'there' if appear else 'gone'} before the append")
    before = cluster.next_index()
    started = time.monotonic()
    writer = subprocess.Popen(cluster.ctl_argv(*ctl_args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cluster.master.env)
    try:
        landed = _wait(lambda: cluster.next_index() > before or writer.poll() is not None, started + timeout)
        if cluster.next_index() <= before:
            _, errors = writer.communicate()
            raise HarnessError(f"famfsctl {' '.join(ctl_args)} appended nothing (exit {writer.returncode}): {errors}")
        pending = dict(watched)
        seen: dict[str, float] = {}
        deadline = landed + timeout
        while pending:
            now = time.monotonic()
            for label, path in list(pending.items()):
                if exists(path) == appear:
                    seen[label] = now - landed
                    del pending[label]
            if pending:
                if now > deadline:
                    raise HarnessError(f"not {'visible' if appear else 'gone'} after {timeout:.0f} s: {sorted(pending)}")
                time.sleep(POLL_S)
    finally:
        _, errors = writer.communicate()
    if writer.returncode != 0:
        raise HarnessError(f"famfsctl {' '.join(ctl_args)} exited {writer.returncode}: {errors}")
    return Propagation(append_s=landed - started, visible_s=seen)


def _wait(condition: Callable[[], bool], deadline: float) -> float:
    while not condition():
        if time.monotonic() > deadline:
            raise HarnessError("the log header never advanced")
        time.sleep(POLL_S)
    return time.monotonic()


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure reported was measured)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
