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
from demo.harness import Mount, empty_shadow

FULL_LOG_ENTRIES = 15_420  # entries of a full 8 MiB log (tests/data/c_full)
FAN_OUT = 123  # subdirectories per top-level directory: 125 top-level directories for a full log


def directory_tree(where: Path, directories: int) -> Path:
    """A shadow whose root/ holds `directories` directories, two levels deep."""
    shadow = empty_shadow(where)
    root = shadow / "root"
    made = top = 0
    while made < directories:
        parent = root / f"d{top:04}"
        parent.mkdir()
        made, top = made + 1, top + 1
        for n in range(min(FAN_OUT, directories - made)):
            (parent / f"s{n:03}").mkdir()
        made += min(FAN_OUT, directories - made)
    return shadow


def startup_seconds(shadow: Path, device: Path, mountpoint: Path) -> float:
    """Seconds from starting famfs-fuse-mount until the mount is listed (Mount.__enter__)."""
    started = time.perf_counter()
    with Mount(shadow, device, mountpoint):
        return time.perf_counter() - started


def run(quick: bool) -> list[Result]:
    directories = 1000 if quick else FULL_LOG_ENTRIES
    runs = 1 if quick else 3
    with scratch("bench_startup_") as where:
        device = make_device(where, 8 << 30)
        trees = {0: empty_shadow(where / "shadow_empty"),
                 directories // 2: directory_tree(where / "shadow_half", directories // 2),
                 directories: directory_tree(where / "shadow_full", directories)}
        startup_seconds(trees[0], device, where / "mnt")  # warm-up: the daemon's modules read once
        seconds: dict[int, list[float]] = {size: [] for size in trees}
        for _ in range(runs):  # interleaved: a busy moment on a shared machine hits every size alike
            for size, shadow in trees.items():
                seconds[size].append(startup_seconds(shadow, device, where / "mnt"))
        base = statistics.median(command_seconds(("find",), trees[directories] / "root") for _ in range(runs))
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
