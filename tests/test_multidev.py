"""One file system over several devices (docs/devices.md): add-device, files on each device,
interleaved files striped across them, each host finding the devices by UUID at its own paths,
a missing device, a device UUID of another file system refused, DCD tags through a fake sysfs."""

from __future__ import annotations

import errno
import os
import random
import uuid
from pathlib import Path

import pytest

import famfs
from demo.cluster import Cluster, stop_process, tool
from famfs import devices, env, rules
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import fsck, prng, writer
from famfs.master.api import Master
from tests.agent_util import FOLLOW_WAIT_S, append, following, run_agent
from tests.famfsctl_util import entries, famfsctl, make_image
from tests.fuse_util import Mount, client_uuid_file, wait_for

MiB = 1 << 20


def config(path: Path, *device_paths: Path) -> Path:
    path.write_text("[host]\ndevices = [" + ", ".join(f'"{p}"' for p in device_paths) + "]\n")
    return path


@pytest.fixture
def three(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A primary and two added devices, 3 GiB image files each (sparse)."""
    primary = make_image(tmp_path / "p.img", "3g")
    added = []
    for name in ("s1.img", "s2.img"):
        famfsctl("add-device", "--device", primary, "--size", "3g", tmp_path / name)
        added.append(tmp_path / name)
    return primary, added[0], added[1]


def superblock(path: Path) -> fmt.Superblock:
    found = devices.read_superblock(str(path))
    assert found is not None
    return found


def test_add_device_writes_a_secondary_superblock_and_logs_add_daxdev(tmp_path: Path) -> None:
    primary = make_image(tmp_path / "p.img", "1g")
    before = primary.read_bytes()[:fmt.SUPERBLOCK_SIZE]
    famfsctl("add-device", "--device", primary, "--size", "1g", tmp_path / "s1.img")
    assert primary.read_bytes()[:fmt.SUPERBLOCK_SIZE] == before  # the primary's superblock is untouched
    main, added = superblock(primary), superblock(tmp_path / "s1.img")
    assert (main.sb_flags, added.sb_flags) == (0, fmt.SECONDARY_SB)
    assert added.fs_uuid == main.fs_uuid and added.system_uuid == main.system_uuid
    assert added.dev_uuid == added.dd_uuid != main.dev_uuid and (added.log_offset, added.log_len) == (0, 0)
    assert entries(primary) == [fmt.AddDaxdevEntry(dev_size=1 << 30, dev_uuid=added.dev_uuid, dev_index=1)]
    # The superblock region of the added device is zero past the superblock: no log there.
    raw = (tmp_path / "s1.img").read_bytes()[:fmt.SECONDARY_DATA_START]
    assert raw[fmt.SUPERBLOCK.size:].count(0) == len(raw) - fmt.SUPERBLOCK.size
    with Device(tmp_path / "s1.img") as opened, pytest.raises(fmt.FormatError, match="give its primary device"):
        FamfsLog(opened)
    again = famfsctl("add-device", "--device", primary, tmp_path / "s1.img", check=False)
    assert again.returncode == 1 and "already holds a famfs superblock" in again.stderr


def test_files_on_each_device_and_striped_read_back_at_other_paths(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    primary, s1, s2 = three
    master = config(tmp_path / "master.toml", s1, s2)
    famfsctl("creat", "--config", master, "--device", primary, "-s", "5m", "--on-device", "1", "-r", "-S", "7", "one")
    dev2 = str(superblock(s2).dev_uuid)
    famfsctl("creat", "--config", master, "--device", primary, "-s", "3m", "--on-device", dev2, "-r", "-S", "8", "two")
    famfsctl("creat", "--config", master, "--device", primary, "-s", "64m", "-N", "3", "-B", "1", "-r", "-S", "9", "wide")
    famfsctl("creat", "--config", master, "--device", primary, "-s", "1m", "-r", "-S", "6", "zero")
    files = {entry.relpath: entry for entry in entries(primary) if isinstance(entry, fmt.FileEntry)}
    assert [e.devindex for e in files["one"].extents] == [1] and [e.devindex for e in files["two"].extents] == [2]
    assert [e.devindex for e in files["zero"].extents] == [0]
    assert sorted(strip.devindex for strip in files["wide"].stripes[0].strips) == [0, 1, 2]
    checked = famfsctl("fsck", primary).stdout
    assert "fsck: clean" in checked and "past device 0's size" not in checked  # (3 GiB devices, all alike)
    assert "device 2 (secondary)" in famfsctl("status", primary).stdout
    # Another host: the same devices at paths of its own, listed in its own config.
    elsewhere = tmp_path / "client"
    elsewhere.mkdir()
    moved = [elsewhere / "a.img", elsewhere / "b.img"]
    os.rename(s2, moved[0])
    os.rename(s1, moved[1])
    client = config(tmp_path / "client.toml", *moved)
    for name, seed in (("one", 7), ("two", 8), ("wide", 9), ("zero", 6)):
        famfsctl("verify", "--config", client, "--device", primary, "-S", seed, name)
    # A host without device 2: its files are refused naming the UUID; the others are read.
    partial = config(tmp_path / "partial.toml", moved[1])
    missing = famfsctl("verify", "--config", partial, "--device", primary, "-S", 8, "two", check=False)
    assert missing.returncode == 1 and dev2 in missing.stderr
    famfsctl("verify", "--config", partial, "--device", primary, "-S", 7, "one")


def test_master_create_maps_each_extent_from_its_device(tmp_path: Path, three: tuple[Path, Path, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    primary, s1, s2 = three
    monkeypatch.setenv("FAMFS_AGENT_CONFIG", str(config(tmp_path / "master.toml", s1, s2)))
    data = b"".join(prng.pattern_blocks(11, 24 * MiB))
    layout = writer.alloc.InterleaveParams(nbuckets=1, nstrips=2, chunk_size=2 * MiB)
    with Master(primary).create("striped", len(data), layout=layout, on=[1, 2]) as new:
        new.buffer[:] = data
        new.commit()
    with Device(primary) as opened:
        entry = writer.load(FamfsLog(opened)).files["striped"][1]
    assert sorted(strip.devindex for strip in entry.stripes[0].strips) == [1, 2]
    images = {1: s1.read_bytes(), 2: s2.read_bytes()}
    assert b"".join(images[d][start:start + size] for d, start, size in fmt.device_pieces(entry)) == data


def test_rule_book_checks_devindex_and_the_device_size(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    primary, _, _ = three
    with Device(primary) as opened:
        famfs_log = FamfsLog(opened)
        namespace = writer.load(famfs_log)
        geometry = rules.Geometry.of(famfs_log.superblock)
        beyond = fmt.FileEntry(relpath="x", size=MiB, mode=0o644, uid=0, gid=0, extents=(fmt.Extent(offset=64 * MiB, length=2 * MiB, devindex=3),))
        with pytest.raises(rules.Violation, match="extents_on_logged_device"):
            rules.check(famfs_log.header().next_index, beyond, namespace, geometry, famfs_log.entry)
        past = fmt.FileEntry(relpath="x", size=MiB, mode=0o644, uid=0, gid=0, extents=(fmt.Extent(offset=3 << 30, length=2 * MiB, devindex=1),))
        with pytest.raises(rules.Violation, match="extents_inside_device"):
            rules.check(famfs_log.header().next_index, past, namespace, geometry, famfs_log.entry)
        # The same offset on two devices is two different units, not a cross-link.
        namespace.units.claim((fmt.Extent(offset=64 * MiB, length=2 * MiB, devindex=1),))
        assert namespace.units.first_taken((fmt.Extent(offset=64 * MiB, length=2 * MiB, devindex=2),)) is None
        assert namespace.units.first_taken((fmt.Extent(offset=64 * MiB, length=2 * MiB, devindex=1),)) == (1, 32)


def test_a_device_uuid_of_another_file_system_is_refused(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    primary, s1, _ = three
    stolen = superblock(s1).dev_uuid
    other = make_image(tmp_path / "other.img", "1g")
    famfsctl("add-device", "--device", other, "--size", "1g", "--dev-uuid", stolen, tmp_path / "impostor.img")
    rows = table(primary)
    resolved = devices.resolve(superblock(primary).fs_uuid, rows, [str(tmp_path / "impostor.img")], dev_root=tmp_path / "none")
    assert resolved[1].state == devices.REFUSED and "belongs to file system" in resolved[1].reason
    assert resolved[1].path is None and resolved[2].state == devices.MISSING
    # With the real one listed too, the real one is taken.
    resolved = devices.resolve(superblock(primary).fs_uuid, rows, [str(tmp_path / "impostor.img"), str(s1)],
                               dev_root=tmp_path / "none")
    assert (resolved[1].state, resolved[1].path) == (devices.FOUND, str(s1))


def table(primary: Path) -> list[devices.DeviceRow]:
    with Device(primary) as opened:
        famfs_log = FamfsLog(opened)
        added = [(n, e) for n, e in famfs_log.entries() if isinstance(e, fmt.AddDaxdevEntry)]
        return devices.logged_rows(famfs_log.superblock, str(primary), added)


def test_dcd_tags_through_a_fake_sysfs_tree(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    primary, s1, s2 = three
    sys_dax, dev_root = tmp_path / "sys" / "bus" / "dax" / "devices", tmp_path / "dev"
    for name, image, leaf in (("dax1.0", s1, "uuid"), ("dax2.0", s2, "tag")):
        (sys_dax / name).mkdir(parents=True)
        (sys_dax / name / leaf).write_text(f"{superblock(image).dev_uuid}\n")
    (sys_dax / "dax9.0").mkdir()
    (sys_dax / "dax9.0" / "uuid").write_text(f"{uuid.UUID(int=0)}\n")  # no tag: not a candidate by tag
    dev_root.mkdir()
    # Named by its tag only (not a dax* node the scan would find): the tag is what finds it.
    os.symlink(s1, dev_root / "dax1.0")
    os.symlink(s2, dev_root / "dax2.0")
    tags = devices.dcd_tags(sys_dax, dev_root)
    assert tags == {superblock(s1).dev_uuid: str(dev_root / "dax1.0"), superblock(s2).dev_uuid: str(dev_root / "dax2.0")}
    resolved = devices.resolve(superblock(primary).fs_uuid, table(primary), [], sys_dax=sys_dax, dev_root=dev_root)
    assert [(row.state, row.path) for row in resolved[1:]] == [(devices.FOUND, str(dev_root / "dax1.0")),
                                                                (devices.FOUND, str(dev_root / "dax2.0"))]


def test_a_client_serves_every_device_it_finds_and_eio_for_the_one_it_lacks(
        tmp_path: Path, three: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A client host with its own paths for the added devices, one of them absent at first: the
    files on it answer EIO (one log line naming its UUID), every other file is served through
    the mount and famfs.open; once the device appears it is served too."""
    primary, s1, s2 = three
    master = config(tmp_path / "master.toml", s1, s2)
    famfsctl("creat", "--config", master, "--device", primary, "-s", "5m", "--on-device", "1", "-r", "-S", "7", "one")
    famfsctl("creat", "--config", master, "--device", primary, "-s", "3m", "--on-device", "2", "-r", "-S", "8", "two")
    famfsctl("creat", "--config", master, "--device", primary, "-s", "64m", "-N", "3", "-B", "1", "-r", "-S", "9", "wide")
    famfsctl("creat", "--config", master, "--device", primary, "-s", "1m", "-r", "-S", "6", "zero")
    dev2 = str(superblock(s2).dev_uuid)
    here = tmp_path / "client"
    here.mkdir()
    os.rename(s1, here / "first.img")  # this host's own names; the second device is not here yet
    os.rename(s2, tmp_path / "later.img")
    client = config(tmp_path / "client.toml", here / "second.img", here / "first.img")
    monkeypatch.setenv(env.SYSTEM_UUID_FILE, str(client_uuid_file(tmp_path)))
    shadow = tmp_path / "shadow"
    with following(primary, shadow, "--config", client), Mount(shadow, primary, tmp_path / "mnt") as mount:
        table = devices.decode_table((shadow / ".agent" / "daxdevs.json").read_bytes())
        assert [(row.state, row.path) for row in table] == [
            (devices.FOUND, str(primary)), (devices.FOUND, str(here / "first.img")), (devices.MISSING, None)]
        files = mount.mountpoint
        assert sorted(os.listdir(files)) == [".meta", "one", "two", "wide", "zero"]  # listed, all of them
        for name, seed in (("one", 7), ("zero", 6)):
            assert prng.first_mismatch(seed, [(files / name).read_bytes()]) is None
            with famfs.open(files / name) as mapped:
                assert prng.first_mismatch(seed, [bytes(mapped.buffer)]) is None
        for name in ("two", "wide"):
            with pytest.raises(OSError) as refused:
                (files / name).read_bytes()
            assert refused.value.errno == errno.EIO
            with pytest.raises(OSError, match="device 2 is not available"):
                famfs.open(files / name)
        assert sum(dev2 in line and "device_unavailable" in line for line in mount.log().splitlines()) == 1
        os.rename(tmp_path / "later.img", here / "second.img")  # the device appears
        wait_for(lambda: devices.decode_table((shadow / ".agent" / "daxdevs.json").read_bytes())[2].state
                 == devices.FOUND, "the agent finds the second device", FOLLOW_WAIT_S)
        for name, seed in (("two", 8), ("wide", 9)):
            assert prng.first_mismatch(seed, [(files / name).read_bytes()]) is None
            with famfs.open(files / name) as mapped:
                assert prng.first_mismatch(seed, [bytes(mapped.buffer)]) is None


def test_the_agent_refuses_a_device_of_another_file_system(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    primary, s1, _ = three
    other = make_image(tmp_path / "other.img", "1g")
    famfsctl("add-device", "--device", other, "--size", "1g", "--dev-uuid", superblock(s1).dev_uuid,
             tmp_path / "impostor.img")
    shadow = tmp_path / "shadow"
    played = run_agent(primary, "--shadow", shadow, "--no-progress", "--config",
                       config(tmp_path / "c.toml", tmp_path / "impostor.img"), check=True)
    table = devices.decode_table((shadow / ".agent" / "daxdevs.json").read_bytes())
    assert table[1].state == devices.REFUSED and "belongs to file system" in table[1].reason
    assert "device_refused" in played.stderr and str(superblock(s1).dev_uuid) in played.stderr


def test_a_resumed_agent_keeps_each_device_s_units_and_owners(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    """A second one-shot play resumes from the cursor (no rebuild): the added devices' units and
    owner maps are loaded back, a later file on an added device is checked against them, and
    the mount serves files of every device."""
    primary, s1, s2 = three
    conf = config(tmp_path / "c.toml", s1, s2)
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "5m", "--on-device", "1", "-r", "-S", "7", "one")
    shadow = tmp_path / "shadow"
    run_agent(primary, "--shadow", shadow, "--no-progress", "--config", conf, check=True)
    assert {"owners", "owners.1", "owners.2"} <= set(os.listdir(shadow / ".agent"))
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "9m", "--on-device", "2", "-r", "-S", "8", "two")
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "40m", "-N", "2", "-B", "1", "-r", "-S", "9", "wide")
    resumed = run_agent(primary, "--shadow", shadow, "--no-progress", "--config", conf, "--log-level", "debug", check=True)
    assert "rebuild" not in resumed.stderr
    with Mount(shadow, primary, tmp_path / "mnt") as mount:
        for name, seed in (("one", 7), ("two", 8), ("wide", 9)):
            assert prng.first_mismatch(seed, [(mount.mountpoint / name).read_bytes()]) is None
    # A FILE entry over units device 2 already holds is rejected by the resumed agent.
    taken = next(e for e in entries(primary) if isinstance(e, fmt.FileEntry) and e.relpath == "two").extents
    append(primary, [fmt.FileEntry(relpath="thief", size=MiB, mode=0o644, uid=0, gid=0, extents=taken)])
    stolen = run_agent(primary, "--shadow", shadow, "--no-progress", "--config", conf)
    assert stolen.returncode != 0 and "of device 2 is already held" in stolen.stderr
    assert not (shadow / "root" / "thief").exists()


