"""Log compaction (famfs/master/compact.py, docs/reclaim.md "Log compaction"): the compacted log
holds exactly the live namespace, and a kill at any step leaves a device that our readers read as
the old namespace or the new one, and upstream's logplay as one of the two or not at all: never a
mix. The next master session finishes a committed compaction."""

from __future__ import annotations

import dataclasses
import struct
import uuid
from typing import Any
from pathlib import Path

import pytest

from famfs import Master
from famfs import format as fmt
from famfs.compaction import CompactionState, read_record
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import compact, fsck, writer
from famfs.master.writer import load
from tests.agent_util import append, run_agent, snapshot
from tests.famfsctl_util import famfsctl, make_image, sparse_copy

MiB = 1 << 20


class Killed(Exception):
    """Stands for kill -9: nothing after the step runs."""


def live_view(image: Path) -> tuple[dict[str, tuple], set[str], int]:
    """What our readers see: files (path -> size, mode, uid, gid, extents), directories, units taken."""
    with Device(image) as device:
        namespace = load(FamfsLog(device))
    files = {path: (e.size, e.mode, e.uid, e.gid, e.all_extents()) for path, (_, e) in namespace.files.items()}
    return files, set(namespace.dirs) - {""}, namespace.units.used_units


def upstream_logplay(image: Path) -> set[str] | None:
    """Upstream's logplay (docs/format.md §3.2) reading the log at 2 MiB: None if it refuses the
    header (bad magic or CRC), else the paths it shows (first wins; types it does not know skipped;
    a bad slot ends the replay)."""
    raw = image.read_bytes()[:fmt.LOG_OFFSET + 16 * MiB]
    base = fmt.LOG_OFFSET
    magic, _, _, crc, _, next_index = fmt.LOG_HEADER.unpack_from(raw, base)
    if magic != fmt.LOG_MAGIC or crc != fmt.crc32(raw[base:base + fmt.LOG_HEADER_CRC_SPAN]):
        return None
    shown: set[str] = set()
    for index in range(next_index):
        slot = raw[base + fmt.entry_offset(index):base + fmt.entry_offset(index + 1)]
        seqnum, stored = fmt.SLOT_SEAL.unpack_from(slot)
        if seqnum != index or stored != fmt.crc32(slot[:fmt.ENTRY_CRC_SPAN]):
            break
        kind = struct.unpack_from("<I", slot, 8)[0]
        if kind in (fmt.EntryType.FILE, fmt.EntryType.MKDIR):
            shown.add(fmt.raw_relpath(slot).decode())
    return shown


def churned_image(tmp_path: Path, system_uuid_file: Path) -> Path:
    """A log with live and deleted files, removed directories, a path used twice, and a file's and
    a directory's mode and owner changed (SETATTR)."""
    image = make_image(tmp_path / "dev.img", "2g")
    master = Master(str(image), system_uuid_file=system_uuid_file)
    with master.batch():
        master.mkdir("keep/sub", parents=True)
        master.mkdir("gone")
        for n in range(30):
            new = master.create(f"keep/f{n}", MiB + n, mode=0o600 + n % 8, uid=n, gid=2 * n)
            new.buffer[:8] = n.to_bytes(8, "little")
        master.create("gone/tmp", 3 * MiB)
        master.create("keep/sub/again", MiB)
    master.remove(*(f"keep/f{n}" for n in range(0, 30, 3)), "gone/tmp", "keep/sub/again")
    with writer.session(str(image), system_uuid_file) as current:
        current.rmdir("gone")
        current.setattr("keep/f2", writer.Ownership(0o640, 7, 8))
        current.setattr("keep/f2", writer.Ownership(0o4750, 7, 9))
        current.setattr("keep/sub", writer.Ownership(0o2770, 0, 5))
    master.create("keep/sub/again", 2 * MiB).commit()  # the path again, on other units
    return image


def test_the_compacted_log_holds_exactly_the_live_namespace(tmp_path: Path, system_uuid_file: Path) -> None:
    image = churned_image(tmp_path, system_uuid_file)
    before = live_view(image)
    entries_before = len(list(FamfsLog(Device(image)).entries()))
    done = famfsctl("compact", image)
    assert "log compacted to epoch 1" in done.stdout
    after = live_view(image)
    assert after == before  # same files at the same extents, same directories, same units taken (held too)
    with Device(image) as device:
        famfs_log = FamfsLog(device)
        assert famfs_log.location.epoch == 1 and not famfs_log.location.staged
        kept = [entry for _, entry in famfs_log.entries()]
    assert len(kept) < entries_before
    holds = [entry for entry in kept if isinstance(entry, fmt.HoldEntry)]
    assert len(holds) == 12  # the deleted files' units stay taken until reclaimed
    assert not any(isinstance(entry, fmt.DeleteEntry | fmt.RmdirEntry | fmt.SetattrEntry) for entry in kept)
    assert fmt.MkdirEntry("keep/sub", 0o2770, 0, 5) in kept  # as SETATTRs left them
    assert [(e.mode, e.uid, e.gid) for e in kept if isinstance(e, fmt.FileEntry) and e.relpath == "keep/f2"] == [
        (0o4750, 7, 9)]
    assert upstream_logplay(image) == set(before[0]) | before[1]  # upstream shows the live namespace
    with Device(image) as device:
        assert fsck.check(device).clean
    # The file system goes on: a new file, a delete, a second compaction.
    master = Master(str(image), system_uuid_file=system_uuid_file)
    master.create("keep/new", MiB).commit()
    master.remove("keep/f1")
    famfsctl("compact", image)
    files, dirs, _ = live_view(image)
    assert "keep/new" in files and "keep/f1" not in files and "gone" not in dirs
    with Device(image) as device:
        assert FamfsLog(device).location.epoch == 2


