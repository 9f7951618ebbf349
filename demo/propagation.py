"""Append-to-visible latency: from the moment an entry lands in the log to the moment a name
appears (or disappears) on a host.

The clock starts at the append: the earlier of (a) the time famfsctl logged the appended entry
(`famfsctl CMD -v` logs each operation right after its entry is in the log, with a microsecond
timestamp) and (b) the time we saw the log header's next_index advance on the device. (b) alone
would start the clock late whenever this process is scheduled late, which on a busy 2-core
machine can hide the whole propagation; to keep our own polling punctual, it runs at a real-time
priority (SCHED_FIFO, not inherited by children) when allowed, sleeping between polls so it
never starves the daemons it measures. The clock stops, per watched path, when `stat` on that path
first agrees. Before the append every watched name is looked up once, so a client that caches
negative lookups has cached this one: the measurement includes the invalidation.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from demo.cluster import Cluster, HarnessError

POLL_S = 0.0001  # short enough for sub-millisecond resolution, long enough to leave the CPU to the daemons
TIMEOUT_S = 10.0
REALTIME_PRIORITY = 1  # the lowest real-time priority: enough to run as soon as a poll's sleep ends
# One structlog key=value line (famfs/logsetup.py) for an operation that appended an entry.
LOGGED_APPEND = re.compile(r"timestamp='([^']+)'.*\b(?:index|first_index)=\d")


@dataclass(frozen=True)
class Propagation:
    append_s: float  # famfsctl started → entry appended (informational: mostly interpreter start-up)
    visible_s: dict[str, float]  # watched label → seconds from the append to stat agreeing


def exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


def logged_append_time(famfsctl_stderr: str) -> float | None:
    """Wall-clock time of the first appended entry in famfsctl -v's log, if it logged one."""
    for line in famfsctl_stderr.splitlines():
        if match := LOGGED_APPEND.search(line):
            return datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
    return None


def measure(cluster: Cluster, ctl_args: Sequence[str], watched: Mapping[str, Path], *, appear: bool = True,
            timeout: float = TIMEOUT_S) -> Propagation:
    """Run `famfsctl ctl_args` as the master and time each watched path to reach `appear`."""
    for label, path in watched.items():
        if exists(path) == appear:
            raise HarnessError(f"{label}: {path} is already {'there' if appear else 'gone'} before the append")
    command, *args = ctl_args
    before = cluster.next_index()
    started = time.time()
    writer = subprocess.Popen(cluster.ctl_argv(command, "-v", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cluster.master.env)
    seen: dict[str, float] = {}
    try:
        with _punctual():
            header_advanced = _wait(lambda: cluster.next_index() > before or writer.poll() is not None,
                                    started + timeout)
            if cluster.next_index() <= before:
                raise HarnessError(f"famfsctl {' '.join(ctl_args)} appended nothing")
            pending = dict(watched)
            deadline = header_advanced + timeout
            while pending:
                now = time.time()
                for label, path in list(pending.items()):
                    if exists(path) == appear:
                        seen[label] = now
                        del pending[label]
                if pending:
                    if now > deadline:
                        raise HarnessError(f"not {'visible' if appear else 'gone'} after {timeout:.0f} s: {sorted(pending)}")
                    time.sleep(POLL_S)
    finally:
        _, errors = writer.communicate()
    if writer.returncode != 0:
        raise HarnessError(f"famfsctl {' '.join(ctl_args)} exited {writer.returncode}: {errors}")
    logged = logged_append_time(errors)
    appended = header_advanced if logged is None else min(logged, header_advanced)
    return Propagation(append_s=appended - started,
                       visible_s={label: max(0.0, seen[label] - appended) for label in watched})


@contextmanager
def _punctual() -> Iterator[None]:
    """SCHED_FIFO for this thread while it polls, if allowed (children never inherit it)."""
    previous = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(REALTIME_PRIORITY))
    except OSError:
        yield  # not allowed here: measure at normal priority
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, previous[0], previous[1])


def _wait(condition: Callable[[], bool], deadline: float) -> float:
    while not condition():
        if time.time() > deadline:
            raise HarnessError("the log header never advanced")
        time.sleep(POLL_S)
    return time.time()


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure reported was measured)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
