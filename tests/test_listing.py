"""Directory records (famfs.listing, docs/security.md "Listings"): what the agent writes, what the
mount lists from them, and that a planted, stale or cut record never changes what is served."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import famfs
from agent.listings import COMPACT_MIN, ListingWriter
from famfs import format as fmt
from famfs import listing, ownership
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.ownership import ListedFile
from famfs.shadowdir import AGENT_DIR, FILE_XATTR, LISTINGS_DIR, OWNERS_FILE
from fusefs import shadow_reader
from fusefs.devicecheck import Served
from fusefs.inodes import InodeTable
from tests.agent_util import AGENT, FOLLOW_WAIT_S, make_device, run_agent
from tests.agent_util import extent as agent_extent
from tests.agent_util import file_entry as agent_file
from tests.fuse_util import Mount, wait_for

MiB = 1 << 20


def records_of(shadow: Path) -> Path:
    return shadow / AGENT_DIR / LISTINGS_DIR


def record(shadow: Path, directory: str) -> dict[bytes, int]:
    return listing.read(os.fsencode(records_of(shadow)), os.fsencode(directory))


@contextmanager
def table_of(shadow: Path, image: Path) -> Iterator[InodeTable]:
    """The mount's inode table on `shadow`, checking against the device's log and owner map."""
    served = Served.of(FamfsLog(Device(str(image))), 1, str(shadow))
    try:
        yield InodeTable(os.fsencode(shadow / "root"), served.geometry, served.check)
    finally:
        served.check.close()  # the device is let go with `served` (its data path holds views of the map)


def listed_against_yaml(shadow: Path, image: Path) -> dict[str, bool]:
    """Relpath -> whether the listing came from the log without a parse (a record or the file's
    xattr), for every file; each listing equal to what its shadow YAML says (the stat the mount
    would serve if it parsed every file)."""
    from_log = {}
    with table_of(shadow, image) as table:
        for relpath, ino in list(table.by_path.items()):
            node = table.nodes[ino]
            if node.is_dir or relpath.startswith(shadow_reader.META_PREFIX):
                continue
            got = table.file_attributes(node)
            yaml = shadow_reader.load_file(table.shadow_root, relpath, table.geometry)
            assert got is not None, relpath
            assert (got.size, got.mode, got.uid, got.gid, got.capacity()) == \
                (yaml.size, yaml.mode, yaml.uid, yaml.gid, yaml.capacity()), relpath
            from_log[os.fsdecode(relpath)] = isinstance(got, ListedFile)
    return from_log


def listed_from_record(shadow: Path, image: Path, directory: bytes) -> dict[bytes, bool]:
    """Name -> whether the directory's record listed the file (before anything else is read)."""
    with table_of(shadow, image) as table:
        node = table.nodes[table.by_path[directory]]
        table.list_from_record(node)
        return {name: table.nodes[ino].listed is not None for name, ino in node.children.items()}


def test_a_record_is_read_up_to_a_cut_and_the_agent_repairs_and_compacts_it(tmp_path: Path) -> None:
    changes = [(b"a", 3), (b"b", 4), (b"a", None), (b"c", 9), (b"b", 7)]
    raw = listing.encode_all(changes)
    assert listing.decode(raw) == ({b"b": 7, b"c": 9}, len(raw))
    whole = [0]
    for name, index in changes:
        whole.append(whole[-1] + len(listing.encode(name, index)))
    for cut in range(len(raw)):  # a kill in the middle of an append: read up to the last whole record
        names, read = listing.decode(raw[:cut])
        assert read == max(n for n in whole if n <= cut)
        assert names == listing.decode(raw[:read])[0]
    damaged = bytearray(raw)
    damaged[whole[2] + 6] ^= 1  # a flipped bit in the third record: it and what follows are ignored
    assert listing.decode(bytes(damaged)) == ({b"a": 3, b"b": 4}, whole[2])

    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    writer = ListingWriter(agent_dir)
    writer.open()
    path = agent_dir / LISTINGS_DIR / listing.record_name(b"d")
    path.write_bytes(raw[:whole[3] + 5])  # cut short by a kill
    writer.added("d/e", 11)
    writer.flush()
    assert listing.decode(path.read_bytes()) == ({b"b": 4, b"e": 11}, path.stat().st_size)  # c was cut
    for n in range(20_000):  # churn: the record is rewritten whole when it doubles
        writer.added(f"d/f{n % 50}", n)
        writer.removed(f"d/f{(n + 25) % 50}")
        writer.flush()
    assert path.stat().st_size <= 2 * COMPACT_MIN
    assert len(listing.decode(path.read_bytes())[0]) == 2 + 25
    writer.dir_removed("d")
    assert not path.exists()


