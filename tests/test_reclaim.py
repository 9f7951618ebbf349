"""Reclaim (docs/reclaim.md): the rule book's RECLAIM and FENCE, the writer's appends, the units
they free, and the coordinator's verdict against a fake clock, case by case of the safety
argument; a property test that the writer, fsck, statfs's count and a replay agree on random
logs with RECLAIMs."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from famfs import format as fmt
from famfs import hosts, rules
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.hosts import DamagedSlot, HostRecord, HostState
from famfs.master import alloc, fsck, writer
from famfs.master.mkfs import create_image, mkfs
from famfs.master.reclaim import LogView, Observations, Policy, decide
from fusefs.capacity import CapacityCache
from tests.agent_util import append_raw, make_device

OWNER = writer.Ownership(0o644, 0, 0)
AU = fmt.ALLOC_UNIT
HOST_A = uuid.UUID(int=0xA)
HOST_B = uuid.UUID(int=0xB)


def replayed(image: Path) -> tuple[rules.Namespace, list[rules.Problem]]:
    problems: list[rules.Problem] = []
    with Device(image) as device:
        return rules.replay(FamfsLog(device), problems.append), problems


def made(image: Path, uuid_file: Path, names: list[str], size: int = AU) -> dict[str, tuple[int, int]]:
    """Create and delete each name; name -> (FILE index, DELETE index)."""
    out = {}
    with writer.session(str(image), uuid_file) as session:
        for name in names:
            created = session.create(name, size, OWNER)
            assert created.index is not None
            out[name] = (created.index, session.remove(name))
    return out


# --- the rule book ---------------------------------------------------------------------------------


def test_a_reclaim_frees_the_units_and_the_next_file_gets_them(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    pairs = made(image, system_uuid_file, ["a", "b"])
    with writer.session(str(image), system_uuid_file) as session:
        first_free = session.namespace.units.find_free(1)
        session.reclaim([pairs["a"]])
        assert session.namespace.units.find_free(1) < first_free  # a's unit, at the start of the data area
        again = session.create("c", AU, OWNER)
    namespace, problems = replayed(image)
    assert problems == []
    assert again.entry.extents == namespace.reclaimed[pairs["a"][0]].extents
    assert set(namespace.deleted) == {pairs["b"][0]} and namespace.deleted_by(pairs["b"][0]) == pairs["b"][1]
    report = fsck.check(Device(image))
    assert report.clean and report.reclaimed_bytes == AU and report.deleted_bytes == AU, report.render()


@pytest.mark.parametrize(("targets", "rule"), [
    (lambda p: [p["a"], p["a"]], "reclaim_targets_distinct"),
    (lambda p: [(p["a"][0], p["a"][0])], "reclaim_target_deleted"),  # a FILE twice: only a HOLD is its own DELETE
    (lambda p: [(p["a"][0], 10_000)], "reclaim_targets_earlier"),
    (lambda p: [(p["a"][0], p["b"][1])], "reclaim_target_deleted"),  # another file's DELETE
    (lambda p: [p["live"]], "reclaim_target_deleted"),  # a live file (and a MKDIR)
    (lambda p: [(0, p["a"][1])], "reclaim_target_deleted"),  # not a file at all (the MKDIR)
])
def test_the_writer_refuses_and_fsck_lists_a_bad_reclaim(tmp_path: Path, system_uuid_file: Path, targets: object,
                                                         rule: str) -> None:
    image = make_device(tmp_path, system_uuid_file)
    with writer.session(str(image), system_uuid_file) as session:
        session.mkdir("d", writer.Ownership(0o755, 0, 0))
    pairs = made(image, system_uuid_file, ["a", "b"])
    with writer.session(str(image), system_uuid_file) as session:
        live = session.create("live", AU, OWNER).index
        later = session.mkdir("e", writer.Ownership(0o755, 0, 0))[0]
    assert live is not None
    pairs["live"] = (live, later)
    pairs_for = targets(pairs)  # type: ignore[operator]
    with writer.session(str(image), system_uuid_file) as session, pytest.raises(writer.MasterError, match=rule):
        session.reclaim(pairs_for)
    with Device(image) as device:
        index = FamfsLog(device).next_index()
    append_raw(image, [fmt.encode_entry(fmt.ReclaimEntry(tuple(pairs_for)), index)])
    report = fsck.check(Device(image))
    assert f"rule {rule}" in report.render() and report.problems == 1
    namespace, _ = replayed(image)
    assert namespace.reclaimed == {}  # left out: nothing freed


def test_a_file_is_reclaimed_once_and_a_rejected_delete_never_frees_it(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    pairs = made(image, system_uuid_file, ["a"])
    file_index, _ = pairs["a"]
    with Device(image) as device:
        stray = FamfsLog(device).next_index()
    append_raw(image, [fmt.encode_entry(fmt.DeleteEntry("a", file_index), stray)])  # rejected: not live
    with writer.session(str(image), system_uuid_file) as session:
        with pytest.raises(writer.MasterError, match=f"which DELETE {pairs['a'][1]} deleted"):
            session.reclaim([(file_index, stray)])
        session.reclaim([pairs["a"]])
        with pytest.raises(writer.MasterError, match="already reclaimed"):
            session.reclaim([pairs["a"]])


def test_reclaims_go_32_files_an_entry(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    pairs = made(image, system_uuid_file, [f"f{n}" for n in range(40)])
    with writer.session(str(image), system_uuid_file) as session:
        first, second = session.reclaim(list(pairs.values()))
    with Device(image) as device:
        famfs_log = FamfsLog(device)
        sizes = [len(entry.targets) for index in (first, second)
                 if isinstance(entry := famfs_log.entry(index), fmt.ReclaimEntry)]
    assert sizes == [32, 8]


def test_fence_rules_and_a_repeat_changes_nothing(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    fence = fmt.FenceEntry(HOST_A, 5, 3, fmt.FenceReason.OPERATOR, heartbeat=9, applied=1)
    with writer.session(str(image), system_uuid_file) as session:
        index = session.fence(fence)
        assert index is not None and session.fence(fence) is None  # the writer does not log a repeat
        for bad, why in ((fmt.FenceEntry(HOST_A, 0, 3, fmt.FenceReason.OPERATOR, 0, 0), "incarnation 0"),
                         (fmt.FenceEntry(uuid.UUID(int=0), 4, 3, fmt.FenceReason.OPERATOR, 0, 0), "nil system UUID"),
                         (fmt.FenceEntry(HOST_A, 4, fmt.HOST_SLOTS, fmt.FenceReason.OPERATOR, 0, 0), "outside")):
            with pytest.raises(writer.MasterError, match=why):
                session.fence(bad)
        damaged = fmt.FenceEntry(uuid.UUID(int=0), 0, 7, fmt.FenceReason.RECORD_LOST, heartbeat=1234, applied=0)
        assert session.fence(damaged) is not None
    append_raw(image, [fmt.encode_entry(fence, index + 2)])  # a repeat logged anyway: valid, no effect
    namespace, problems = replayed(image)
    assert problems == []
    assert namespace.fenced == {(HOST_A, 5): index} and namespace.fenced_damage == {(7, 1234): index + 1}


# --- the property: the writer, fsck, statfs and a replay agree ----------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # creat | rm | reclaim | raw_reclaim
    name: str = "a"
    number: int = 1  # creat: units; raw_reclaim: which (FILE, DELETE) guess


OPS = st.one_of(
    st.builds(Op, st.just("creat"), st.sampled_from("abc"), st.integers(1, 3)),
    st.builds(Op, st.just("rm"), st.sampled_from("abc")),
    st.builds(Op, st.just("reclaim"), st.just(""), st.integers(0, 3)),
    st.builds(Op, st.just("raw_reclaim"), st.just(""), st.integers(0, 40)),
)


@settings(max_examples=int(os.environ.get("FAMFS_RULEBOOK_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=14))
def test_writer_fsck_statfs_and_replay_agree_with_reclaims(tmp_path_factory: pytest.TempPathFactory,
                                                           ops: list[Op]) -> None:
    work = tmp_path_factory.mktemp("reclaim")
    uuid_file = work / "system_uuid"
    image = work / "dev.img"
    create_image(image, 10 * AU + fmt.data_start(fmt.DEFAULT_LOG_LEN))  # 10 units: runs out, reuses reclaimed ones
    mkfs(str(image), uuid_file=uuid_file)
    accepted: dict[int, bool] = {}
    for op in ops:
        with writer.session(str(image), uuid_file) as session:
            index = session.log.next_index()
            try:
                if op.kind == "creat":
                    session.create(op.name, op.number * AU, OWNER)
                elif op.kind == "rm":
                    session.remove(op.name)
                elif op.kind == "reclaim":
                    pending = sorted(session.namespace.deletions.items())[:op.number + 1]
                    if pending:
                        session.reclaim(pending)
                else:
                    file_index, delete_index = divmod(op.number, 7)
                    entry = fmt.ReclaimEntry(((file_index, file_index + delete_index),))
                    try:
                        session.reclaim(list(entry.targets))
                    except writer.MasterError:
                        session.log.append([entry])  # refused: logged raw, every reader meets it
                        accepted[index] = False
                accepted.update({n: True for n in range(index, session.log.next_index()) if n not in accepted})
            except writer.MasterError:
                pass
            units = bytes(session.namespace.units.taken)
    namespace, problems = replayed(image)
    flagged = {problem.index for problem in problems}
    assert {index for index, ok in accepted.items() if not ok} == flagged
    assert bytes(namespace.units.taken) == units  # the writer's model is the replay's
    with Device(image) as device:
        report = fsck.check(device)
        capacity = CapacityCache(FamfsLog(device)).current()
    assert report.problems == len(flagged)
    assert capacity.free_units == namespace.units.free_units
    assert report.deleted_bytes + report.reclaimed_bytes == sum(
        entry.capacity() for entry in (*namespace.deleted.values(), *namespace.reclaimed.values()))
    for file_index in namespace.reclaimed:  # a reclaimed file is not deleted any more
        assert file_index not in namespace.deleted
    live = [unit for _, entry in namespace.files.values() for extent in entry.all_extents()
            for unit in namespace.units.span(extent)]
    assert len(live) == len(set(live))  # no two live files share a unit, reused or not


# --- the coordinator's verdict, with a fake clock -------------------------------------------------

LEASE = 30.0
POLICY = Policy(lease_s=LEASE)
# Two deleted files: FILE 1 deleted by 5, FILE 2 deleted by 8; the log has 10 entries.
VIEW = LogView(deletions={1: 5, 2: 8}, fenced={}, fenced_damage={}, next_index=10)


def host(slot: int = 1, who: uuid.UUID = HOST_A, incarnation: int = 7, *, heartbeat: int = 0, applied: int = 10,
         pin_floor: int = hosts.NO_PIN, window_s: float = 10.0, state: HostState = HostState.ACTIVE) -> HostRecord:
    return HostRecord(slot=slot, system_uuid=who, incarnation=incarnation, state=state, heartbeat=heartbeat,
                      applied=applied, pin_floor=pin_floor, serve_window_ns=int(window_s * 1e9), hostname=f"h{slot}")


class Clock:
    """The coordinator's view over time: observe a table at a time, then decide."""

    def __init__(self, policy: Policy = POLICY, view: LogView = VIEW) -> None:
        self.now = 0.0
        self.policy = policy
        self.view = view
        self.observations = Observations(started=0.0)

    def at(self, now: float, *table: HostRecord | DamagedSlot, crcs: dict[int, int] | None = None) -> object:
        self.now = now
        self.observations.observe(table, now, crcs)
        return decide(self.view, list(table), self.observations, now, self.policy)