@pytest.mark.parametrize("stop_after", compact.STEPS)
def test_a_kill_at_any_step_leaves_the_old_or_the_new_log_never_a_mix(
        tmp_path: Path, system_uuid_file: Path, stop_after: str) -> None:
    image = churned_image(tmp_path, system_uuid_file)
    old_view, old_upstream = live_view(image), upstream_logplay(image)
    reference = sparse_copy(image, tmp_path / "reference.img")
    famfsctl("compact", reference)
    new_upstream = upstream_logplay(reference)

    def step(name: str) -> None:
        if name == stop_after:
            raise Killed(name)

    with pytest.raises(Killed), writer.session(str(image), system_uuid_file) as current:
        current.compact(step)

    committed = compact.STEPS.index(stop_after) >= compact.STEPS.index("committed")
    with Device(image) as device:
        record = read_record(device.map)
        famfs_log = FamfsLog(device)
        assert famfs_log.location.staged == (committed and stop_after != "done")
        assert record.state == (CompactionState.DONE if stop_after == "done" else
                                CompactionState.COPYING if committed else CompactionState.NONE)
    assert live_view(image) == old_view  # the same namespace either way: the compacted log is its image
    assert upstream_logplay(image) in (old_upstream, new_upstream, None)

    with writer.session(str(image), system_uuid_file) as current:  # the next master session rolls forward
        assert current.log.location.epoch == (1 if committed else 0)
    assert live_view(image) == old_view
    assert upstream_logplay(image) == (new_upstream if committed else old_upstream)
    with Device(image) as device:
        assert fsck.check(device).clean
        assert read_record(device.map).state != CompactionState.COPYING


