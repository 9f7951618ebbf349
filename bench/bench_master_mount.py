"""The master's mount as a writable file system (docs/fusefs.md, "Writing the namespace on the
master"): `cp -r` and `tar -x` of the Python standard library through the mount, and a 1 GiB file
written through it with and without the fast path (ftruncate to the size first).

Baselines, measured in the same run on the same cluster:
- cp -r, tar -x: `famfsctl cp -r` of the same tree (one process, one lock, data before entries);
  and the floor, the same command into bench/noop_writefs.py (a pyfuse3 file system that answers
  every request from a dict: the kernel's and pyfuse3's cost per request, nothing of ours);
- 1 GiB: the same file written through the mount without the fast path (held in memory until the
  last close, then copied into device memory), dd of the same bytes to tmpfs in the note.
A copy counts as done when the log holds every entry it makes (a file is logged at its release,
just after its close returns; tar gives each directory its mode at the end, a SETATTR each). The
master's own agent plays the entries (the mount waits for it), as in production; no client runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.common import Result, scratch
from demo.cluster import Cluster, Host, wait_until
from demo.harness import unmount, wait_for

MiB = 1 << 20
STDLIB = Path(sysconfig.get_paths()["stdlib"])
SKIPPED = ("__pycache__", "site-packages", "dist-packages", "test", "tests")


def source_tree(where: Path, quick: bool) -> tuple[Path, int, int, int]:
    """A real copy of the standard library (--quick: its json package; symlinks resolved: famfs
    has none); (root, files, directories, bytes)."""
    root = where / "stdlib"
    shutil.copytree(STDLIB / "json" if quick else STDLIB, root, symlinks=False,
                    ignore=shutil.ignore_patterns(*SKIPPED), ignore_dangling_symlinks=True)
    files = dirs = 0
    for _, names, filenames in os.walk(root):
        dirs += len(names)
        files += len(filenames)
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    return root, files, dirs + 1, size


def timed_until_logged(cluster: Cluster, entries: int, command: list[str], host: Host | None = None) -> float:
    """Seconds from starting `command` until the log holds `entries` more entries."""
    target = cluster.next_index() + entries
    started = time.perf_counter()
    if host is None:
        cluster.ctl(*command)
    else:
        host.run_inside(command, timeout=1800)
    wait_until(lambda: cluster.next_index() >= target, 600, f"{entries} entries logged")
    return time.perf_counter() - started


@contextlib.contextmanager
def noop_mount(mountpoint: Path) -> Iterator[Path]:
    """bench/noop_writefs.py mounted at `mountpoint`."""
    mountpoint.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "bench.noop_writefs", str(mountpoint)],
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for(lambda: os.path.ismount(mountpoint) or process.poll() is not None, "the no-op mount")
        if process.poll() is not None:
            raise RuntimeError(f"bench.noop_writefs exited {process.returncode}")
        yield mountpoint
    finally:
        unmount(mountpoint, process)


def timed(command: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=1800)
    return time.perf_counter() - started


def copy_commands(tree: Path, tarball: Path, into: Path) -> dict[str, list[str]]:
    """`cp -r` and `tar -x` of the tree into a new directory of `into`, each its own."""
    return {"cp -r": ["cp", "-r", str(tree), str(into / "bycp")],
            "tar -x": ["sh", "-c", f"mkdir {into / 'bytar'} && tar -C {into / 'bytar'} -xf {tarball}"]}


def copy_rows(cluster: Cluster, work: Path, quick: bool) -> list[Result]:
    """cp -r and tar -x through the master's mount, famfsctl cp -r and the no-op floor, one run."""
    tree, files, dirs, size = source_tree(work, quick)
    tarball = work / "stdlib.tar"
    subprocess.run(["tar", "-C", str(tree.parent), "-cf", str(tarball), tree.name], check=True)
    master = cluster.master
    # Entries each makes: a MKDIR per directory and a FILE per file; tar -x makes bytar/ itself
    # (one more MKDIR) and gives each directory but that one its mode at the end (a SETATTR each).
    entries = {"cp -r": files + dirs, "tar -x": files + 1 + 2 * dirs}
    ours = {what: timed_until_logged(cluster, entries[what], command, master)
            for what, command in copy_commands(tree, tarball, master.mountpoint).items()}
    by_famfsctl = timed_until_logged(cluster, files + dirs, ["cp", "-r", str(tree), "byctl"])
    with noop_mount(work / "noop") as noop:
        floor = {what: timed(command) for what, command in copy_commands(tree, tarball, noop).items()}
    what = "the stdlib's json package" if quick else "the stdlib"
    note = f"{files} files, {dirs} directories, {size / MiB:.0f} MiB; famfsctl cp -r: " \
           f"{files / by_famfsctl:,.0f} files/s, {size / by_famfsctl / 1e6:.1f} MB/s"
    results = []
    for tool, seconds in ours.items():
        floor_note = f"{note}; into the no-op pyfuse3 file system: {files / floor[tool]:,.0f} files/s; target >= 1.0x"
        results.append(Result(f"{tool} of {what} through the master's mount: files/s", files / seconds,
                              "files/s", files / by_famfsctl, "famfsctl cp -r of the same tree", floor_note))
        results.append(Result(f"{tool} of {what} through the master's mount: MB/s", size / seconds / 1e6,
                              "MB/s", size / by_famfsctl / 1e6, "famfsctl cp -r of the same tree", f"{note}; target >= 1.0x"))
        results.append(Result(f"{tool} of {what} through the master's mount vs the floor: files/s",
                              files / seconds, "files/s", files / floor[tool],
                              f"{tool} into bench/noop_writefs.py (no-op pyfuse3)", note))
    return results


def run(quick: bool) -> list[Result]:
    big = (64 if quick else 1024) * MiB
    with scratch("famfs-bench-master-") as work:
        blob = work / "blob"
        blob.write_bytes(os.urandom(big))
        started = time.perf_counter()
        shutil.copyfile(blob, work / "blob-copy")
        tmpfs_s = time.perf_counter() - started
        cluster = Cluster(parent=work, size="4g" if quick else "16g", clients=0)
        with cluster.master.config_file.open("a") as config:
            config.write(f"[mount]\nstaging_mib = {2 * big // MiB}\n")
        with cluster:
            master = cluster.master
            results = copy_rows(cluster, work, quick)
            staged = timed_until_logged(cluster, 1, ["dd", f"if={blob}", f"of={master.mountpoint / 'staged'}",
                                                     "bs=1M", "status=none"], master)
            fast = timed_until_logged(cluster, 1, ["sh", "-c", f"truncate -s {big} {master.mountpoint / 'fast'} && "
                                                   f"dd if={blob} of={master.mountpoint / 'fast'} bs=1M conv=notrunc "
                                                   "status=none"], master)
            results.append(Result(f"{big >> 20} MiB file through the master's mount, fast path (truncate -s first)",
                                  big / fast / 1e6, "MB/s", big / staged / 1e6,
                                  "the same file without it (held in memory, copied at the last close)",
                                  f"dd bs=1M; copying the bytes to a tmpfs file: {big / tmpfs_s / 1e6:,.0f} MB/s"))
    return results