def reclaimed(verdict: object) -> set[int]:
    return {i for i, _ in verdict.reclaim}  # type: ignore[attr-defined]


def test_nothing_for_a_lease_after_the_coordinator_starts_then_everything_every_host_is_past() -> None:
    clock = Clock()
    assert reclaimed(clock.at(0, host())) == set()
    assert reclaimed(clock.at(LEASE - 0.1, host(heartbeat=1))) == set()
    verdict = clock.at(LEASE, host(heartbeat=2))
    assert verdict.reclaim == [(1, 5), (2, 8)]  # type: ignore[attr-defined]


def test_no_host_at_all_still_waits_one_lease() -> None:
    clock = Clock()
    assert reclaimed(clock.at(1)) == set()
    assert reclaimed(clock.at(LEASE)) == {1, 2}


def test_a_new_record_is_not_admitted_for_a_lease() -> None:
    clock = Clock()
    clock.at(0, host())
    assert reclaimed(clock.at(LEASE + 1, host(heartbeat=1), host(2, HOST_B))) == set()  # B first seen now
    assert reclaimed(clock.at(2 * LEASE, host(heartbeat=2), host(2, HOST_B, heartbeat=1))) == set()
    assert reclaimed(clock.at(2 * LEASE + 1, host(heartbeat=3), host(2, HOST_B, heartbeat=2))) == {1, 2}


