"""A short churn run (demo/forever.py, `make churn`): master + 2 clients on a 1 GiB image, the
writers turning the device over while the clients' readers check every byte.

Baseline, in the same run: the raw rate of the same fill loop into a tmpfs image through a
plain writable mmap (no famfs, no lock, no log, no reclaim): what the writers would reach if
famfs cost nothing. The reclaim latency rows have no baseline (nothing else reuses space).
"""

from __future__ import annotations

import mmap
import os
import time

from bench.common import Result, scratch
from demo import churn_data
from demo.forever import Plan, churn

MiB = 1 << 20
SECONDS = {True: 12.0, False: 60.0}


def raw_fill_rate(size: int = 256 * MiB, seconds: float = 2.0) -> float:
    """MB/s of churn_data.fill into a plain shared mapping of a tmpfs file, files of 32 MiB."""
    with scratch("famfs-bench-churn-") as work:
        path = work / "raw.img"
        with open(path, "wb+") as image:
            image.truncate(size)
            view = mmap.mmap(image.fileno(), size)
            written, serial, started = 0, 0, time.monotonic()
            while time.monotonic() - started < seconds:
                offset = (serial * 32 * MiB) % size
                churn_data.fill(memoryview(view)[offset:offset + 32 * MiB], f"raw/f{serial % 16}", serial)
                written, serial = written + 32 * MiB, serial + 1
            took = time.monotonic() - started
            view.close()
        os.sync()
    return written / took / 1e6


def run(quick: bool) -> list[Result]:
    baseline = raw_fill_rate()
    with scratch("famfs-bench-churn-") as parent:
        report = churn(Plan(seconds=SECONDS[quick], fsck_every_s=SECONDS[quick] / 4), parent=parent)
    seconds = float(report["seconds"])  # type: ignore[arg-type]
    rate = int(report["bytes_written"]) / seconds / 1e6  # type: ignore[call-overload]
    reclaim = report["reclaim"]  # type: ignore[assignment]
    checks = "all checks ok" if report["ok"] else f"CHECKS FAILED: {report['checks']}"
    note = (f"{seconds:.0f} s run, {report['capacity_turnovers']}x capacity, {report['slot_turnovers']}x log slots, "
            f"{report['wrong_bytes']} wrong bytes, {len(report['compactions'])} compactions; {checks}")  # type: ignore[arg-type]
    return [
        Result("churn: write rate, famfs.Master + master's mount, reclaim on", rate, "MB/s", baseline,
               "the same fill into a plain tmpfs mmap", note),
        Result("churn: reclaim latency (DELETE -> RECLAIM logged) p50", reclaim["latency_p50_ms"] or 0.0, "ms",  # type: ignore[index]
               note=f"{reclaim['samples']} files; heartbeat 0.1 s, poll 0.05 s"),  # type: ignore[index]
        Result("churn: reclaim latency (DELETE -> RECLAIM logged) p99", reclaim["latency_p99_ms"] or 0.0, "ms",  # type: ignore[index]
               note=f"{reclaim['samples']} files"),  # type: ignore[index]
        Result("churn: log entries appended", int(report["entries_appended"]) / seconds, "entries/s",  # type: ignore[call-overload]
               note=f"{report['log_slots']} slots in the log"),
    ]