files_strategy = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 5 * MiB), st.sampled_from([0o644, 0o600, 0o4755, 0o640]),
                                    st.integers(0, 70_000), st.booleans()), min_size=1, max_size=16)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=files_strategy, later=files_strategy)
def test_listing_equals_the_shadow_yaml_for_every_file(tmp_path: Path, system_uuid_file: Path,
                                                       first: list[tuple[int, int, int, int, bool]],
                                                       later: list[tuple[int, int, int, int, bool]]) -> None:
    """A random tree (sizes, modes, owners, directories; files removed, names made again with
    other sizes), played first whole (a first play) and then on top (a resumed play): every
    file's listing equals its YAML's attributes, and every file is listed from the log."""
    where = Path(tempfile.mkdtemp(dir=tmp_path))
    image = make_device(where, system_uuid_file)
    shadow = where / "shadow"
    live: set[str] = set()
    for batch in (first, later):
        master = famfs.Master(image)
        for n, (directory, size, mode, uid, remove) in enumerate(batch):
            relpath = f"d{directory}/f{n}" if directory else f"f{n}"
            if directory:
                master.mkdir(f"d{directory}", parents=True)  # made already: fine
            try:
                master.remove(relpath)  # the name made again: a new entry, other extents
            except famfs.MasterError:
                pass
            with master.create(relpath, size, mode, uid, uid + 1) as new:
                new.commit()
            live.add(relpath)
            if remove:
                master.remove(relpath)
                live.discard(relpath)
        run_agent("--shadow", shadow, "--no-progress", image, check=True)
        from_log = listed_against_yaml(shadow, image)
        assert set(from_log) == live and all(from_log.values()), from_log
        for relpath in from_log:  # each named in its directory's record, as in its own xattr
            directory, _, name = relpath.rpartition("/")
            assert record(shadow, directory)[name.encode()] == int(os.getxattr(shadow / "root" / relpath, FILE_XATTR))


def _indexes(image: Path) -> dict[str, int]:
    """Relpath -> index of the last FILE entry naming it."""
    with Device(str(image)) as device:
        return {entry.relpath: index for index, entry in FamfsLog(device).entries() if isinstance(entry, fmt.FileEntry)}


def test_a_planted_or_stale_record_is_never_served(tmp_path: Path, system_uuid_file: Path) -> None:
    """Records naming another path's entry, a deleted file's, one past the log's end, a name's
    earlier entry (stale: the file made again since), and bytes that are no record: each name
    is listed from its own entry or its YAML, through the mount as in the table; a record lost
    whole (a kill before the append) lists every file from its xattr."""
    image = make_device(tmp_path, system_uuid_file)
    master = famfs.Master(image)
    master.mkdir("d")
    for relpath, size, mode in (("d/a", 1 * MiB, 0o600), ("d/b", 3 * MiB, 0o644), ("d/gone", 2 * MiB, 0o644),
                                ("d/again", 5 * MiB, 0o640)):
        with master.create(relpath, size, mode) as new:
            new.commit()
    old = _indexes(image)
    master.remove("d/gone", "d/again")
    with master.create("d/again", 7 * MiB, 0o604) as new:  # made again: a new entry, new units
        new.commit()
    run_agent("--shadow", shadow := tmp_path / "shadow", "--no-progress", image, check=True)
    now = _indexes(image)
    assert record(shadow, "d") == {b"a": now["d/a"], b"b": now["d/b"], b"again": now["d/again"]}
    assert all(listed_against_yaml(shadow, image).values())
    assert listed_from_record(shadow, image, b"d") == {b"a": True, b"b": True, b"again": True}
    with pytest.MonkeyPatch.context() as patch:  # files far apart: the owner map read file by file
        patch.setattr(ownership, "_SPAN_UNITS", 0)
        patch.setattr(ownership, "_SPAN_PER_FILE", 0)
        assert listed_from_record(shadow, image, b"d") == {b"a": True, b"b": True, b"again": True}
    planted = [(b"a", now["d/b"]), (b"b", old["d/gone"]), (b"again", old["d/again"]), (b"gone", old["d/gone"])]
    listing.append(os.fsencode(records_of(shadow)), b"d", planted)
    with open(records_of(shadow) / listing.record_name(b"d"), "ab") as raw:
        raw.write(b"\x00" * 7 + b"not a record")
    assert listed_from_record(shadow, image, b"d") == {b"a": False, b"b": False, b"again": False}  # nothing taken
    assert listed_against_yaml(shadow, image) == {"d/a": True, "d/b": True, "d/again": True}  # from the xattrs
    with Mount(shadow, image, tmp_path / "mnt") as mount:
        got = {entry.name: entry.stat() for entry in os.scandir(mount.mountpoint / "d")}
        assert {name: (st.st_size, stat.S_IMODE(st.st_mode)) for name, st in got.items()} == \
            {"a": (MiB, 0o600), "b": (3 * MiB, 0o644), "again": (7 * MiB, 0o604)}
    (records_of(shadow) / listing.record_name(b"d")).unlink()  # lost: a kill before the batch's append
    assert listed_against_yaml(shadow, image) == {"d/a": True, "d/b": True, "d/again": True}