def test_the_lease_is_at_least_twice_the_serve_window() -> None:
    clock = Clock()
    clock.at(0, host(window_s=40))
    assert reclaimed(clock.at(LEASE + 1, host(heartbeat=1, window_s=40))) == set()
    assert reclaimed(clock.at(80, host(heartbeat=2, window_s=40))) == {1, 2}


def test_a_new_identity_in_a_slot_restarts_the_lease() -> None:
    clock = Clock()
    clock.at(0, host())
    assert reclaimed(clock.at(LEASE, host(heartbeat=1))) == {1, 2}
    # another incarnation (a restart, or another host's claim) in the same slot
    assert reclaimed(clock.at(LEASE + 1, host(incarnation=8))) == set()
    assert reclaimed(clock.at(2 * LEASE, host(incarnation=8, heartbeat=1))) == set()
    # the first one writes its record back: the identity changed again, the lease starts over
    assert reclaimed(clock.at(2 * LEASE + 0.5, host(heartbeat=2))) == set()
    assert reclaimed(clock.at(3 * LEASE + 0.5, host(heartbeat=3))) == {1, 2}


def test_applied_at_or_below_the_delete_blocks_that_file() -> None:
    clock = Clock()
    clock.at(0, host(applied=5))
    assert reclaimed(clock.at(LEASE, host(heartbeat=1, applied=5))) == set()  # applied 5: DELETE 5 not played
    assert reclaimed(clock.at(LEASE + 1, host(heartbeat=2, applied=6))) == {1}
    assert reclaimed(clock.at(LEASE + 2, host(heartbeat=3, applied=9))) == {1, 2}


