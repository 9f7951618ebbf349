"""fio through a client's mount, in each cache mode, beside the same job on a no-op pyfuse3 file
system (bench/noop_fs.py: the floor, what pyfuse3 and the kernel cost per request) and on the
image file itself (no FUSE at all).

The client runs as a following client does: its famfs-agent --follow (its own identity, the
default serve window), so the mount serves under the agent's lease: a read copies the bytes and
then checks the lease (fusefs/lease.py). A one-shot play's tree is served zero-copy instead.
The file: FILE_SIZE bytes of random data copied in by famfsctl cp on the master, everything on
/dev/shm (the image stands in for device memory). Jobs are buffered (no O_DIRECT), as an
application reads; `randread` uses fio's default POSIX_FADV_RANDOM (no read-ahead). fio drops the
page cache when it opens the file (invalidate=1), so in cache=auto and cache=always a page is
served from it only when read again within one pass. fio and the daemon run on one CPU (CPU,
below). Each figure is the best of ROUNDS runs of RUNTIME_S seconds; ours and the no-op mount
are measured one after the other, which one first turning each round. docs/fusefs.md has the
figures and where a read's time goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import CPU, Result, pin, scratch
from demo.cluster import stop_process
from demo.harness import Mount, unmount, wait_for
from famfs import env
from famfs.shadowyaml import parse_file_yaml

MiB = 1 << 20
FILE_SIZE = 512 * MiB
IMAGE_SIZE = "1g"
RUNTIME_S = 2
ROUNDS = 3
CACHES = ("direct", "auto", "always")
NAME = "data"


@dataclass(frozen=True)
class Job:
    label: str
    args: tuple[str, ...]
    iops: bool  # the figure: IOPS, else MB/s

    def figure(self, report: dict[str, float]) -> float:
        return report["iops"] if self.iops else report["bw_bytes"] / 1e6


JOBS = (
    Job("randread 4 KiB, iodepth 1", ("--rw=randread", "--bs=4k", "--ioengine=psync", "--iodepth=1"), True),
    # io_uring: a buffered read that cannot complete at once (FUSE: never) goes to its workers,
    # so up to 16 requests are in flight at the daemon (libaio would wait for each, unless O_DIRECT).
    Job("randread 4 KiB, iodepth 16", ("--rw=randread", "--bs=4k", "--ioengine=io_uring", "--iodepth=16"), True),
    Job("read 1 MiB", ("--rw=read", "--bs=1m", "--ioengine=psync", "--iodepth=1"), False),
)


def fio(job: Job, path: Path, size: int, runtime: float, offset: int = 0) -> dict[str, float]:
    """One fio run of `job` over `size` bytes of `path` from `offset`: fio's read figures."""
    args = ["fio", "--name=bench", f"--filename={path}", *job.args, f"--size={size}", f"--offset={offset}",
            f"--cpus_allowed={CPU}",
            f"--runtime={runtime}", "--time_based", "--ramp_time=0.5", "--output-format=json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=runtime + 120)
    if done.returncode != 0:
        raise RuntimeError(f"fio on {path}: {done.stderr.strip()[:500]}")
    read = json.loads(done.stdout)["jobs"][0]["read"]
    p99_us = read["clat_ns"]["percentile"]["99.000000"] / 1e3
    return {"iops": read["iops"], "bw_bytes": read["bw_bytes"], "p99_us": p99_us}


def famfsctl(work: Path, *args: str) -> None:
    # As a program: bench imports the mount's code, which may not import the master's.
    done = subprocess.run([sys.executable, "-m", "famfs.master.famfsctl", *args], capture_output=True, text=True,
                          env={**os.environ, env.SYSTEM_UUID_FILE: str(work / "master_uuid")}, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"famfsctl {args[0]}: {done.stderr.strip()}")


def make_image(work: Path, size: int) -> Path:
    """A famfs image holding NAME, `size` random bytes."""
    image = work / "dev.img"
    famfsctl(work, "mkfs", "--size", IMAGE_SIZE, str(image))
    source = work / NAME
    with open(source, "wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
    famfsctl(work, "cp", "--device", str(image), str(source), NAME)
    source.unlink()
    return image


@contextlib.contextmanager
def following_client(work: Path, image: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A client's famfs-agent --follow (default settings, its own identity): its shadow tree and
    the environment its mount runs in (the same identity)."""
    shadow, identity, config = work / "shadow", work / "client-host" / "system_uuid", work / "agent.toml"
    config.write_text("[agent]\n")  # every default: nothing from this host's /etc/famfs
    client = {**os.environ, env.SYSTEM_UUID_FILE: str(identity)}
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "--follow", "--shadow", str(shadow), "--config",
                              str(config), "--system-uuid-file", str(identity), "--log-level", "warning", str(image)],
                             env=client)
    try:
        wait_for(lambda: (shadow / "root" / NAME).exists() or agent.poll() is not None, "the client's shadow file")
        if agent.poll() is not None:
            raise RuntimeError(f"famfs-agent --follow exited {agent.returncode}")
        yield shadow, client
    finally:
        stop_process(agent, 30)


@contextlib.contextmanager
def noop_mount(mountpoint: Path, size: int, cache: str) -> Iterator[tuple[Path, int]]:
    """bench/noop_fs.py mounted: its file and its pid."""
    mountpoint.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "bench.noop_fs", str(size), str(mountpoint),
                                "--cache", cache], cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for(lambda: os.path.ismount(mountpoint) or process.poll() is not None, "the no-op mount")
        if process.poll() is not None:
            raise RuntimeError(f"bench.noop_fs exited {process.returncode}")
        os.listdir(mountpoint)  # INIT answered
        yield mountpoint / NAME, process.pid
    finally:
        unmount(mountpoint, process)


def file_offset(shadow: Path) -> int:
    entry = parse_file_yaml((shadow / "root" / NAME).read_bytes())
    if len(entry.extents) != 1:
        raise RuntimeError(f"{NAME}: {len(entry.extents)} extents; the image baseline needs one")
    return entry.extents[0].offset


def run(quick: bool) -> list[Result]:
    if shutil.which("fio") is None:
        raise RuntimeError("fio is not installed (Debian's package fio: make deps installs it)")
    size, runtime, rounds = (64 * MiB, 0.5, 1) if quick else (FILE_SIZE, RUNTIME_S, ROUNDS)
    best: dict[tuple[str, str], dict[str, float]] = {}

    def keep(key: tuple[str, str], job: Job, report: dict[str, float]) -> None:
        if key not in best or job.figure(report) > job.figure(best[key]):
            best[key] = report

    with scratch("bench_fio_") as work:
        image = make_image(work, size)
        with following_client(work, image) as (shadow, client):
            offset = file_offset(shadow)
            for round_ in range(rounds):
                for job in JOBS:
                    keep((job.label, "image"), job, fio(job, image, size, runtime, offset))
                for cache in CACHES:
                    # Ours and the no-op one after the other, which one first turning each round.
                    for side in ("ours", "noop") if round_ % 2 == 0 else ("noop", "ours"):
                        with contextlib.ExitStack() as stack:
                            if side == "ours":
                                mount = stack.enter_context(Mount(shadow, image, work / f"mnt-{round_}-{cache}",
                                                                  f"cache={cache}", env=client))
                                assert mount.process is not None
                                path, pid, key = mount.mountpoint / NAME, mount.process.pid, cache
                            else:
                                noop = noop_mount(work / f"noop-{round_}-{cache}", size, cache)
                                path, pid = stack.enter_context(noop)
                                key = f"noop {cache}"
                            pin(pid)
                            for job in JOBS:
                                keep((job.label, key), job, fio(job, path, size, runtime))
    return results(best, size, runtime, rounds)


def results(best: dict[tuple[str, str], dict[str, float]], size: int, runtime: float, rounds: int) -> list[Result]:
    rows = []
    for job in JOBS:
        unit = "IOPS" if job.iops else "MB/s"
        image = best[job.label, "image"]
        for cache in CACHES:
            ours, floor = best[job.label, cache], best[job.label, f"noop {cache}"]
            target = "; target >= 0.8x the no-op" if job.iops else ""
            rows.append(Result(
                f"fio {job.label}, client mount cache={cache}", job.figure(ours), unit, job.figure(floor),
                f"no-op pyfuse3 fs, cache={cache}",
                f"following client (lease: a copy per read); fio and daemon on CPU {CPU}; "
                f"image file: {job.figure(image):,.0f} {unit} "
                f"(mount/image {job.figure(ours) / job.figure(image):.2f}); p99 {ours['p99_us']:.0f} µs vs no-op "
                f"{floor['p99_us']:.0f} µs, image {image['p99_us']:.0f} µs; {size // MiB} MiB file; best of {rounds} x "
                f"{runtime:g} s{target}"))
    return rows


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result)