def test_records_after_kill_9_of_the_agent_mid_update(tmp_path: Path, system_uuid_file: Path) -> None:
    """A following agent killed (SIGKILL) at random moments while files are made and removed in
    bursts: each time, every record reads up to its last whole record and every file's listing
    equals its YAML; a record cut in the middle of a record (a kill inside an append) is repaired
    by the next agent, which goes on appending to it."""
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    master = famfs.Master(image)
    for directory in ("d0", "d1", "d2"):
        master.mkdir(directory)
    rng = random.Random(23)
    made: list[str] = []
    for round_ in range(4):
        agent = subprocess.Popen([*AGENT, "--follow", "--shadow", str(shadow), str(image)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killer = threading.Timer(rng.uniform(0.05, 0.4), agent.send_signal, (signal.SIGKILL,))
        try:
            for burst in range(30):
                relpath = f"d{rng.randrange(3)}/r{round_}b{burst}"
                with master.create(relpath, rng.randrange(1, 3 * MiB), 0o644) as new:
                    new.commit()
                made.append(relpath)
                if burst == 0:  # the agent has played up to here (a first play is over): kill it while it follows
                    wait_for(lambda: (shadow / "root" / relpath).exists(), "the agent plays", FOLLOW_WAIT_S)
                    killer.start()
                if len(made) > 5 and rng.random() < 0.4:
                    master.remove(made.pop(rng.randrange(len(made))))
        finally:
            if killer.is_alive():
                killer.join()  # it kills the agent
            if agent.poll() is None:
                agent.kill()
            agent.wait(timeout=FOLLOW_WAIT_S)
        for key in os.listdir(records_of(shadow)):
            raw = (records_of(shadow) / key).read_bytes()
            assert listing.decode(raw)[1] <= len(raw)
        listed_against_yaml(shadow, image)
    cut = records_of(shadow) / listing.record_name(b"d1")
    whole = cut.read_bytes()
    cut.write_bytes(whole[:-3])  # the last record cut short
    listed_against_yaml(shadow, image)
    with master.create("d1/after", MiB, 0o644) as new:
        new.commit()
    run_agent("--shadow", shadow, "--no-progress", image, check=True)
    raw = cut.read_bytes()
    assert listing.decode(raw)[1] == len(raw)  # repaired, then appended to
    from_log = listed_against_yaml(shadow, image)
    assert set(from_log) == set(made) | {"d1/after"} and all(from_log.values())
    assert b"after" in record(shadow, "d1")


def test_runs_checked_column_by_column_list_what_the_rules_list_file_by_file(tmp_path: Path,
                                                                             system_uuid_file: Path) -> None:
    """ShadowCheck.listed_many checks a run of files with consecutive log entries column by
    column (every slot's field at once) and, on any doubt, file by file. For the records the
    agent wrote and for mutated ones (another file's entry, a moved or stale one, a deleted
    file's, a SETATTR's, one past the log's end, a file of two extents, runs cut and shuffled),
    what it lists equals listed() of each file on its own, the one rule book."""
    image = make_device(tmp_path, system_uuid_file)
    entries: list[fmt.Entry] = [fmt.MkdirEntry("d", 0o755, 0, 0), fmt.MkdirEntry("e", 0o755, 0, 0)]
    entries += [agent_file("d/f%d" % n, n, size=1000 + n, mode=0o600 + n % 64, uid=n, gid=2 * n) for n in range(40)]
    entries += [agent_file("e/g%d" % n, 100 + n) for n in range(20)]
    two = fmt.FileEntry(relpath="e/two", size=3 * MiB, mode=0o640, uid=1, gid=2,
                        extents=(*agent_extent(200), *agent_extent(300, 2)))
    with Device(str(image), writable=True) as device, device.exclusive():
        famfs_log = FamfsLog(device)
        famfs_log.append([*entries[:55], two, *entries[55:]])
        made = {entry.relpath: index for index, entry in famfs_log.entries() if isinstance(entry, fmt.FileEntry)}
        famfs_log.append([fmt.SetattrEntry("d/f5", made["d/f5"], 0o604, 7, 8), fmt.DeleteEntry("d/f7", made["d/f7"])])
        end = famfs_log.next_index()
    run_agent("--shadow", shadow := tmp_path / "shadow", "--no-progress", image, check=True)
    records = {prefix: list(record(shadow, prefix[:-1].decode()).items()) for prefix in (b"d/", b"e/")}
    assert len(records[b"d/"]) == 39 and records[b"d/"][5] == (b"f5", end - 2)  # f5's SETATTR, f7 gone
    stale = [(b"f5", made["d/f5"]), (b"f7", made["d/f7"]), (b"f6", made["d/f8"]), (b"f9", end), (b"f9", -1)]
    chooser = random.Random(23)
    whole_runs: list[int] = []  # the length of each run the columns listed (not left to the files)
    column_by_column = ownership.ShadowCheck._run_listings

    def counted(self: ownership.ShadowCheck, *args: object) -> list[ListedFile] | None:
        run = column_by_column(self, *args)  # type: ignore[arg-type]
        whole_runs.extend([len(run)] if run is not None else [])
        return run

    with Device(str(image)) as device, pytest.MonkeyPatch.context() as patch:
        patch.setattr(ownership.ShadowCheck, "_run_listings", counted)
        check = ownership.ShadowCheck(FamfsLog(device), shadow / AGENT_DIR / OWNERS_FILE)
        try:
            # Each file's FILE entry, one run of 40: f5's was changed by a SETATTR since (the owner
            # map names that), f7's deleted (its units held): the owner map refuses the run whole.
            logged = [(b"f%d" % n, made["d/f%d" % n]) for n in range(40)]
            assert check.listed_many(iter(logged), b"d/") == [check.listed(b"d/" + name, index) for name, index in logged]
            assert [n for n, (name, index) in enumerate(logged) if check.listed(b"d/" + name, index) is None] == [5, 7]
            for round_ in range(300):
                prefix = chooser.choice([b"d/", b"e/"]) if round_ else b"d/"
                items = list(records[prefix])
                if round_:  # the first round: the records as written
                    start = chooser.randrange(len(items))
                    items = items[start:start + chooser.randrange(1, 40)]
                    for _ in range(chooser.randrange(4)):
                        at = chooser.randrange(len(items))
                        mutation = chooser.randrange(5)
                        if mutation == 4:  # another name, the same entry: a path differs inside a run
                            items[at] = (chooser.choice(records[prefix])[0], items[at][1])
                        elif mutation == 0:
                            items.insert(at, chooser.choice(stale))
                        elif mutation == 1:
                            items[at] = (items[at][0], items[at][1] + chooser.choice([-1, 1]))
                        elif mutation == 2 and len(items) > 1:
                            other = chooser.randrange(len(items))
                            items[at], items[other] = items[other], items[at]
                        else:
                            items.append(items.pop(at))
                expected = [check.listed(prefix + name, index) for name, index in items]
                assert check.listed_many(iter(items), prefix) == expected, (prefix, items)
                if not round_ and prefix == b"d/":
                    assert expected.count(None) == 0 and expected[5] == ListedFile(1005, 0o604, 7, 8, fmt.ALLOC_UNIT)
                    assert whole_runs == [32]  # f8..f39; f0..f4 too few, f5 (its SETATTR) and f6 alone
            # Slots past the log's end copied from f8..f15's and an owner map naming them (stale
            # or forged): nothing past the end is listed, in a run or not.
            slot = check.famfs_log.log_base + fmt.LOG_HEADER.size
            owners = os.open(shadow / AGENT_DIR / OWNERS_FILE, os.O_WRONLY)
            with open(image, "r+b") as raw:
                for n in range(8):
                    raw.seek(slot + made["d/f%d" % (8 + n)] * fmt.ENTRY_SIZE)
                    copied = raw.read(fmt.ENTRY_SIZE)
                    raw.seek(slot + (end + n) * fmt.ENTRY_SIZE)
                    raw.write(copied)
                    unit = agent_extent(8 + n)[0].offset // fmt.ALLOC_UNIT
                    os.pwrite(owners, (end + n + 1).to_bytes(4, "little"), ownership.HEADER.size + 4 * unit)
            os.close(owners)
            past = [(b"f%d" % (8 + n), end + n) for n in range(8)]
            assert check.listed_many(iter(past), b"d/") == [None] * 8
        finally:
            check.close()
    assert len(whole_runs) > 50  # most rounds had a run the columns listed whole
