"""The master's mount takes ordinary tools (mkdir -p, cp -r, tar -x, rsync -r, rm, rmdir): each
namespace change becomes the same log entry famfsctl would write, and a client shows the tree.

Real parts only: a cluster of a master and a client (demo/cluster.py), each with its agent and
its FUSE mount on one sparse image; the tools run as they are.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster, Host, wait_until
from famfs import format as fmt
from tests.famfsctl_util import entries

MiB = 1 << 20
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Modes the umask (022) keeps as they are: cp without -p then creates exactly the source's modes.
SIZES = (0, 1, 4095, 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 5 * MiB + 123)


def build_source(root: Path) -> int:
    """A stdlib subtree and files at the allocation unit's edges; its file count."""
    for package in ("json", "email"):
        shutil.copytree(STDLIB / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    rng = random.Random(12)
    for size in SIZES:
        (root / "sizes").mkdir(exist_ok=True)
        (root / "sizes" / f"file-{size}").write_bytes(rng.randbytes(size))
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return sum(len(files) for _, _, files in os.walk(root))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("master-mount")


@pytest.fixture(scope="module")
def source(workdir: Path) -> tuple[Path, int]:
    root = workdir / "src"
    return root, build_source(root)


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[Cluster]:
    with Cluster(workdir / "cluster", size="4g", clients=1) as running:
        yield running


def run(host: Host, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    return host.run_inside([str(arg) for arg in argv], check=False)


def clean(result: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return result.returncode, result.stdout, result.stderr


def same_tree_on_client(cluster: Cluster, source: Path, relpath: str) -> None:
    """The client shows relpath as a tree equal to source (diff -r), once its agent has played it."""
    client = cluster.clients[0]
    files = sum(len(names) for _, _, names in os.walk(source))
    wait_until(lambda: sum(len(names) for _, _, names in os.walk(client.view(relpath))) == files, 30,
               f"{relpath} whole on {client.name}")
    assert clean(run(client, "diff", "-r", source, client.mountpoint / relpath)) == (0, "", "")


def test_mkdir_p_then_rmdir(cluster: Cluster) -> None:
    master = cluster.master
    assert clean(run(master, "mkdir", "-p", master.mountpoint / "deep/a/b/c")) == (0, "", "")
    made = [entry for entry in entries(cluster.image) if isinstance(entry, fmt.MkdirEntry)]
    assert [entry.relpath for entry in made] == ["deep", "deep/a", "deep/a/b", "deep/a/b/c"]
    assert {(entry.mode, entry.uid, entry.gid) for entry in made} == {(0o755, 0, 0)}  # umask 022
    assert clean(run(master, "rmdir", master.mountpoint / "deep/a/b/c")) == (0, "", "")
    assert clean(run(master, "sh", "-c", f"cd {master.mountpoint} && rmdir -p deep/a/b")) == (0, "", "")
    removed = [entry for entry in entries(cluster.image) if isinstance(entry, fmt.RmdirEntry)]
    assert removed == [fmt.RmdirEntry("deep/a/b/c", target_index=3), fmt.RmdirEntry("deep/a/b", target_index=2),
                       fmt.RmdirEntry("deep/a", target_index=1), fmt.RmdirEntry("deep", target_index=0)]
    assert not master.view("deep").exists()
    wait_until(lambda: not cluster.clients[0].view("deep").exists(), 30, "the rmdirs on the client")
    assert cluster.master.famfsctl("fsck", str(cluster.image)).returncode == 0


def test_cp_r_through_the_mount_logs_what_famfsctl_cp_logs(cluster: Cluster, source: tuple[Path, int]) -> None:
    tree, _ = source
    master = cluster.master
    assert clean(run(master, "cp", "-r", tree, master.mountpoint / "bycp")) == (0, "", "")
    cluster.ctl("cp", "-r", str(tree), "byctl")
    same_tree_on_client(cluster, tree, "bycp")
    logged = entries(cluster.image)

    def form(prefix: str) -> dict[str, fmt.Entry]:
        # Everything but the place: extents differ by where each copy was allocated.
        found = {}
        for entry in logged:
            if isinstance(entry, fmt.FileEntry | fmt.MkdirEntry) and entry.relpath.startswith(prefix + "/"):
                found[entry.relpath.removeprefix(prefix)] = dataclasses.replace(entry, relpath="") if isinstance(
                    entry, fmt.MkdirEntry) else entry._replace(relpath="", extents=tuple(
                        extent._replace(offset=0) for extent in entry.extents))
        return found

    assert form("bycp") == form("byctl")
    assert len(form("bycp")) > 40
    assert "fsck: clean" in cluster.master.famfsctl("fsck", str(cluster.image)).stdout


def test_tar_x_and_rsync_r(cluster: Cluster, source: tuple[Path, int], workdir: Path) -> None:
    tree, _ = source
    master = cluster.master
    archive = workdir / "src.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tree), "."], check=True)
    assert clean(run(master, "mkdir", master.mountpoint / "bytar")) == (0, "", "")
    # famfs logs no times and no later chmod: tar keeps neither (-m, --no-same-permissions).
    untar = run(master, "tar", "-xf", archive, "-m", "--no-same-permissions", "--no-same-owner", "-C",
                master.mountpoint / "bytar")
    assert clean(untar) == (0, "", "")
    same_tree_on_client(cluster, tree, "bytar")
    assert shutil.which("rsync"), "rsync is not installed (make deps installs it)"
    assert clean(run(master, "mkdir", master.mountpoint / "byrsync")) == (0, "", "")
    # --inplace: rsync's temp file + rename needs a rename famfs has not. --chmod=F600: rsync creates
    # each file 0600 and sets its mode after closing it, when it is logged; with 0600 it need not.
    synced = run(master, "rsync", "-r", "--inplace", "--chmod=F600", f"{tree}/", master.mountpoint / "byrsync")
    assert clean(synced) == (0, "", "")
    same_tree_on_client(cluster, tree, "byrsync")
    assert "fsck: clean" in cluster.master.famfsctl("fsck", str(cluster.image)).stdout


def test_rm_r_logs_deletes_and_rmdirs(cluster: Cluster, source: tuple[Path, int]) -> None:
    tree, files = source
    master = cluster.master
    assert clean(run(master, "cp", "-r", tree, master.mountpoint / "doomed")) == (0, "", "")
    # Every file logged first (each at its release, a moment after cp closed it): a file removed
    # before its release is just forgotten, and this test counts DELETE entries.
    same_tree_on_client(cluster, tree, "doomed")
    assert clean(run(master, "rm", "-r", master.mountpoint / "doomed")) == (0, "", "")
    removals = [type(entry) for entry in entries(cluster.image)
                if isinstance(entry, fmt.DeleteEntry | fmt.RmdirEntry) and entry.relpath.split("/")[0] == "doomed"]
    dirs = sum(len(names) for _, names, _ in os.walk(tree)) + 1
    assert (removals.count(fmt.DeleteEntry), removals.count(fmt.RmdirEntry)) == (files, dirs)
    wait_until(lambda: not cluster.clients[0].view("doomed").exists(), 30, "the removal on the client")
    assert "fsck: clean" in cluster.master.famfsctl("fsck", str(cluster.image)).stdout


def test_famfsctl_and_the_mount_at_once(cluster: Cluster, source: tuple[Path, int]) -> None:
    """One device lock: concurrent writers neither lose nor double an entry."""
    tree, _ = source
    master = cluster.master
    argv = master.inside(["cp", "-r", str(tree), str(master.mountpoint / "together-mount")])
    by_mount = subprocess.Popen(argv, env=master.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cluster.ctl("cp", "-r", str(tree), "together-ctl")
    assert by_mount.wait(120) == 0, by_mount.stderr.read() if by_mount.stderr else ""

    def logged(prefix: str) -> list[str]:
        return [entry.relpath for entry in entries(cluster.image)
                if isinstance(entry, fmt.FileEntry) and entry.relpath.startswith(prefix)]

    # A file written through the mount is logged at its release, which the kernel sends a moment
    # after close(2) returns (docs/fusefs.md): cp's last file may still be on its way.
    wait_until(lambda: len(logged("together-mount/")) >= source[1], 30, "the mount's last release")
    for prefix in ("together-mount/", "together-ctl/"):
        paths = logged(prefix)
        assert len(paths) == len(set(paths)) == source[1]
    same_tree_on_client(cluster, tree, "together-mount")
    assert "fsck: clean" in cluster.master.famfsctl("fsck", str(cluster.image)).stdout