def test_interleaved_strips_alternate_devices_and_contiguous_takes_the_first_with_room() -> None:
    units = rules.Units(rules.Geometry(4 << 30, fmt.DEFAULT_LOG_LEN))
    units.add_device(rules.device_geometry(4 << 30, units.geometries[0]))
    params = writer.alloc.InterleaveParams(nbuckets=2, nstrips=4, chunk_size=2 * MiB)
    stripe = writer.alloc.allocate_interleaved(units, 64 * MiB, params, devices=(0, 1))
    assert isinstance(stripe, fmt.Stripe)
    assert [strip.devindex for strip in stripe.strips] == [0, 1, 0, 1]
    with pytest.raises(writer.alloc.AllocError, match="nstrips 5 must be 1..4"):
        writer.alloc.allocate_interleaved(units, 64 * MiB, writer.alloc.InterleaveParams(2, 5, 2 * MiB), devices=(0, 1))
    # Contiguous: device 0 first; once it has no run of that size, device 1; --on-device pins it.
    assert writer.alloc.allocate_contiguous(units, 5 * MiB, (0, 1)).devindex == 0
    assert writer.alloc.allocate_contiguous(units, 5 * MiB, (1,)) == fmt.Extent(offset=fmt.SECONDARY_DATA_START,
                                                                                 length=6 * MiB, devindex=1)
    units.claim((fmt.Extent(offset=0, length=4 << 30),))  # device 0 full
    assert writer.alloc.allocate_contiguous(units, 5 * MiB, (0, 1)).devindex == 1


