"""The mount's request handlers timed in-process, per call, caches warm: `python -m bench.handler_cost`.

A 64 MiB file copied into a fresh image on /dev/shm, a following famfs-agent (its lease), then the
mount's FamfsOperations built on that shadow tree as famfs-fuse-mount builds them (no FUSE):
- read: `await ops.read(fh, off, 4096)` at random offsets (every page touched once first), beside
  bench/noop_fs.py's read handler: what our read adds to pyfuse3's per-request cost, hot;
- stat: the five requests a `stat` makes with `-o timeout=0` (two lookups, three getattrs) over
  2,000 files, metrics off and on (fusefs.metrics.instrument): what counting costs a request.
Best and median of 7 runs, nanoseconds. In the daemon, between requests (caches cold), the same
code costs about twice as much (docs/fusefs.md, "Random reads"). Not part of `make bench`.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyfuse3
import trio

from bench.bench_fio import NAME, following_client, make_image
from bench.bench_metrics import request_tree
from bench.common import scratch
from bench.noop_fs import NoopOperations
from famfs.device import Device
from famfs.famfslog import FamfsLog
from fusefs.devicecheck import DeviceCheck
from fusefs.inodes import InodeTable
from fusefs.metrics import MountStats, instrument
from fusefs.operations import FamfsOperations, MountPolicy

SIZE = 64 << 20
CALLS = 100_000
STATS = 2000
RUNS = 7


def operations(shadow: Path, image: Path) -> FamfsOperations:
    """FamfsOperations as famfs-fuse-mount makes them for a client (fusefs.cli.Daemon.run)."""
    devices = DeviceCheck(FamfsLog(Device(str(image))), str(shadow), writable=False)
    table = InodeTable(os.fsencode(shadow / "root"), devices.served.geometry, devices.served.check)
    policy = MountPolicy(cache="direct", entry_timeout=0.0, negative_timeout=0.0, read_only=True)
    return FamfsOperations(table, devices, policy, os.fsencode(shadow), lambda: "")


async def per_call_ns(loop: Callable[[], Awaitable[None]], calls: int) -> list[float]:
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter_ns()
        await loop()
        runs.append((time.perf_counter_ns() - started) / calls)
    return runs


def show(label: str, runs: list[float]) -> None:
    print(f"{label:58} best {min(runs):6.0f} ns  median {statistics.median(runs):6.0f} ns")


async def reads(shadow: Path, image: Path) -> None:
    ops = operations(shadow, image)
    attrs = await ops.lookup(pyfuse3.ROOT_INODE, NAME.encode(), None)  # type: ignore[arg-type]
    fh = (await ops.open(attrs.st_ino, os.O_RDONLY, None)).fh  # type: ignore[arg-type]
    noop = NoopOperations(SIZE, "direct")
    offsets = [random.Random(1).randrange(SIZE // 4096) * 4096 for _ in range(CALLS)]

    async def ours() -> None:
        for offset in offsets:
            await ops.read(fh, offset, 4096)

    async def floor() -> None:
        for offset in offsets:
            await noop.read(2, offset, 4096)

    await ours()  # every page of the mapping touched once
    show("read 4 KiB, a following client's file (lease: a copy)", await per_call_ns(ours, CALLS))
    show("read 4 KiB, bench/noop_fs.py", await per_call_ns(floor, CALLS))


async def stats(shadow: Path, image: Path) -> None:
    names = [f"f{n}".encode() for n in range(STATS)]
    for label, counted in (("metrics off", False), ("metrics on", True)):
        ops = operations(shadow, image)
        if counted:
            instrument(ops, MountStats())
        directory = (await ops.lookup(pyfuse3.ROOT_INODE, b"d", None)).st_ino  # type: ignore[arg-type]

        async def stat_all() -> None:
            for name in names:
                await ops.lookup(pyfuse3.ROOT_INODE, b"d", None)  # type: ignore[arg-type]
                found = await ops.lookup(directory, name, None)  # type: ignore[arg-type]
                await ops.getattr(found.st_ino, None)  # type: ignore[arg-type]
                await ops.getattr(found.st_ino, None)  # type: ignore[arg-type]
                await ops.getattr(directory, None)  # type: ignore[arg-type]

        await stat_all()  # every YAML parsed
        show(f"stat's five requests, {label}", await per_call_ns(stat_all, STATS))


def main() -> None:
    with scratch("handler_cost_") as work:
        image = make_image(work, SIZE)
        with following_client(work, image) as (shadow, client):
            os.environ.update(client)
            time.sleep(0.3)  # the agent's first renewal
            trio.run(reads, shadow, image)
        shadow, device = request_tree(work / "stat", STATS, 1 << 20)
        trio.run(stats, shadow, device)


if __name__ == "__main__":
    main()