def test_a_pin_floor_at_or_below_the_file_blocks_it() -> None:
    clock = Clock()
    clock.at(0, host(pin_floor=2))
    assert reclaimed(clock.at(LEASE, host(heartbeat=1, pin_floor=2))) == {1}
    assert reclaimed(clock.at(LEASE + 1, host(heartbeat=2, pin_floor=1))) == set()
    assert reclaimed(clock.at(LEASE + 2, host(heartbeat=3, pin_floor=3))) == {1, 2}


def test_a_damaged_slot_blocks_everything_until_that_damage_is_fenced() -> None:
    damaged = DamagedSlot(9, "bad CRC")
    clock = Clock()
    clock.at(0, host(), damaged, crcs={9: 77})
    assert reclaimed(clock.at(LEASE, host(heartbeat=1), damaged, crcs={9: 77})) == set()
    clock.view = LogView(VIEW.deletions, {}, {(9, 77): 11}, 12)
    assert reclaimed(clock.at(LEASE + 1, host(heartbeat=2), damaged, crcs={9: 77})) == {1, 2}
    # other bytes in that slot: a new damage, not the one fenced
    assert reclaimed(clock.at(LEASE + 2, host(heartbeat=3), damaged, crcs={9: 78})) == set()


def test_a_silent_host_blocks_what_its_record_does_not_cover_and_is_reported() -> None:
    clock = Clock()
    clock.at(0, host(applied=6))
    verdict = clock.at(LEASE, host(applied=6))  # heartbeat still 0 since first seen: silent
    assert reclaimed(verdict) == {1} and verdict.silent == [host(applied=6)]  # type: ignore[attr-defined]
    assert verdict.fence == []  # type: ignore[attr-defined]  # auto_fence is off