def free_bytes(image: Path, device: int) -> int:
    with Device(image) as opened:
        famfs_log = FamfsLog(opened)
        return writer.load(famfs_log).units.device_free_units(device) * famfs_log.superblock.alloc_unit


def logged_files(image: Path) -> dict[str, fmt.FileEntry]:
    with Device(image) as opened:
        return {relpath: entry for relpath, (_, entry) in writer.load(FamfsLog(opened)).files.items()}


def file_entry(image: Path, relpath: str) -> fmt.FileEntry:
    return logged_files(image)[relpath]


def test_the_master_mount_places_files_on_an_added_device_and_reads_every_device(tmp_path: Path) -> None:
    """The master's mount (which logs the files written through it) finds added devices as every
    other program does (famfs.devices, from [host] devices and its agent's table): once the
    primary is full, a file copied in lands on device 1, and the master and a client, each with
    the device at a path of its own, read it back; so does a file famfsctl put there."""
    with Cluster(tmp_path / "cluster", size="1g", clients=1) as cluster:
        second = tmp_path / "second.img"
        for host in cluster.hosts:  # the same device under a name of each host's own
            host.second_device.symlink_to(second)
        cluster.ctl("add-device", "--size", "1g", str(second))
        cluster.ctl("creat", "-s", "3m", "--on-device", "1", "-r", "-S", "5", "byctl")
        cluster.ctl("creat", "-s", str(free_bytes(cluster.image, 0)), "filler")  # the primary is full now
        source = tmp_path / "source.bin"
        source.write_bytes(random.Random(3).randbytes(5 * MiB + 7))
        master, client = cluster.master, cluster.clients[0]
        master.run_inside(["cp", str(source), str(master.mountpoint / "viamount")])
        # Logged at the last close (FUSE's release, which the kernel sends after close(2) returned).
        wait_for(lambda: "viamount" in logged_files(cluster.image), "viamount in the log", FOLLOW_WAIT_S)
        assert [extent.devindex for extent in file_entry(cluster.image, "viamount").extents] == [1]
        assert (master.view("viamount")).read_bytes() == source.read_bytes()
        wait_for(lambda: client.view("viamount").exists(), "the client to list viamount", FOLLOW_WAIT_S)
        assert client.view("viamount").read_bytes() == source.read_bytes()
        for host in (master, client):
            host.run_inside([tool("famfsctl"), "verify", "-S", "5", str(host.mountpoint / "byctl")])
        assert "fsck: clean" in cluster.ctl("fsck").stdout


