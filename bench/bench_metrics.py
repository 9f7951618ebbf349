"""What Prometheus metrics cost the hot paths: the same work with metrics on and off, in one run.

- replay: famfs-agent --follow replaying the full 8 MiB reference log (15,420 entries), from the
  process start until the cursor reaches the last entry.
- FUSE stat: `-o timeout=0`, so every stat is a FUSE lookup or getattr (the counted handlers).
- FUSE read: 4 KiB reads with cache=direct, so every read is a FUSE request.
- one scrape: the mount's CPU time per /metrics request.

Metrics on means scraped too, by another process (as Prometheus is: a scraping thread in the
measuring process would take its GIL and slow the reads it times), every SCRAPE_PERIOD_S: 15
times as often as Prometheus's usual 15 s. What a scrape costs is its own row, to scale to any
period. The FUSE rows mount three file systems at once (metrics off, on, and off again: the
noise floor) and alternate short bursts on each, ROUNDS x PAIRS times, with the daemons and this
process on one CPU (bench.common.pin): the machine is shared, and bursts side by side see the
same load, where best-of-3 whole runs did not. Figures are medians over the bursts; the
daemons' CPU time per request (from /proc) is in the note.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.bench_agent import follower_process
from bench.bench_fuse import device_size, file_entry, make_device, stat_rate
from bench.common import CPU, Result, host_identity, pin, pinned, scratch
from demo.harness import Mount, empty_shadow, materialize_reference, put_dir, put_file
from famfs import env
from famfs.device import Device
from famfs.famfslog import FamfsLog

BEST_OF = 5  # replay runs, on and off each
ROUNDS = 4
PAIRS = 5  # per round
SCRAPE_PERIOD_S = 1.0
SCRAPES = 200
STAT_FILES = 2000
READ_SIZE = 16 << 20  # one burst: 4,096 reads
SMALL_READ = 4096
# The scraper: a loop of GETs in its own interpreter, errors ignored (the daemon may be going).
SCRAPER = """
import sys, time, urllib.request
url, period = sys.argv[1], float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        pass
    time.sleep(period)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


@contextlib.contextmanager
def metrics_config(work: Path, on: bool) -> Iterator[int]:
    """famfs-agent.toml with the mount's metrics on (a free port) or off, exported; the port."""
    port = free_port()
    path = work / f"metrics-{port}.toml"
    path.write_text(f'[mount]\nmetrics_address = "{f"127.0.0.1:{port}" if on else ""}"\n')
    old = os.environ.get(env.AGENT_CONFIG)
    os.environ[env.AGENT_CONFIG] = str(path)
    try:
        yield port
    finally:
        if old is None:
            del os.environ[env.AGENT_CONFIG]
        else:
            os.environ[env.AGENT_CONFIG] = old


@contextlib.contextmanager
def scraping(port: int) -> Iterator[None]:
    """GET /metrics every SCRAPE_PERIOD_S from another process while the block runs."""
    scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, metrics_url(port), str(SCRAPE_PERIOD_S)])
    try:
        yield
    finally:
        scraper.kill()
        scraper.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# --- replay --------------------------------------------------------------------------------


def replay_seconds(work: Path, image: Path, entries: int, run: str, on: bool) -> float:
    shadow = work / f"shadow-{run}"
    port = free_port()
    with contextlib.ExitStack() as stack:
        if on:
            stack.enter_context(scraping(port))  # its interpreter started before the clock, not during
            time.sleep(0.2)
        start = time.perf_counter()
        stack.enter_context(follower_process(image, shadow, True, f"127.0.0.1:{port}" if on else ""))
        state = shadow / ".agent" / "state.json"
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(state.read_text())["applied_index"] >= entries - 1:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("famfs-agent did not finish the replay")
            time.sleep(0.002)
        return time.perf_counter() - start


def bench_replay(quick: bool) -> Result:
    runs = 1 if quick else BEST_OF
    with scratch("bench_metrics_") as work:
        image = materialize_reference("c_full", work / "c_full.img")
        with Device(image) as device:
            entries = FamfsLog(device).header().next_index
        best = {True: float("inf"), False: float("inf")}
        for run in range(runs):
            for on in (False, True):
                best[on] = min(best[on], replay_seconds(work, image, entries, f"{run}-{on}", on))
    return Result(f"follow replay of the full 8 MiB log ({entries:,} entries), metrics on",
                  entries / best[True], "entries/s", entries / best[False], "same, metrics off",
                  f"process start included; on - off = {(best[True] - best[False]) * 1e3:+.0f} ms, paid once "
                  f"(the agent imports prometheus_client and binds the server before it works); best of {runs}, "
                  f"on and off alternating; scraped every {SCRAPE_PERIOD_S:g} s")


# --- FUSE requests -------------------------------------------------------------------------


def small_read_rate(path: Path, size: int) -> float:
    """Reads/s of SMALL_READ bytes, each a FUSE request with cache=direct."""
    buffer = bytearray(SMALL_READ)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for offset in range(0, size, SMALL_READ):
            os.preadv(fd, [buffer], offset)
    finally:
        os.close(fd)
    return size // SMALL_READ / (time.perf_counter() - start)


# The mounts of a round: metrics off, on, and off again (beside the first: the noise floor).
SIDES = ("off", "on", "off again")