def test_auto_fence_fences_a_silent_host_and_a_fenced_host_is_ignored() -> None:
    clock = Clock(Policy(lease_s=LEASE, auto_fence=True))
    clock.at(0, host(applied=6))
    assert clock.at(LEASE - 1, host(applied=6)).fence == []  # type: ignore[attr-defined]
    verdict = clock.at(LEASE, host(applied=6))
    assert verdict.fence == [host(applied=6)]  # type: ignore[attr-defined]
    assert reclaimed(verdict) == {1}  # the FENCE is logged first; its effect is the next verdict's
    clock.view = LogView(VIEW.deletions, {(HOST_A, 7): 10}, {}, 11)
    verdict = clock.at(LEASE + 1, host(applied=6))
    assert reclaimed(verdict) == {1, 2} and verdict.fence == []  # type: ignore[attr-defined]


def test_a_host_that_does_not_self_fence_is_never_fenced_automatically() -> None:
    clock = Clock(Policy(lease_s=LEASE, auto_fence=True))
    clock.at(0, host(applied=6, window_s=0))
    verdict = clock.at(10 * LEASE, host(applied=6, window_s=0))
    assert verdict.silent and verdict.fence == [] and reclaimed(verdict) == {1}  # type: ignore[attr-defined]


def test_a_left_host_counts_until_it_has_been_seen_left_for_a_lease() -> None:
    clock = Clock()
    clock.at(0, host(applied=6))
    left = host(applied=6, heartbeat=1, state=HostState.LEFT)
    assert reclaimed(clock.at(LEASE, left)) == {1}
    assert reclaimed(clock.at(2 * LEASE - 1, left)) == {1}
    verdict = clock.at(2 * LEASE, left)
    assert reclaimed(verdict) == {1, 2} and verdict.silent == []  # type: ignore[attr-defined]


def test_an_erased_record_blocks_everything_for_a_lease_unless_it_was_fenced() -> None:
    clock = Clock()
    clock.at(0, host())
    assert reclaimed(clock.at(LEASE, host(heartbeat=1))) == {1, 2}
    assert reclaimed(clock.at(LEASE + 1)) == set()  # the slot reads empty: its host may still serve
    assert reclaimed(clock.at(2 * LEASE)) == set()
    assert reclaimed(clock.at(2 * LEASE + 1)) == {1, 2}
    fenced = Clock(view=LogView(VIEW.deletions, {(HOST_A, 7): 10}, {}, 11))
    fenced.at(0, host())
    assert reclaimed(fenced.at(LEASE, host(heartbeat=1))) == {1, 2}
    assert reclaimed(fenced.at(LEASE + 1)) == {1, 2}


def test_another_log_epoch_blocks_everything() -> None:
    clock = Clock()
    clock.at(0, host())
    assert reclaimed(clock.at(LEASE, replace(host(heartbeat=1), log_epoch=1))) == set()