AGENT_SETTINGS = {"heartbeat_interval": 0.05, "serve_window": 1.0}
MASTER_SETTINGS = {"host_lease": 2.0, "reclaim_poll": 0.05}
RECLAIM_WAIT_S = 60.0  # bounds the wait for the coordinator on a loaded machine; nothing is timed


def test_reclaim_and_compaction_with_an_added_device(tmp_path: Path) -> None:
    """Files on device 1 and striped over both devices are deleted and reclaimed (famfsctl
    reclaimd: every host past the DELETE): their units on device 1 are free again and a new file
    takes them. Then famfsctl compact: the compacted log keeps the ADD_DAXDEV, fsck is clean with
    both devices listed, and the client (the device at a path of its own) serves every file, old
    and new, from both devices."""
    cluster = Cluster(tmp_path / "cluster", size="2g", clients=1)
    for host in cluster.hosts:
        host.add_settings("agent", AGENT_SETTINGS)
    cluster.master.add_settings("master", MASTER_SETTINGS)
    with cluster:
        second = tmp_path / "second.img"
        for host in cluster.hosts:
            host.second_device.symlink_to(second)
        cluster.ctl("add-device", "--size", "2g", str(second))
        made = {"gone1": ("-s", "9m", "--on-device", "1"), "keep1": ("-s", "5m", "--on-device", "1"),
                "gonewide": ("-s", "32m", "-N", "2", "-B", "1"), "keepwide": ("-s", "16m", "-N", "2", "-B", "1"),
                "keep0": ("-s", "3m", "--on-device", "0")}
        for seed, (name, how) in enumerate(made.items(), start=20):
            cluster.ctl("creat", *how, "-r", "-S", str(seed), name)
        seeds = {name: seed for seed, name in enumerate(made, start=20)}
        files = logged_files(cluster.image)
        assert {e.devindex for e in files["gonewide"].all_extents()} == {0, 1}
        free_before = free_bytes(cluster.image, 1)
        cluster.ctl("rm", "gone1", "gonewide")
        coordinator = cluster.master.spawn([tool("famfsctl"), "--config", str(cluster.master.config_file),
                                            "reclaimd", "--metrics-address", "", str(cluster.image)],
                                           cluster.master.home / "reclaimd.log")
        try:
            wait_for(lambda: any(isinstance(e, fmt.ReclaimEntry) for e in entries(cluster.image)),
                     "the coordinator to reclaim the deleted files", RECLAIM_WAIT_S)
        finally:
            stop_process(coordinator)
        freed = sum(e.length for name in ("gone1", "gonewide") for e in files[name].all_extents() if e.devindex == 1)
        assert free_bytes(cluster.image, 1) == free_before + freed
        cluster.ctl("creat", "-s", "9m", "--on-device", "1", "-r", "-S", "30", "reuse")  # first fit: gone1's units
        assert logged_files(cluster.image)["reuse"].extents == files["gone1"].extents
        seeds["reuse"] = 30

        cluster.ctl("compact")
        kept = entries(cluster.image)
        assert [e for e in kept if isinstance(e, fmt.AddDaxdevEntry)] == [
            fmt.AddDaxdevEntry(dev_size=2 << 30, dev_uuid=superblock(second).dev_uuid, dev_index=1)]
        assert not any(isinstance(e, fmt.DeleteEntry | fmt.ReclaimEntry) for e in kept)
        now = logged_files(cluster.image)
        assert {name: e.all_extents() for name, e in now.items()} == {
            name: e.all_extents() for name, e in {**files, "reuse": now["reuse"]}.items() if not name.startswith("gone")}
        checked = cluster.ctl("fsck").stdout
        assert "fsck: clean" in checked and "device 1 (secondary)" in checked
        cluster.ctl("creat", "-s", "4m", "--on-device", "1", "-r", "-S", "31", "after")  # a file after the compaction
        seeds["after"] = 31
        client = cluster.clients[0]
        for name in ("keep1", "keepwide", "keep0", "reuse", "after"):
            wait_for(lambda name=name: client.view(name).exists(), f"{name} on the client", FOLLOW_WAIT_S)
            for host in (cluster.master, client):
                host.run_inside([tool("famfsctl"), "verify", "-S", str(seeds[name]), str(host.mountpoint / name)])
        assert not client.view("gone1").exists() and not client.view("gonewide").exists()


