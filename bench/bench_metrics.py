"""What Prometheus metrics cost the hot paths: the same work with metrics on and off, in one run.

- replay: famfs-agent --follow replaying the full 8 MiB reference log (15,420 entries), from the
  process start until the cursor reaches the last entry; metrics on, a scrape every 50 ms
  (hundreds of times Prometheus's usual rate, to make any cost show).
- FUSE stat: `-o timeout=0`, so every stat is a FUSE lookup or getattr (the timed handlers).
- FUSE read: 4 KiB reads with cache=direct, so every read is a FUSE request.
On and off alternate, best of 3 each (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.bench_agent import follower_process
from bench.bench_fuse import device_size, file_entry, make_device, stat_rate
from bench.common import Result, scratch
from demo.harness import Mount, empty_shadow, materialize_reference, put_dir, put_file
from famfs import env
from famfs.device import Device
from famfs.famfslog import FamfsLog

BEST_OF = 3
SCRAPE_PERIOD_S = 0.05
STAT_FILES = 2000
READ_SIZE = 64 << 20
SMALL_READ = 4096


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def metrics_config(work: Path, on: bool) -> Iterator[int]:
    """famfs-agent.toml with metrics on (a free port) or off, exported to the daemons; the port."""
    port = free_port()
    path = work / f"metrics-{port}.toml"
    address = f"127.0.0.1:{port}" if on else ""
    path.write_text(f'[agent]\nmetrics_address = "{address}"\n[mount]\nmetrics_address = "{address}"\n')
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
def scraping(port: int, on: bool) -> Iterator[None]:
    """Scrape /metrics every SCRAPE_PERIOD_S while the block runs (metrics on only)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(SCRAPE_PERIOD_S):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

    thread = threading.Thread(target=loop, daemon=True)
    if on:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            thread.join()


def replay_seconds(work: Path, image: Path, entries: int, run: str, on: bool) -> float:
    shadow = work / f"shadow-{run}"
    with metrics_config(work, on) as port, scraping(port, on):
        start = time.perf_counter()
        with follower_process(image, shadow, wake_hint=True):
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
    return Result(f"follow replay of the full 8 MiB log ({entries:,} entries), metrics on + scraped every 50 ms",
                  entries / best[True], "entries/s", entries / best[False], "same, metrics off",
                  f"process start included; best of {runs}, on and off alternating")


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


def bench_fuse(quick: bool) -> list[Result]:
    runs = 1 if quick else BEST_OF
    count = 200 if quick else STAT_FILES
    read_size = READ_SIZE // 8 if quick else READ_SIZE
    with scratch("bench_metrics_") as work:
        device = make_device(work, device_size(count) + read_size)
        shadow = empty_shadow(work / "shadow", device)
        put_dir(shadow, "d")
        for n in range(count):
            put_file(shadow, file_entry(f"d/f{n}", 4096, n))
        put_file(shadow, file_entry("big", read_size, count))
        stats = {True: 0.0, False: 0.0}
        reads = {True: 0.0, False: 0.0}
        for run in range(runs):
            for on in (False, True):
                with metrics_config(work, on) as port, scraping(port, on), \
                        Mount(shadow, device, work / f"mnt-{run}-{on}", "timeout=0", "cache=direct") as mount:
                    paths = [mount.mountpoint / "d" / f"f{n}" for n in range(count)]
                    stats[on] = max(stats[on], stat_rate(paths, 5))
                    reads[on] = max(reads[on], small_read_rate(mount.mountpoint / "big", read_size))
    note = f"best of {runs}, on and off alternating; metrics on: scraped every 50 ms"
    return [
        Result("FUSE stat, every one a request (timeout=0), metrics on", stats[True], "stat/s", stats[False],
               "same mount options, metrics off", f"{count} files; {note}"),
        Result("FUSE 4 KiB reads, cache=direct, metrics on", reads[True], "reads/s", reads[False],
               "same mount options, metrics off", f"{read_size >> 20} MiB file; {note}"),
    ]


def run(quick: bool) -> list[Result]:
    return [bench_replay(quick), *bench_fuse(quick)]
