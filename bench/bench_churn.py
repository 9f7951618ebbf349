"""`make churn` as a benchmark row (demo/forever.py): master + 2 clients on a 1 GiB image, the
writers turning the device over while the clients' readers check every byte, the reclaim
coordinator giving deleted files' space back and compacting the log.

Baselines, in the same run:
- write rate: the same fill loop into a tmpfs image through a plain writable mmap (no famfs, no
  lock, no log, no reclaim): what the writers would reach if famfs cost nothing;
- log entries: the same small-file bursts through `famfs.Master` alone (Master.batch(): the last
  burst's 48 files removed, 48 new ones made) on a fresh 1 GiB image of its own, with no agent,
  mount, reader or coordinator, so reclaim is off: it runs until the device is full. What the
  writer alone appends, against what the whole cluster sustains with every entry replayed by
  three agents and reclaimed.
The reclaim latency rows have no baseline (nothing else reuses space).
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
import uuid

from bench.common import Result, scratch
from demo import churn_data
from demo.cluster import tool
from demo.forever import Plan, churn
from famfs import Master, MasterError, logsetup

MiB = 1 << 20
QUICK_SECONDS = 12.0  # the full run is make churn's own: Plan() (180 s, or the targets)


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


def master_alone_rate(burst: int = Plan.small_burst, size: str = Plan.size) -> float:
    """Log entries/s of the churn's small-file bursts through famfs.Master alone, reclaim off,
    until the device is full (or the log: nothing compacts it either)."""
    with scratch("famfs-bench-churn-") as work:
        image, uuid_file = work / "famfs.img", work / "system_uuid"
        uuid_file.write_text(f"{uuid.uuid4()}\n")
        subprocess.run([tool("famfsctl"), "mkfs", "--size", size, "--system-uuid-file", str(uuid_file), str(image)],
                       check=True, capture_output=True)
        master = Master(image, system_uuid_file=uuid_file)
        master.mkdir("small")
        smalls: list[str] = []
        entries, serial, started = 1, 0, time.monotonic()
        try:
            while True:
                removed = len(smalls)
                made = ((f"small/s{n}", n) for n in range(serial + 1, serial + burst + 1))
                smalls = churn_data.small_burst(master, smalls, made)
                serial += burst
                entries += removed + burst
        except MasterError:  # full: the space of deleted files never comes back without reclaim
            pass
        return entries / (time.monotonic() - started)


def run(quick: bool) -> list[Result]:
    # As make churn: its own famfs.Master's events (a warning per small file's path made again)
    # would cost the writer time and bury the table; the report says what happened.
    logsetup.configure(level="error")
    fill = raw_fill_rate()
    alone = master_alone_rate()
    plan = Plan(seconds=QUICK_SECONDS, fsck_every_s=QUICK_SECONDS / 12) if quick else Plan()
    with scratch("famfs-bench-churn-") as parent:
        report = churn(plan, parent=parent)
    seconds = float(report["seconds"])  # type: ignore[arg-type]
    rate = int(report["bytes_written"]) / seconds / 1e6  # type: ignore[call-overload]
    reclaim = report["reclaim"]  # type: ignore[assignment]
    checks = "all checks ok" if report["ok"] else f"CHECKS FAILED: {report['checks']}"
    compactions = report["compactions"]  # type: ignore[assignment]
    note = (f"{seconds:.0f} s run: {report['capacity_turnovers']}x capacity (target {plan.capacity_x:g}x), "
            f"{report['slot_turnovers']}x log slots (target {plan.slots_x:g}x), {report['wrong_bytes']} wrong bytes, "
            f"{len(compactions)} compactions, fsck clean {report['fsck']['clean']}; {checks}")  # type: ignore[index,arg-type]
    cpu = ", ".join(f"{name} {value:g}" for name, value in report["cpu_seconds"].items())  # type: ignore[attr-defined]
    return [
        Result("churn: write rate, famfs.Master + master's mount, reclaim on", rate, "MB/s", fill,
               "the same fill into a plain tmpfs mmap", note),
        Result("churn: log entries appended, whole cluster", int(report["entries_appended"]) / seconds, "entries/s",  # type: ignore[call-overload]
               alone, "the same small-file bursts, famfs.Master alone, reclaim off, until full",
               f"{report['log_slots']} slots in the log; CPU seconds: {cpu}"),
        Result("churn: reclaim latency (DELETE -> RECLAIM logged) p50", reclaim["latency_p50_ms"] or 0.0, "ms",  # type: ignore[index]
               note=f"{reclaim['samples']} files; heartbeat 0.1 s, poll 0.05 s; lower is better"),  # type: ignore[index]
        Result("churn: reclaim latency (DELETE -> RECLAIM logged) p99", reclaim["latency_p99_ms"] or 0.0, "ms",  # type: ignore[index]
               note=f"{reclaim['samples']} files; a reader holding a deleted file (0-2 s) holds every later one "
                    "on its host (one pin floor per host)"),  # type: ignore[index]
    ]


if __name__ == "__main__":
    from bench.__main__ import ModuleRun, render_markdown, rows  # noqa: PLC0415 (the table's format, once)

    print(render_markdown(rows([ModuleRun(__name__, run(quick="--quick" in sys.argv))])))
