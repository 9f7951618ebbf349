"""fio randread 4 KiB through this checkout's mount, another checkout's and the no-op one, side by
side: `python -m bench.ab_fio OTHER_CODE [ROUNDS [CACHES [RUNTIME_S]]]`.

OTHER_CODE: a directory holding another checkout's code (`git archive main | tar -x -C DIR`: its
mount runs with PYTHONPATH=DIR). bench/bench_fio.py's image, following client and jobs (iodepth 1
and 16); each round mounts the three in turn (the order turned each round, a fresh mount each
time, fio and the daemon on one CPU) and runs both jobs on each. Per run: IOPS, the daemon's CPU
per read (schedstat of all its threads) and its minor faults per read (first touches of the
device mapping: a fresh mount's first job pays them). Printed: medians over the rounds. CACHES:
comma-separated (default direct,auto,always). Needs a host identity ($FAMFS_SYSTEM_UUID_FILE).
Not part of `make bench`.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.ab_metrics import cpu_ns
from bench.bench_fio import JOBS, NAME, Job, following_client, make_image, noop_mount
from bench.common import CPU, pin, scratch
from demo.harness import Mount

SIZE = 512 << 20
SIDES = ("noop", "other", "here")
Samples = dict[tuple[str, str, str], list[tuple[float, float, float]]]  # (job, cache, side) -> (IOPS, µs, faults)


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def fio(job: Job, path: Path, runtime: float) -> tuple[float, int]:
    """IOPS and reads done (after the ramp)."""
    args = ["fio", "--name=ab", f"--filename={path}", *job.args, f"--size={SIZE}", f"--cpus_allowed={CPU}",
            f"--runtime={runtime}", "--time_based", "--ramp_time=0.3", "--output-format=json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=runtime + 120, check=True)
    read = json.loads(done.stdout)["jobs"][0]["read"]
    return read["iops"], read["total_ios"]


@contextlib.contextmanager
def side_mount(side: str, work: Path, shadow: Path, image: Path, client: dict[str, str], other: str,
               cache: str, name: str) -> Iterator[tuple[Path, int]]:
    if side == "noop":
        with noop_mount(work / name, SIZE, cache) as found:
            yield found
        return
    environ = {**client, "PYTHONPATH": other} if side == "other" else client
    with Mount(shadow, image, work / name, f"cache={cache}", env=environ) as mount:
        assert mount.process is not None
        yield mount.mountpoint / NAME, mount.process.pid


def measure(other: str, rounds: int, caches: list[str], runtime: float) -> Samples:
    samples: Samples = {}
    with scratch("ab_fio_") as work:
        image = make_image(work, SIZE)
        with following_client(work, image) as (shadow, client):
            for round_ in range(rounds):
                for cache in caches:
                    for side in SIDES[round_ % 3:] + SIDES[:round_ % 3]:
                        with side_mount(side, work, shadow, image, client, other, cache,
                                        f"{side}-{round_}-{cache}") as (path, pid):
                            pin(pid)
                            for job in JOBS[:2]:
                                cpu, faults = cpu_ns(pid), minor_faults(pid)
                                iops, reads = fio(job, path, runtime)
                                samples.setdefault((job.label, cache, side), []).append(
                                    (iops, (cpu_ns(pid) - cpu) / reads / 1e3, (minor_faults(pid) - faults) / reads))
                print(f"round {round_}: load average {os.getloadavg()[0]:.2f}", flush=True)
    return samples


def main() -> None:
    other = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    caches = sys.argv[3].split(",") if len(sys.argv) > 3 else ["direct", "auto", "always"]
    runtime = float(sys.argv[4]) if len(sys.argv) > 4 else 1.5
    samples = measure(other, rounds, caches, runtime)
    for job in JOBS[:2]:
        for cache in caches:
            iops = {side: statistics.median(s[0] for s in samples[job.label, cache, side]) for side in SIDES}
            cpu = {side: statistics.median(s[1] for s in samples[job.label, cache, side]) for side in SIDES}
            faults = statistics.median(s[2] for s in samples[job.label, cache, "here"])
            print(f"{job.label}, cache={cache}: IOPS no-op {iops['noop']:,.0f}, other {iops['other']:,.0f} "
                  f"({iops['other'] / iops['noop']:.2f}x), here {iops['here']:,.0f} ({iops['here'] / iops['noop']:.2f}x); "
                  f"daemon CPU per read {cpu['noop']:.1f} / {cpu['other']:.1f} / {cpu['here']:.1f} µs; "
                  f"faults per read here {faults:.2f}")


if __name__ == "__main__":
    main()