def test_a_compacted_log_keeps_every_device_and_holds_on_added_devices(
        tmp_path: Path, three: tuple[Path, Path, Path], system_uuid_file: Path) -> None:
    """Compaction with two added devices: both ADD_DAXDEV entries kept, in order, before the files
    on them; a deleted, unreclaimed file on device 2 becomes a HOLD that keeps its units taken
    until a RECLAIM names it; fsck is clean and every device's free space is what it was."""
    primary, s1, s2 = three
    conf = config(tmp_path / "c.toml", s1, s2)
    for name, how in {"one": ("--on-device", "1"), "two": ("--on-device", "2"), "wide": ("-N", "3", "-B", "1"),
                      "held": ("--on-device", "2")}.items():
        famfsctl("creat", "--config", conf, "--device", primary, "-s", "6m", *how, name)
    famfsctl("rm", "--device", primary, "held")
    with Device(primary) as opened:
        famfs_log = FamfsLog(opened)
        before = writer.load(famfs_log)
        free = [before.units.device_free_units(n) for n in range(3)]
    famfsctl("compact", primary)
    kept = entries(primary)
    added = [n for n, e in enumerate(kept) if isinstance(e, fmt.AddDaxdevEntry)]
    assert [kept[n].dev_index for n in added] == [1, 2] and added == [0, 1]  # (they preceded every file)
    holds = [e for e in kept if isinstance(e, fmt.HoldEntry)]
    assert [{x.devindex for x in h.file.all_extents()} for h in holds] == [{2}]
    with Device(primary) as opened:
        after = writer.load(FamfsLog(opened))
        assert [after.units.device_free_units(n) for n in range(3)] == free
        assert fsck.check(opened).clean
    with writer.session(str(primary), system_uuid_file, device_paths=[str(s1), str(s2)]) as current:
        hold = next(index for index, deleted_by in current.namespace.deletions.items() if index == deleted_by)
        current.reclaim([(hold, hold)])
        assert current.namespace.units.device_free_units(2) == free[2] + 3
    assert "fsck: clean" in famfsctl("fsck", primary).stdout


