"""Issue 19: while free space is only in pieces, a simple file is allocated in up to 16 extents
(docs/format.md, Allocation) by famfsctl creat/cp, famfs.Master and the master's mount, and every
reader serves it: a client's mount (read, mmap), famfs.open, fsck; a reclaim frees every piece.

Real parts: a cluster (demo/cluster.py) of a master and a client on one 1 GiB image whose data
area is filled with 2 MiB files, every other one then deleted and reclaimed, so no free run is
longer than one 2 MiB unit.
"""

from __future__ import annotations

import mmap
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import famfs
from demo.cluster import Cluster, wait_until
from famfs import format as fmt
from famfs import rules
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import fsck, writer
from tests.famfsctl_util import famfsctl, file_entries
from tests.fuse_util import wait_for

MiB = 1 << 20
AU = fmt.ALLOC_UNIT
OWNER = writer.Ownership(0o644, 0, 0)
ODD_READ = 1_000_003  # a read size no extent boundary is a multiple of


def fragment(image: Path, uuid_file: Path) -> None:
    """Fill the data area with one-unit files, delete every other one and reclaim it."""
    with writer.session(str(image), uuid_file) as session:
        session.mkdir("frag", writer.Ownership(0o755, 0, 0))
        made = []
        while session.namespace.units.find_free(1) is not None:
            made.append(session.create(f"frag/f{len(made)}", AU, OWNER))
        pairs = [(created.index, session.remove(created.relpath)) for created in made[1::2]]
        session.reclaim([(index, delete) for index, delete in pairs if index is not None])
        assert session.namespace.units.find_free(2) is None  # no run of two units is left


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("frag") / "cluster", size="1g", clients=1, namespaces=False) as running:
        fragment(running.image, running.master.uuid_file)
        yield running


def extents_of(image: Path, relpath: str) -> tuple[fmt.Extent, ...]:
    (entry,) = [entry for entry in file_entries(image) if entry.relpath == relpath]
    return entry.extents


def served_everywhere(cluster: Cluster, relpath: str, expected: bytes) -> None:
    """Every reader gives the file's bytes: the client's mount (whole, in odd-sized reads, mmap),
    famfs.open through the mount and on the device; fsck is clean."""
    client = cluster.clients[0]
    seen = wait_for(lambda: client.view(relpath).exists() and client.view(relpath), f"{relpath} on the client")
    assert seen.read_bytes() == expected
    with seen.open("rb", buffering=0) as reader:
        pieces = iter(lambda: reader.read(ODD_READ), b"")
        assert b"".join(pieces) == expected
        with mmap.mmap(reader.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            assert mapped[:] == expected
    with famfs.open(seen) as mapped, famfs.open(relpath, device=cluster.image) as by_device:
        assert mapped.buffer == expected == by_device.buffer
    report = fsck.check(Device(cluster.image))
    assert report.clean, report.render()


def test_famfsctl_creat_and_cp_place_a_file_in_pieces(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ctl("creat", "-s", str(20 * MiB), "-r", "-S", "7", "by_creat")
    assert len(extents_of(cluster.image, "by_creat")) == 10
    assert famfsctl("verify", "--device", cluster.image, "-S", 7, "by_creat").returncode == 0
    with famfs.open("by_creat", device=cluster.image) as made:
        served_everywhere(cluster, "by_creat", bytes(made.buffer))

    local = tmp_path / "local"
    local.write_bytes(random.Random(1).randbytes(7 * MiB + 123))
    cluster.ctl("cp", str(local), "by_cp")
    assert len(extents_of(cluster.image, "by_cp")) == 4
    served_everywhere(cluster, "by_cp", local.read_bytes())


def test_master_create_in_a_batch_places_files_in_pieces(cluster: Cluster) -> None:
    master = famfs.Master(cluster.image, system_uuid_file=cluster.master.uuid_file)
    data = {f"api{n}": random.Random(n).randbytes(9 * MiB + n) for n in range(2)}
    with master.batch():
        for relpath, content in data.items():
            with master.create(relpath, len(content)) as new:
                new.buffer[:] = content
    for relpath, content in data.items():
        assert len(extents_of(cluster.image, relpath)) == 5
        served_everywhere(cluster, relpath, content)


def test_the_masters_mount_places_a_copied_file_in_pieces(cluster: Cluster, tmp_path: Path) -> None:
    local = tmp_path / "local"
    content = random.Random(3).randbytes(11 * MiB + 5)
    local.write_bytes(content)
    cluster.master.run_inside(["cp", str(local), str(cluster.master.mountpoint / "by_mount")])
    wait_until(lambda: any(e.relpath == "by_mount" for e in file_entries(cluster.image)), 30, "by_mount logged")
    assert len(extents_of(cluster.image, "by_mount")) == 6
    served_everywhere(cluster, "by_mount", content)


def test_writes_across_extent_boundaries_land_in_both_pieces(cluster: Cluster) -> None:
    pieces = extents_of(cluster.image, "by_cp")
    expected = bytearray(cluster.master.view("by_cp").read_bytes())
    boundary = pieces[0].length  # file offset where the second piece starts
    patch = b"<across the boundary>"
    with cluster.clients[0].view("by_cp").open("r+b", buffering=0) as writer_fd:  # the client mount's write path
        writer_fd.seek(boundary - 5)
        assert writer_fd.write(patch) == len(patch)
    expected[boundary - 5:boundary - 5 + len(patch)] = patch
    with famfs.open(cluster.clients[0].view("by_cp"), "r+") as mapped:  # and famfs.open's mapping
        mapped.buffer[2 * boundary - 1:2 * boundary + 1] = b"##"
    expected[2 * boundary - 1:2 * boundary + 1] = b"##"
    assert cluster.master.view("by_cp").read_bytes() == bytes(expected)
    served_everywhere(cluster, "by_cp", bytes(expected))


def test_seventeen_pieces_are_refused_naming_the_free_space_and_the_largest_run(cluster: Cluster) -> None:
    done = cluster.ctl("creat", "-s", str(17 * AU), "too_big", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no free run of 34 MiB, nor 16 that hold it (free: " in done.stderr
    assert "largest free run: 2 MiB)" in done.stderr
    assert not any(entry.relpath == "too_big" for entry in file_entries(cluster.image))


def test_a_reclaim_frees_every_piece(cluster: Cluster) -> None:
    pieces = extents_of(cluster.image, "by_creat")
    cluster.ctl("rm", "by_creat")
    with writer.session(str(cluster.image), cluster.master.uuid_file) as session:
        (deleted,) = [(index, session.namespace.deleted_by(index)) for index in session.namespace.deleted
                      if session.namespace.deleted[index].relpath == "by_creat"]
        session.reclaim([deleted])
    with Device(cluster.image) as device:
        namespace = rules.replay(FamfsLog(device), lambda problem: pytest.fail(str(problem)))
    assert all(namespace.units.first_taken((piece,)) is None for piece in pieces)
    report = fsck.check(Device(cluster.image))
    assert report.clean, report.render()