class Sides:
    """Per kind of burst ("stat", "read") and side: the rate of every burst, the daemon's CPU
    seconds over them and the requests they made."""

    def __init__(self) -> None:
        self.rates: dict[tuple[str, str], list[float]] = {}
        self.cpu_s: dict[tuple[str, str], float] = {}
        self.requests: dict[tuple[str, str], int] = {}

    def alternate(self, kind: str, pairs: int, requests: int, mounts: dict[str, Mount],
                  burst: Callable[[Path], float]) -> None:
        """`pairs` rounds of a burst on each mount, one after the other, the order turned each time."""
        cpu = {side: cpu_seconds(pid(mount)) for side, mount in mounts.items()}
        for pair in range(pairs):
            for side in turned(SIDES, pair):
                self.rates.setdefault((kind, side), []).append(burst(mounts[side].mountpoint))
        for side, mount in mounts.items():
            self.cpu_s[kind, side] = self.cpu_s.get((kind, side), 0.0) + cpu_seconds(pid(mount)) - cpu[side]
            self.requests[kind, side] = self.requests.get((kind, side), 0) + pairs * requests

    def rate(self, kind: str, side: str) -> float:
        return statistics.median(self.rates[kind, side])

    def cpu_us(self, kind: str, side: str) -> float:
        return self.cpu_s[kind, side] / self.requests[kind, side] * 1e6


def turned(sides: tuple[str, ...], by: int) -> tuple[str, ...]:
    by %= len(sides)
    return sides[by:] + sides[:by]


def pid(mount: Mount) -> int:
    assert mount.process is not None
    return mount.process.pid


def scrape_cpu_ms(mount: Mount, port: int, scrapes: int) -> float:
    assert mount.process is not None
    start = cpu_seconds(mount.process.pid)
    for _ in range(scrapes):
        urllib.request.urlopen(metrics_url(port), timeout=5).read()
    return (cpu_seconds(mount.process.pid) - start) / scrapes * 1e3


def request_tree(where: Path, count: int, read_size: int) -> tuple[Path, Path]:
    """A device with `count` small files in d/ and one of `read_size` bytes; its shadow tree."""
    where.mkdir()
    device = make_device(where, device_size(count) + read_size)
    shadow = empty_shadow(where / "shadow", device)
    put_dir(shadow, "d")
    for n in range(count):
        put_file(shadow, file_entry(f"d/f{n}", 4096, n))
    put_file(shadow, file_entry("big", read_size, count))
    return shadow, device


def bench_fuse(quick: bool) -> list[Result]:
    rounds, pairs = (2, 2) if quick else (ROUNDS, PAIRS)
    count = 200 if quick else STAT_FILES
    read_size = READ_SIZE // 8 if quick else READ_SIZE
    names = [Path("d") / f"f{n}" for n in range(count)]
    sides = Sides()
    scrapes = 20 if quick else SCRAPES
    with scratch("bench_metrics_") as work:
        # A device and a shadow each: one shadow is served by one mount.
        trees = {side: request_tree(work / f"tree-{n}", count, read_size) for n, side in enumerate(SIDES)}
        for round_ in range(rounds):
            with contextlib.ExitStack() as stack:
                mounts: dict[str, Mount] = {}
                # The order of mounting turns each round: where a daemon runs can favour one side.
                for side in turned(SIDES, round_):
                    shadow, device = trees[side]
                    with metrics_config(work, side == "on") as port:
                        mounts[side] = stack.enter_context(Mount(shadow, device, work / f"mnt-{round_}-{side}",
                                                                 "timeout=0", "cache=direct"))
                    if side == "on":
                        stack.enter_context(scraping(port))
                        scraped = port
                def stat_burst(root: Path) -> float:
                    return stat_rate([root / name for name in names], 1)

                def read_burst(root: Path) -> float:
                    return small_read_rate(root / "big", read_size)

                for mount in mounts.values():
                    pin(pid(mount))
                    stat_burst(mount.mountpoint)  # every YAML parsed, every page of the device touched
                    read_burst(mount.mountpoint)
                with pinned():
                    sides.alternate("stat", pairs, count, mounts, stat_burst)
                    sides.alternate("read", pairs, read_size // SMALL_READ, mounts, read_burst)
                if round_ == rounds - 1:
                    scrape_ms = scrape_cpu_ms(mounts["on"], scraped, scrapes)
    how = (f"medians of {rounds} rounds x {pairs} bursts on each of three mounts at once (fresh mounts each round, "
           "the order turned)")
    results = []
    for kind, label, unit, per in (("stat", "FUSE stat, every one a request (timeout=0)", "stat/s", f"{count} files"),
                                   ("read", "FUSE 4 KiB reads, cache=direct", "reads/s",
                                    f"{read_size >> 20} MiB per burst")):
        cpu = f"daemon CPU {sides.cpu_us(kind, 'on'):.1f} vs {sides.cpu_us(kind, 'off'):.1f} µs per {kind}"
        results += [
            Result(f"{label}, metrics on", sides.rate(kind, "on"), unit, sides.rate(kind, "off"),
                   "same mount options, metrics off",
                   f"{per}; {cpu}; daemons and the bench on CPU {CPU}; scraped every {SCRAPE_PERIOD_S:g} s by "
                   f"another process; {how}; target >= 0.95"),
            Result(f"{label}, metrics off (the noise floor)", sides.rate(kind, "off again"), unit,
                   sides.rate(kind, "off"), "same mount options, metrics off",
                   f"a third mount, as the first: how far apart two equal mounts measure on this machine now; "
                   f"daemon CPU {sides.cpu_us(kind, 'off again'):.1f} µs per {kind}"),
        ]
    results.append(Result("one scrape of the mount's /metrics: the daemon's CPU", scrape_ms, "ms", None, "",
                          f"{scrapes} scrapes after the rows above; {scrape_ms / 15e3 * 100:.3f} % of a core at "
                          "Prometheus's usual 15 s"))
    return results


def run(quick: bool) -> list[Result]:
    with host_identity():
        return [bench_replay(quick), *bench_fuse(quick)]


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result)