def test_status_and_fsck_per_device_and_a_missing_or_refused_device(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    """status and fsck list each device: its space, its files, what deleted files hold there, and
    where this host found it; a device this host lacks (or refuses) is a warning naming its UUID
    and its files, not a problem of the log: fsck stays clean (exit 0)."""
    primary, s1, s2 = three
    conf = config(tmp_path / "c.toml", s1, s2)
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "6m", "--on-device", "1", "one")
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "4m", "--on-device", "2", "two")
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "4m", "-N", "2", "-B", "1", "--on-device", "1",
             "--on-device", "2", "wide")
    famfsctl("rm", "--device", primary, "two")
    uuids = [str(superblock(path).dev_uuid) for path in (primary, s1, s2)]
    for command in ("fsck", "status"):
        shown = famfsctl("--config", conf, command, primary).stdout
        assert f"device 0 (primary): uuid {uuids[0]}" in shown and f"0 files, 0 bytes held by deleted files; at {primary}" in shown
        assert f"device 1 (secondary): uuid {uuids[1]}" in shown and f"2 files, 0 bytes held by deleted files; at {s1}" in shown
        assert f"1 file, 4 MiB held by deleted files; at {s2}" in shown and "warning" not in shown
    os.rename(s2, tmp_path / "elsewhere.img")
    missing = famfsctl("--config", conf, "fsck", primary)
    assert missing.returncode == 0 and "fsck: clean" in missing.stdout
    assert "device 2 (secondary)" in missing.stdout and "MISSING on this host: no candidate path" in missing.stdout
    assert f"warning: device 2 ({uuids[2]}) is missing on this host: 1 file with extents on it" in missing.stdout
    assert "warning: device 2" in famfsctl("--config", conf, "status", primary).stdout
    # A device carrying device 2's UUID but of another file system, where this host looks: refused, named.
    other = make_image(tmp_path / "other.img", "1g")
    famfsctl("add-device", "--device", other, "--size", "3g", "--dev-uuid", uuids[2], tmp_path / "impostor.img")
    refused = famfsctl("--config", config(tmp_path / "r.toml", s1, tmp_path / "impostor.img"), "fsck", primary)
    assert refused.returncode == 0 and "REFUSED on this host:" in refused.stdout and "belongs to file system" in refused.stdout
    assert f"warning: device 2 ({uuids[2]}) is refused on this host" in refused.stdout


def test_fsck_notes_extents_past_the_primary_s_size(tmp_path: Path) -> None:
    """Upstream's fsck and allocator mark every extent in one bitmap of device 0's size, without a
    bound check (docs/devices.md): our fsck counts the extents on added devices that end past it."""
    primary = make_image(tmp_path / "p.img", "1g")
    famfsctl("add-device", "--device", primary, "--size", "3g", tmp_path / "big.img")
    conf = config(tmp_path / "c.toml", tmp_path / "big.img")
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "100m", "--on-device", "1", "inside")
    assert "past device 0's size" not in famfsctl("fsck", primary).stdout
    famfsctl("creat", "--config", conf, "--device", primary, "-s", "1500m", "--on-device", "1", "beyond")
    checked = famfsctl("fsck", primary)
    assert checked.returncode == 0 and "note: extents on added devices ending past device 0's size: 1;" in checked.stdout
