"""Metrics on against off, one code against another: `python -m bench.ab_metrics ROUNDS BURSTS SIDES`.

SIDES: comma-separated `CODE MODE`. CODE: `here` (this checkout) or a directory holding another
checkout's code (`git archive main | tar -x -C DIR`: its mounts run with PYTHONPATH=DIR). MODE:
`off`, `on` (metrics on, scraped every second by another process, as bench/bench_metrics.py
does) or `quiet` (on, never scraped). E.g. `"here off,here on,/tmp/main off,/tmp/main on"`.
Every round mounts every side at once (fresh mounts; the order and the trees they serve turn
each round, so no side keeps one process layout or one device's memory), then alternates BURSTS
bursts on each: `stat` of 2,000 files with `-o timeout=0` (five requests each), and 4 KiB reads
of a 16 MiB file with `cache=direct`. Per burst: the rate and the daemon's CPU per stat or read
(schedstat of all its threads). Printed: medians, and each side against the first, paired by
burst. Fresh mounts matter: two mounts of the same code can differ by a few µs a stat for their
whole life, so many rounds of few bursts beat few rounds of many. Needs a host identity
($FAMFS_SYSTEM_UUID_FILE). Not part of `make bench`.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from pathlib import Path

from bench.bench_fuse import stat_rate
from bench.bench_metrics import metrics_config, request_tree, scraping, small_read_rate, turned
from bench.common import pin, pinned, scratch
from demo.harness import Mount
from famfs import env

FILES = 2000
READ_SIZE = 16 << 20
Samples = dict[tuple[str, str], list[tuple[float, float]]]  # (kind, side) -> (rate, daemon µs per request)


def cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def mount_side(stack: contextlib.ExitStack, work: Path, side: str, tree: tuple[Path, Path], name: str) -> Mount:
    code, mode = side.split()
    environ = {**os.environ}
    if code != "here":
        environ["PYTHONPATH"] = code
    with metrics_config(work, mode != "off") as port:
        environ[env.AGENT_CONFIG] = os.environ[env.AGENT_CONFIG]
        mount = stack.enter_context(Mount(*tree, work / name, "timeout=0", "cache=direct", env=environ))
    if mode == "on":
        stack.enter_context(scraping(port))
    return mount


def burst(samples: Samples, side: str, mount: Mount, names: list[Path]) -> None:
    assert mount.process is not None
    pid = mount.process.pid
    for kind, requests, run in (("stat", FILES, lambda: stat_rate([mount.mountpoint / n for n in names], 1)),
                                ("read", READ_SIZE // 4096, lambda: small_read_rate(mount.mountpoint / "big", READ_SIZE))):
        before = cpu_ns(pid)
        rate = run()
        samples.setdefault((kind, side), []).append((rate, (cpu_ns(pid) - before) / requests / 1e3))


def measure(sides: tuple[str, ...], rounds: int, bursts: int) -> Samples:
    names = [Path("d") / f"f{n}" for n in range(FILES)]
    samples: Samples = {}
    with scratch("ab_metrics_") as work:
        trees = [request_tree(work / f"tree-{n}", FILES, READ_SIZE) for n in range(len(sides))]
        for round_ in range(rounds):
            with contextlib.ExitStack() as stack:
                mounts = {side: mount_side(stack, work, side, trees[(sides.index(side) + round_) % len(sides)],
                                           f"mnt-{round_}-{sides.index(side)}") for side in turned(sides, round_)}
                for mount in mounts.values():
                    assert mount.process is not None
                    pin(mount.process.pid)
                    stat_rate([mount.mountpoint / n for n in names], 1)  # every YAML parsed, every page touched
                    small_read_rate(mount.mountpoint / "big", READ_SIZE)
                with pinned():
                    for number in range(bursts):
                        for side in turned(sides, number):
                            burst(samples, side, mounts[side], names)
            print(f"round {round_}: load average {os.getloadavg()[0]:.2f}", flush=True)
    return samples


def report(samples: Samples, sides: tuple[str, ...]) -> None:
    for kind in ("stat", "read"):
        for side in sides:
            rates, cpu = zip(*samples[kind, side])
            print(f"{kind} {side:24} {statistics.median(rates):9,.0f}/s, daemon CPU {statistics.median(cpu):6.2f} µs "
                  f"per {kind} (medians)")
        first = samples[kind, sides[0]]
        for side in sides[1:]:
            paired = list(zip(samples[kind, side], first))
            print(f"  {side} against {sides[0]}: rate x{statistics.median(a[0] / b[0] for a, b in paired):.3f}, "
                  f"CPU {statistics.median(a[1] - b[1] for a, b in paired):+.2f} µs per {kind} (medians of pairs)")


def main() -> None:
    rounds, bursts, sides = int(sys.argv[1]), int(sys.argv[2]), tuple(sys.argv[3].split(","))
    report(measure(sides, rounds, bursts), sides)


if __name__ == "__main__":
    main()
