"""Standard tools through a client's mount: find, du, ls -lR, cp -r out, sha256sum — each gives
the same answer on the famfs tree as on the local tree it was copied from."""

from __future__ import annotations

import os
import random
import shlex
import shutil
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster, Host, wait_until

MiB = 1 << 20
ALLOC_UNIT = 2 * MiB


def build_source(root: Path) -> int:
    """A tree with the shapes that trip file systems up; returns its file count."""
    rng = random.Random(7)
    shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / "json", root / "json",
                    ignore=shutil.ignore_patterns("__pycache__"))
    sizes = (0, 1, 4095, 4096, 4097, 65536, ALLOC_UNIT - 1, ALLOC_UNIT, ALLOC_UNIT + 1, 5 * MiB + 123)
    for number, size in enumerate(sizes):
        path = root / "sizes" / f"file-{size}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        path.chmod((0o644, 0o600, 0o755, 0o444)[number % 4])
    deep = root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("the bottom\n")
    (root / "a" / "empty-dir").mkdir()
    (root / "a" / "private").mkdir(mode=0o700)
    (root / "a" / "private" / "secret").write_text("s3cret\n")
    (root / "a" / "b" / "sticky").mkdir()
    os.chmod(root / "a" / "b" / "sticky", 0o1777)
    return sum(len(files) for _, _, files in os.walk(root))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[Cluster]:
    # One cluster for the module: every test here only reads through the mount.
    with Cluster(workdir / "cluster", size="2g") as running:
        yield running


@pytest.fixture(scope="module")
def copied(cluster: Cluster, workdir: Path) -> tuple[Path, Host]:
    """The source tree copied into famfs as /src; a client that shows all of it."""
    source = workdir / "src"
    files = build_source(source)
    cluster.ctl("cp", "-r", str(source), "/")
    client = cluster.clients[0]
    wait_until(lambda: sum(len(names) for _, _, names in os.walk(client.view("src"))) == files, 30,
               f"all {files} files on {client.name}")
    return source, client


def in_dir(client: Host, directory: Path, script: str) -> str:
    """A shell script's output, run on the client with `directory` as its working directory."""
    return client.run_inside(["sh", "-c", f"cd {shlex.quote(str(directory))} && {script}"]).stdout


def on_both(client: Host, source: Path, script: str) -> tuple[str, str]:
    """Run a shell script in the local tree and, on the client, in the same tree through its mount."""
    return in_dir(client, source, script), in_dir(client, client.mountpoint / "src", script)


def test_find_lists_the_same_tree(copied: tuple[Path, Host]) -> None:
    source, client = copied
    local, remote = on_both(client, source, "find . -printf '%y %m %U %G %P\\n' | sort")
    assert remote == local
    assert "d 1777" in remote and "d 700" in remote


def test_find_sizes_of_files(copied: tuple[Path, Host]) -> None:
    source, client = copied
    local, remote = on_both(client, source, "find . -type f -printf '%s %P\\n' | sort")
    assert remote == local
    assert f"{5 * MiB + 123} sizes/file-{5 * MiB + 123}" in remote


def test_du_apparent_sizes_match_and_usage_is_whole_allocation_units(copied: tuple[Path, Host]) -> None:
    source, client = copied
    files = "find . -type f -print0 | sort -z | xargs -0"
    local, remote = on_both(client, source, f"{files} du -b --apparent-size")
    assert remote == local
    _, usage = on_both(client, source, f"{files} du -B1")
    for line in usage.splitlines():
        used, name = line.split("\t")
        size = (source / name).stat().st_size
        # st_blocks comes from the famfs allocation: whole 2 MiB units covering the file.
        assert int(used) % ALLOC_UNIT == 0 and int(used) >= size, line


def test_ls_lR_shows_same_names_modes_owners_and_file_sizes(copied: tuple[Path, Host]) -> None:
    source, client = copied
    # Link counts, times and directory sizes are file-system specific: compare the rest.
    script = ("ls -lR --time-style=+T . | awk '/^total / {next} /^[-d]/ {print $1, $3, $4, (substr($1,1,1)==\"d\" ? \"-\" : $5), $7; next} "
              "{print}'")
    local, remote = on_both(client, source, script)
    assert remote == local
    assert "-r--r--r-- root root" in remote


def test_cp_r_out_of_the_mount_gives_the_same_tree(copied: tuple[Path, Host], tmp_path: Path) -> None:
    source, client = copied
    out = tmp_path / "out"
    client.run_inside(["cp", "-r", "--preserve=mode", str(client.mountpoint / "src"), str(out)])
    diff = client.run_inside(["diff", "-r", str(source), str(out)], check=False)
    assert (diff.returncode, diff.stdout) == (0, "")
    listing = "find . -printf '%y %m %P\\n' | sort"
    assert in_dir(client, out, listing) == in_dir(client, source, listing)


def test_sha256sum_of_every_file_matches(copied: tuple[Path, Host]) -> None:
    source, client = copied
    local, remote = on_both(client, source, "find . -type f -print0 | sort -z | xargs -0 sha256sum")
    assert remote == local
    assert len(remote.splitlines()) == sum(len(files) for _, _, files in os.walk(source))
