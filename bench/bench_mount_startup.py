"""famfs-fuse-mount start-up over a shadow tree of many directories: from starting the daemon
until the mount answers (every directory gets an inotify watch and an inode before that).

15,420 directories is what a full 8 MiB log of mkdirs makes (the entry count of the reference
image tests/data/c_full). Baseline, measured in the same run: `find` of the same shadow tree
(one process visiting every directory once: what "linear in the tree" costs at the least). The
note gives the start-up over an empty tree and over half the directories, so a reader sees what
each directory costs and whether that grows with the tree.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.bench_fuse import command_seconds, make_device
from bench.common import Result, scratch
from demo.harness import Mount, empty_shadow, own_dir

FULL_LOG_ENTRIES = 15_420  # entries of a full 8 MiB log (tests/data/c_full)
FAN_OUT = 123  # subdirectories per top-level directory: 125 top-level directories for a full log


def directory_tree(where: Path, directories: int) -> tuple[Path, Path]:
    """(shadow, its device): root/ holds `directories` directories, two levels deep, each logged
    on the device and made the agent's way (docs/security.md), as a following agent leaves them."""
    where.mkdir()
    device = make_device(where, 8 << 30)
    shadow = empty_shadow(where / "shadow", device)
    root = shadow / "root"
    made = top = 0
    while made < directories:
        name = f"d{top:04}"
        (root / name).mkdir()
        own_dir(shadow, root / name, name)
        made, top = made + 1, top + 1
        for n in range(min(FAN_OUT, directories - made)):
            (root / name / f"s{n:03}").mkdir()
            own_dir(shadow, root / name / f"s{n:03}", f"{name}/s{n:03}")
        made += min(FAN_OUT, directories - made)
    return shadow, device


def startup_seconds(shadow: Path, device: Path, mountpoint: Path) -> float:
    """Seconds from starting famfs-fuse-mount until the mount is listed (Mount.__enter__)."""
    started = time.perf_counter()
    with Mount(shadow, device, mountpoint):
        return time.perf_counter() - started


def run(quick: bool) -> list[Result]:
    directories = 1000 if quick else FULL_LOG_ENTRIES
    runs = 1 if quick else 3
    with scratch("bench_startup_") as where:
        trees = {size: directory_tree(where / f"tree{size}", size) for size in (0, directories // 2, directories)}
        startup_seconds(*trees[0], where / "mnt")  # warm-up: the daemon's modules read once
        seconds: dict[int, list[float]] = {size: [] for size in trees}
        for _ in range(runs):  # interleaved: a busy moment on a shared machine hits every size alike
            for size, (shadow, device) in trees.items():
                seconds[size].append(startup_seconds(shadow, device, where / "mnt"))
        base = statistics.median(command_seconds(("find",), trees[directories][0] / "root") for _ in range(runs))
    empty, half, full = (statistics.median(seconds[size]) for size in trees)
    note = (f"median of {runs}; empty tree {empty:.2f} s; per directory above that: "
            f"{(half - empty) / (directories // 2) * 1e6:.0f} us with {directories // 2:,}, "
            f"{(full - empty) / directories * 1e6:.0f} us with {directories:,} "
            "(linear: the two equal; quadratic: the second doubles); "
            f"target <= 2 s for {FULL_LOG_ENTRIES:,}")
    return [Result(f"mount start-up over {directories:,} directories (until the mount answers)", full * 1000, "ms",
                   base * 1000, "find of the same shadow tree", note)]


if __name__ == "__main__":
    for result in run(quick=False):
        print(result)