def test_alloc_finds_reclaimed_units_between_taken_ones() -> None:
    sb = fmt.Superblock(log_len=fmt.DEFAULT_LOG_LEN, dev_size=1 << 30, fs_uuid=uuid.uuid4(), dev_uuid=uuid.uuid4(),
                        system_uuid=uuid.uuid4())
    units = rules.Units(rules.Geometry.of(sb))
    start = units.first_data_unit * AU
    files = [(fmt.Extent(start + n * 2 * AU, 2 * AU),) for n in range((units.nunits - units.first_data_unit) // 2)]
    units.claim((fmt.Extent(start, (units.nunits - units.first_data_unit) * AU),))  # every unit taken
    with pytest.raises(alloc.AllocError):
        alloc.allocate_contiguous(units, AU)
    units.release(files[3])
    assert alloc.allocate_contiguous(units, 2 * AU) == files[3][0]


# --- the coordinator's loop on a real image, in process, with a fake clock --------------------------


def write_record(image: Path, record: HostRecord) -> None:
    with Device(image, writable=True) as device:
        device.write(hosts.slot_offset(record.slot), hosts.encode(record))


def test_the_loop_fences_a_silent_host_then_reclaims_and_one_coordinator_runs(
        tmp_path: Path, system_uuid_file: Path) -> None:
    from famfs.config import MasterSettings  # noqa: PLC0415
    from famfs.master.reclaim import Coordinator, CoordinatorError  # noqa: PLC0415

    image = make_device(tmp_path, system_uuid_file)
    pairs = made(image, system_uuid_file, ["a"])
    stuck = host(slot=3, applied=pairs["a"][1])  # never renews, and never played the DELETE
    write_record(image, stuck)
    now = [0.0]
    coordinator = Coordinator(str(image), system_uuid_file, MasterSettings(host_lease=LEASE, auto_fence=True),
                              clock=lambda: now[0])
    try:
        with pytest.raises(CoordinatorError, match="another reclaim coordinator"):
            Coordinator(str(image), system_uuid_file, MasterSettings())
        assert coordinator.poll().reclaim == []
        now[0] = LEASE
        verdict = coordinator.poll()  # silent for a lease: fenced, and the file still waits this round
        assert verdict.fence == [stuck] and verdict.reclaim == []
        assert coordinator.namespace.fenced == {stuck.identity: pairs["a"][1] + 1}
        now[0] = LEASE + 1
        assert coordinator.poll().reclaim == [pairs["a"]]
        assert coordinator.figures.fences == 1 and coordinator.figures.reclaimed_bytes == AU
        assert coordinator.poll().reclaim == []  # reclaimed once
        from famfs.master.reclaim_metrics import ReclaimCollector  # noqa: PLC0415
        samples = {sample.name: sample.value for family in ReclaimCollector(coordinator).collect()
                   for sample in family.samples if not sample.labels or "slot" in sample.labels}
        assert samples["famfs_reclaim_reclaimed_bytes_total"] == AU and samples["famfs_reclaim_fences_total"] == 1
        assert samples["famfs_reclaim_reclaimable_bytes"] == 0 and samples["famfs_reclaim_latency_seconds_count"] == 1
        assert samples["famfs_reclaim_host_applied_lag_entries"] == coordinator.played - stuck.applied
    finally:
        coordinator.close()
    namespace, problems = replayed(image)
    assert problems == [] and set(namespace.reclaimed) == {pairs["a"][0]}


def test_operator_fence_of_a_host_and_of_a_damaged_slot(tmp_path: Path, system_uuid_file: Path) -> None:
    from tests.famfsctl_util import famfsctl  # noqa: PLC0415

    image = make_device(tmp_path, system_uuid_file)
    write_record(image, host(slot=4))
    with Device(image, writable=True) as device:
        device.write(hosts.slot_offset(5), b"\1" * fmt.HOST_RECORD_SIZE)  # a damaged slot
    listed = famfsctl("host", "list", image).stdout
    assert "damaged" in listed and "h4" in listed, listed
    done = famfsctl("host", "fence", image, str(HOST_A))
    assert "fenced (log entry 0)" in done.stdout, done.stdout
    assert "already fenced" in famfsctl("host", "fence", image, "--slot", "4").stdout
    assert "fenced (log entry 1)" in famfsctl("host", "fence", image, "--slot", "5").stdout
    assert famfsctl("host", "fence", image, "--slot", "6", check=False).returncode == 1
    assert famfsctl("host", "fence", image, check=False).returncode == 2
    listed = famfsctl("host", "list", image).stdout
    assert "fenced" in listed, listed
    namespace, problems = replayed(image)
    assert problems == [] and namespace.fenced == {(HOST_A, 7): 0} and [slot for slot, _ in namespace.fenced_damage] == [5]
    report = famfsctl("fsck", image).stdout
    assert "hosts: 1 damaged, 1 fenced" in report and report.endswith("fsck: clean\n"), report


def test_the_coordinator_compacts_a_log_running_low_and_follows_the_new_epoch(
        tmp_path: Path, system_uuid_file: Path) -> None:
    """Free slots under compact_below: the coordinator compacts (docs/reclaim.md, "Log
    compaction"), its model follows the new log, and a log whose live namespace fills it is left
    alone (a compaction would give nothing back)."""
    from famfs.config import MasterSettings  # noqa: PLC0415
    from famfs.master.reclaim import Coordinator  # noqa: PLC0415

    image = make_device(tmp_path, system_uuid_file)
    slots = fmt.log_capacity(fmt.DEFAULT_LOG_LEN)
    owner = writer.Ownership(0o755, 0, 0)
    with writer.session(str(image), system_uuid_file) as current:
        current.mkdir("kept", owner)
        for n in range((slots * 4 // 5) // 2):  # 80 % of the log: directories made and removed
            current.mkdir(f"d{n}", owner)
            current.rmdir(f"d{n}")
    coordinator = Coordinator(str(image), system_uuid_file, MasterSettings(host_lease=LEASE, compact_below=0.25),
                              clock=lambda: 0.0)
    try:
        coordinator.poll()
        assert coordinator.figures.compactions == 1
        coordinator.poll()  # the new epoch replayed; nothing more to give back
        assert coordinator.figures.compactions == 1 and coordinator.policy.log_epoch == 1
        assert set(coordinator.namespace.dirs) == {"", "kept"} and coordinator.played == 1
    finally:
        coordinator.close()
    with Device(image) as opened:
        assert fsck.check(opened).clean and FamfsLog(opened).location.epoch == 1


class Stopped(Exception):
    """A compaction stopped after a step, as a kill -9 there would."""


@pytest.mark.parametrize("until", ["header_cleared", "copied", "done"])
def test_the_coordinator_survives_a_compaction_between_its_reads(
        tmp_path: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch, until: str) -> None:
    """Another session's compaction commits between the coordinator's look at where the log is and
    its read of the log (it reads without the lock): the coordinator reads the log where it is then
    (the staging copy, or the new log) instead of dying on a cleared header or a log that "shrank"
    (issue 19: test_kill_9_during_compaction[agent] once waited 30 s for a reclaim, the coordinator gone)."""
    from famfs.config import MasterSettings  # noqa: PLC0415
    from famfs.master import reclaim  # noqa: PLC0415

    image = make_device(tmp_path, system_uuid_file)
    owner = writer.Ownership(0o755, 0, 0)
    with writer.session(str(image), system_uuid_file) as current:
        current.mkdir("kept", owner)
        for n in range(40):  # history the compaction drops
            current.mkdir(f"d{n}", owner)
            current.rmdir(f"d{n}")
    coordinator = reclaim.Coordinator(str(image), system_uuid_file, MasterSettings(host_lease=LEASE), clock=lambda: 0.0)
    real = reclaim.read_record
    compacted: list[int] = []

    def step(name: str) -> None:
        if name == until:
            raise Stopped(name)

    def then_compact(view: bytes | memoryview) -> object:
        found = real(view)
        if not compacted:  # once, right after the coordinator looked where the log is
            compacted.append(1)
            with writer.session(str(image), system_uuid_file) as other, contextlib.suppress(Stopped):
                other.compact(step)
        return found

    try:
        coordinator.poll()
        monkeypatch.setattr(reclaim, "read_record", then_compact)
        coordinator.poll()
        assert compacted
        monkeypatch.setattr(reclaim, "read_record", real)
        if until != "done":  # a kill -9 left it COPYING: the next master session finishes it
            with writer.session(str(image), system_uuid_file):
                pass
        coordinator.poll()
        assert coordinator.policy.log_epoch == 1 and set(coordinator.namespace.dirs) == {"", "kept"}
        assert coordinator.played == 1
    finally:
        coordinator.close()