def test_a_compaction_needs_room_for_its_staging_copy(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img", "1g")
    master = Master(str(image), system_uuid_file=system_uuid_file)
    with master.batch():  # every free unit taken, 2 MiB files

        n = 0
        while True:
            try:
                master.create(f"f{n}", 2 * MiB)
            except writer.MasterError:
                break
            n += 1
    assert n > 400
    failed = famfsctl("compact", image, check=False)
    assert failed.returncode == 1 and "no free run" in failed.stderr and "Traceback" not in failed.stderr
    with Device(image) as device:
        assert FamfsLog(device).location.epoch == 0 and fsck.check(device).clean


def test_an_agent_plays_a_compacted_log_into_the_same_tree(tmp_path: Path, system_uuid_file: Path) -> None:
    image = churned_image(tmp_path, system_uuid_file)
    before = sparse_copy(image, tmp_path / "before.img")
    famfsctl("compact", image)
    trees = []
    for device, shadow in ((before, tmp_path / "shadow-before"), (image, tmp_path / "shadow-after")):
        played = run_agent("--shadow", shadow, device)
        assert played.returncode == 0, played.stderr
        trees.append({path: content for path, content in snapshot(shadow / "root").items()
                      if not path.startswith(".meta")})
    assert trees[0] == trees[1] and len(trees[0]) > 20


def test_kill_9_of_a_compacting_master_at_random_instants(tmp_path: Path, system_uuid_file: Path) -> None:
    """Real kills: `famfsctl compact` killed with SIGKILL at random instants, a dozen times. After
    each kill our readers see the live namespace, upstream's logplay sees it or refuses; the next
    master session (the next compact) finishes what was committed; fsck is clean at the end."""
    import random  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    image = churned_image(tmp_path, system_uuid_file)
    view = live_view(image)
    shown, before = set(view[0]) | view[1], upstream_logplay(image)  # before: deleted files too (§3.2)
    rng = random.Random(7)
    for _ in range(12):
        compacting = subprocess.Popen([sys.executable, "-m", "famfs.master.famfsctl", "compact", str(image)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.6))  # interpreter start-up is most of it: kills land in every step
        compacting.send_signal(signal.SIGKILL)
        compacting.wait(timeout=60)
        assert live_view(image) == view
        assert upstream_logplay(image) in (before, shown, None)
    famfsctl("compact", image)
    assert live_view(image) == view and upstream_logplay(image) == shown
    with Device(image) as device:
        assert fsck.check(device).clean and read_record(device.map).state == CompactionState.DONE


def test_a_hold_is_reclaimed_by_a_reclaim_naming_it_twice(tmp_path: Path, system_uuid_file: Path) -> None:
    """After a compaction the deleted files not yet reclaimed are HOLD entries; a RECLAIM naming
    (h, h) frees their units, one naming a live FILE twice is refused."""
    image = churned_image(tmp_path, system_uuid_file)
    famfsctl("compact", image)
    with writer.session(str(image), system_uuid_file) as current:
        holds = sorted(index for index, deleted_by in current.namespace.deletions.items() if index == deleted_by)
        live = next(iter(current.namespace.files.values()))[0]
        free_before = current.namespace.units.free_units
        with pytest.raises(writer.MasterError, match="reclaim_target_deleted"):
            current.reclaim([(live, live)])
        current.reclaim([(index, index) for index in holds])
        assert current.namespace.units.free_units > free_before and not current.namespace.deleted
    with Device(image) as device:
        assert fsck.check(device).clean


def test_fsck_checks_again_when_a_compaction_moved_the_log_under_it(
        tmp_path: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsck reads without the lock: a compaction that replaced the log while it read would have
    shown it a mix of two logs (bad entries, namespace errors); it checks the new log instead."""
    image = churned_image(tmp_path, system_uuid_file)
    real_check = fsck._check_once
    checks: list[int] = []

    def check_then_compact(device: Device) -> tuple[fsck.Report, object]:
        found = real_check(device)
        checks.append(found[0].header.next_index if found[0].header else -1)
        if len(checks) == 1:
            famfsctl("compact", image)  # as if it ran while the check read
        return found

    monkeypatch.setattr(fsck, "_check_once", check_then_compact)
    with Device(image) as device:
        report = fsck.check(device)
    assert report.clean and len(checks) == 2 and checks[1] < checks[0], checks  # the second one read the new log


def upstream_mkfs_over(image: Path) -> None:
    """What upstream's `mkfs.famfs -f` writes (docs/format.md §1.2, §1.3): a new superblock struct
    (new UUIDs) and a fresh, zeroed log; the rest of the superblock region is left as found."""
    with Device(image, writable=True) as device:
        old = fmt.Superblock.unpack(device.read(0, fmt.SUPERBLOCK.size))
        device.write(fmt.LOG_OFFSET, bytes(old.log_len))
        device.write(fmt.LOG_OFFSET, fmt.LogHeader.fresh(old.log_len).pack())
        device.write(0, dataclasses.replace(old, fs_uuid=uuid.uuid4(), dev_uuid=uuid.uuid4()).pack())


def test_a_record_of_an_earlier_file_system_is_no_record(tmp_path: Path, system_uuid_file: Path) -> None:
    """A compaction killed after its commit, then upstream's mkfs over the device: the record it
    left COPYING belongs to the file system that is gone. Our readers read the new, empty log (not
    the old staging copy) and the next master session does not copy the old log over it."""
    image = churned_image(tmp_path, system_uuid_file)

    def step(name: str) -> None:
        if name == "committed":
            raise Killed(name)

    with pytest.raises(Killed), writer.session(str(image), system_uuid_file) as current:
        current.compact(step)
    upstream_mkfs_over(image)
    assert upstream_logplay(image) == set()
    assert live_view(image)[:2] == ({}, set())
    with writer.session(str(image), system_uuid_file) as current:
        assert current.log.location.epoch == 0
        current.mkdir("new", writer.Ownership(0o755, 0, 0))
    assert live_view(image)[:2] == ({}, {"new"}) and upstream_logplay(image) == {"new"}
    with Device(image) as device:
        assert fsck.check(device).clean
    famfsctl("compact", image)  # a compaction of the new file system binds a record to it
    assert live_view(image)[:2] == ({}, {"new"}) and upstream_logplay(image) == {"new"}


def test_fsck_reads_no_slot_again_after_a_compaction_moved_the_log(
        tmp_path: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsck describes a cross-link with the entries its replay read, not by reading their slots
    again: a compaction between the replay and the description left those slots zeroed or
    holding other entries, and fsck died on them ("log entry N: seqnum 0 != index N", found by a
    stress of fsck against compactions; make churn counted it as an unclean checkpoint)."""
    image = churned_image(tmp_path, system_uuid_file)
    with Device(image) as device:
        famfs_log = FamfsLog(device)
        victim = next(entry for _, entry in famfs_log.entries() if isinstance(entry, fmt.FileEntry))
    append(image, [victim._replace(relpath="thief")])  # shares every unit: left out
    real_replay = fsck.rules.replay
    replays: list[int] = []

    def replay_then_compact(*args: Any, **kwargs: Any) -> Any:
        namespace = real_replay(*args, **kwargs)
        replays.append(1)
        if len(replays) == 1:
            famfsctl("compact", image)  # as if it ran between the replay and the report
        return namespace

    monkeypatch.setattr(fsck.rules, "replay", replay_then_compact)
    with Device(image) as device:
        report = fsck.check(device)
    assert len(replays) == 2, replays  # the log moved: checked again, on the new log
    assert report.clean, report.render()
