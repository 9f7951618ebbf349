"""Reclaim, the host's side (docs/reclaim.md, "A host" and "Pins"): the agent's record in the host
table (join, renew, leave, fenced), the mount's self-fence, pins by the mount and famfs.open.

Real agents and mounts as processes, a short serve window (0.6 s) so a lease runs out quickly;
every wait is bounded polling, nothing is timed.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import famfs
from agent.deleted import DeletedFiles
from agent.follower import Follower
from agent.shadow_writer import ShadowTree
from agent.wakeup import Waiter
from famfs import config, hosts, pins
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.hosts import HostRecord
from famfs.identity import system_uuid
from tests.agent_util import AGENT, agent_state, append, current, file_entry, make_device, record_of
from tests.famfsctl_util import famfsctl
from tests.fuse_util import WAIT_S, Mount, bounded, wait_for

WINDOW_S = 0.6
HEARTBEAT_S = 0.05
ALL_UNPINNED = None  # a row's pin floor when nothing deleted is pinned


@pytest.fixture
def agent_config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"[agent]\nheartbeat_interval = {HEARTBEAT_S}\nserve_window = {WINDOW_S}\n")
    return path


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [file_entry("a", 0, size=4096), file_entry("b", 1, size=4096)])
    with Device(image, writable=True) as opened:  # known bytes in a's and b's first pages
        opened.write(file_entry("a", 0).extents[0].offset, b"A" * 4096)
        opened.write(file_entry("b", 1).extents[0].offset, b"B" * 4096)
    return image


@contextmanager
def agent(image: Path, shadow: Path, agent_config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A following agent; killed (SIGKILL) if the test left it running."""
    log = open(shadow.parent / f"{shadow.name}.agent.log", "ab")
    process = subprocess.Popen([*AGENT, "--follow", "--shadow", str(shadow), "--config", str(agent_config), str(image)],
                               stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(timeout=30)
        log.close()


def serving(image: Path, shadow: Path) -> Callable[[], HostRecord | None]:
    """The agent's record, once it has renewed after its catch-up (the mount may serve)."""
    def check() -> HostRecord | None:
        found = current(image, shadow)
        return found if found is not None and found.renewed_ns and found.heartbeat >= 1 else None
    return check


def read_errno(path: Path) -> int:
    """0 if a read through the mount answers the file's bytes, else its errno."""
    def attempt() -> int:
        try:
            with open(path, "rb") as handle:
                return 0 if handle.read(16) else -1
        except OSError as err:
            return err.errno or -1
    return bounded(attempt, f"read {path}")


def fd_read_errno(fd: int) -> int:
    def attempt() -> int:
        try:
            return 0 if os.pread(fd, 16, 0) else -1
        except OSError as err:
            return err.errno or -1
    return bounded(attempt, "pread of an open handle")


def test_join_comes_before_the_first_log_read(tmp_path: Path, device: Path, monkeypatch: pytest.MonkeyPatch,
                                              system_uuid_file: Path) -> None:
    seen: list[bool] = []
    real_next_index = FamfsLog.next_index

    def next_index(self: FamfsLog) -> int:
        me = system_uuid(system_uuid_file, create=False)
        seen.append(any(isinstance(r, HostRecord) and r.system_uuid == me for r in hosts.read_table(self.device.map)))
        return real_next_index(self)

    monkeypatch.setattr(FamfsLog, "next_index", next_index)
    shadow = tmp_path / "shadow"
    follower = Follower(str(device), str(shadow), config.AgentSettings(), system_uuid_file, follow=False)
    assert follower.run() == 0
    assert seen and all(seen), "the log was read before this host's record was in the table"
    found = record_of(device, shadow)
    # A one-shot play: window 0 (no lease), one store of what it applied; it stays active.
    assert (found.serve_window_ns, found.applied, found.state, found.pin_floor) == (0, 2, hosts.HostState.ACTIVE,
                                                                                     hosts.NO_PIN)
    assert found.system_uuid == system_uuid(system_uuid_file, create=False)


def test_renewals_advance_heartbeat_and_applied_and_a_clean_stop_leaves(tmp_path: Path, device: Path,
                                                                         agent_config: Path) -> None:
    shadow = tmp_path / "shadow"
    with agent(device, shadow, agent_config) as process:
        first = wait_for(serving(device, shadow), "the first renewal")
        assert first.applied == 2 and first.serve_window_ns == int(WINDOW_S * 1e9)
        append(device, [file_entry("c", 2)])
        later = wait_for(lambda: (r := current(device, shadow)) is not None and r.applied == 3 and r, "applied 3")
        assert later.heartbeat > first.heartbeat and later.renewed_ns > first.renewed_ns
        assert later.incarnation == first.incarnation and later.pid == process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert record_of(device, shadow).state is hosts.HostState.LEFT


def test_the_mount_self_fences_when_its_agent_dies_or_stops(tmp_path: Path, device: Path, agent_config: Path) -> None:
    shadow = tmp_path / "shadow"
    with agent(device, shadow, agent_config) as process:
        joined = wait_for(serving(device, shadow), "the agent serves")
        with Mount(shadow, device, tmp_path / "mnt", "cache=direct") as mount:
            path = mount.mountpoint / "a"
            assert read_errno(path) == 0
            handle = os.open(path, os.O_RDONLY)
            try:
                # SIGSTOP past the window: EIO by the mount's own clock; SIGCONT: served again.
                process.send_signal(signal.SIGSTOP)
                wait_for(lambda: fd_read_errno(handle) == errno.EIO, "EIO once the lease runs out")
                assert read_errno(path) == errno.EIO
                process.send_signal(signal.SIGCONT)
                wait_for(lambda: fd_read_errno(handle) == 0, "served again after SIGCONT")
                # kill -9: the heartbeat stands still, the mount stops serving.
                process.kill()
                process.wait(timeout=30)
                frozen = record_of(device, shadow)
                wait_for(lambda: fd_read_errno(handle) == errno.EIO, "EIO after the agent is killed")
                assert record_of(device, shadow).heartbeat == frozen.heartbeat
                assert frozen.state is hosts.HostState.ACTIVE
                # A new agent: the same slot, a new incarnation; the old handle is served again.
                with agent(device, shadow, agent_config):
                    again = wait_for(lambda: (r := serving(device, shadow)()) is not None
                                     and r.incarnation != joined.incarnation and r, "the new agent serves")
                    assert again.slot == joined.slot
                    wait_for(lambda: fd_read_errno(handle) == 0, "served again by the new incarnation")
                    assert os.pread(handle, 4, 0) == b"AAAA"
            finally:
                os.close(handle)
        assert "the agent's lease expired" in mount.log()


def test_a_fence_of_this_host_drops_its_tree_and_its_handles(tmp_path: Path, device: Path, agent_config: Path,
                                                            system_uuid_file: Path) -> None:
    shadow = tmp_path / "shadow"
    with agent(device, shadow, agent_config):
        joined = wait_for(serving(device, shadow), "the agent serves")
        with Mount(shadow, device, tmp_path / "mnt", "cache=direct") as mount:
            handle = os.open(mount.mountpoint / "a", os.O_RDONLY)
            try:
                assert fd_read_errno(handle) == 0
                append(device, [fmt.FenceEntry(system_uuid=joined.system_uuid, incarnation=joined.incarnation,
                                               slot=joined.slot, reason=fmt.FenceReason.OPERATOR,
                                               heartbeat=joined.heartbeat, applied=joined.applied)])
                rejoined = wait_for(lambda: (r := serving(device, shadow)()) is not None
                                    and r.incarnation != joined.incarnation and r, "a new incarnation serves")
                assert rejoined.slot == joined.slot and rejoined.applied == 3  # a fresh play, past the FENCE
                state = agent_state(shadow)
                assert joined.incarnation in state["stale_incarnations"]  # type: ignore[operator]
                assert state["tree_incarnations"] == [rejoined.incarnation]
                wait_for(lambda: fd_read_errno(handle) == errno.ESTALE, "the old handle is stale")
                assert read_errno(mount.mountpoint / "a") == 0  # a new open is served
            finally:
                os.close(handle)
    assert "fenced" in (tmp_path / "shadow.agent.log").read_text()


def floor_of(image: Path, shadow: Path) -> int | None:
    found = current(image, shadow)
    return None if found is None or found.pin_floor == hosts.NO_PIN else found.pin_floor


def deleted_and_renewed(image: Path, shadow: Path, applied: int) -> Callable[[], HostRecord | None]:
    def check() -> HostRecord | None:
        found = current(image, shadow)
        return found if found is not None and found.applied >= applied else None
    return check


def test_an_open_handle_and_a_mapping_pin_a_deleted_file(tmp_path: Path, device: Path, agent_config: Path) -> None:
    shadow = tmp_path / "shadow"
    with agent(device, shadow, agent_config):
        wait_for(serving(device, shadow), "the agent serves")
        with Mount(shadow, device, tmp_path / "mnt", "cache=direct") as mount:
            handle = os.open(mount.mountpoint / "a", os.O_RDONLY)
            mapped = famfs.open(mount.mountpoint / "b")  # pinned through the mount while mapped
            by_device = famfs.open("b", device=device, shadow=shadow)  # its own flock pin
            try:
                append(device, [fmt.DeleteEntry(relpath="a", target_index=0), fmt.DeleteEntry(relpath="b", target_index=1)])
                wait_for(deleted_and_renewed(device, shadow, 4), "the DELETEs applied")
                wait_for(lambda: floor_of(device, shadow) == 0, "a's FILE index is the pin floor")
                assert bytes(mapped.buffer[:4]) == b"BBBB"
            finally:
                os.close(handle)
            wait_for(lambda: floor_of(device, shadow) == 1, "with a closed, b (mapped twice) is the floor")
            mapped.close()
            wait_for(lambda: floor_of(device, shadow) == 1, "b still mapped with device=")
            by_device.close()
            wait_for(lambda: floor_of(device, shadow) is ALL_UNPINNED, "nothing pinned")
            # Pin, then look: a deleted file cannot be opened or mapped again.
            with pytest.raises(FileNotFoundError):
                famfs.open("a", device=device, shadow=shadow)
            # Free pin files (the one this refused open made, too) go at the agent's next test.
            wait_for(lambda: os.listdir(pins.pins_dir(shadow)) == [], "no pin file left")


def test_a_reclaim_frees_units_and_a_bad_one_is_rejected(tmp_path: Path, device: Path, agent_config: Path) -> None:
    shadow = tmp_path / "shadow"
    with agent(device, shadow, agent_config):
        wait_for(serving(device, shadow), "the agent serves")
        append(device, [fmt.DeleteEntry(relpath="a", target_index=0),
                        fmt.ReclaimEntry(targets=((0, 2),)),  # valid: a, deleted by entry 2
                        fmt.ReclaimEntry(targets=((0, 2),)),  # already reclaimed
                        fmt.ReclaimEntry(targets=((1, 2),))])  # b is live
        wait_for(deleted_and_renewed(device, shadow, 6), "the entries applied")
        state = agent_state(shadow)
        assert state["rejected"] == 2, state
    units = (shadow / ".agent" / "units").read_bytes()[16:]
    first = (file_entry("a", 0).extents[0].offset - fmt.data_start(fmt.DEFAULT_LOG_LEN)) // fmt.ALLOC_UNIT
    data_units = fmt.data_start(fmt.DEFAULT_LOG_LEN) // fmt.ALLOC_UNIT
    assert units[data_units + first] == 0 and units[data_units + first + 1] == 1  # a's unit free, b's held


def test_deleted_files_are_rebuilt_from_the_log(tmp_path: Path, device: Path) -> None:
    append(device, [fmt.DeleteEntry(relpath="a", target_index=0), fmt.DeleteEntry(relpath="b", target_index=1),
                    fmt.ReclaimEntry(targets=((0, 2),))])
    with Device(device) as opened:
        deleted = DeletedFiles()
        deleted.rebuild(FamfsLog(opened), 5)
        assert {found.file_index: found.relpath for found in deleted.files.values()} == {1: "b"}
        deleted.rebuild(FamfsLog(opened), 3)  # as of a cursor before the second DELETE
        assert {found.file_index for found in deleted.files.values()} == {0}


def test_pins_take_test_and_survive_the_agents_unlink(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    (shadow / ".agent").mkdir(parents=True)  # the agent's
    directory = pins.ensure_dir(shadow)
    held = pins.pin(shadow, "dir/f")
    name = pins.pin_name("dir/f")
    assert pins.pinned(directory, [name, pins.pin_name("other")]) == {name}
    os.close(held)
    assert pins.pinned(directory, [name]) == set() and not os.path.exists(os.path.join(directory, name))
    # A pin file unlinked between a pinner's open and its lock is not trusted: it pins anew.
    again = pins.try_pin(shadow, "dir/f")
    assert again is not None and os.path.exists(os.path.join(directory, name))
    assert pins.pinned(directory, [name]) == {name}
    os.close(again)


def test_a_lost_record_is_rejoined(tmp_path: Path, device: Path, agent_config: Path) -> None:
    shadow = tmp_path / "shadow"
    with agent(device, shadow, agent_config):
        joined = wait_for(serving(device, shadow), "the agent serves")
        thief = HostRecord(slot=joined.slot, system_uuid=uuid.uuid4(), incarnation=hosts.new_incarnation())
        with Device(device, writable=True) as opened:
            opened.write(hosts.slot_offset(joined.slot), hosts.encode(thief))
        rejoined = wait_for(lambda: (r := serving(device, shadow)()) is not None
                            and r.incarnation not in (joined.incarnation, thief.incarnation) and r, "rejoined")
        assert rejoined.slot != joined.slot  # the slot is another host's now
    assert "host_record_lost" in (tmp_path / "shadow.agent.log").read_text()


def test_a_resumed_catch_up_never_shows_a_file_deleted_within_it(tmp_path: Path, device: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 system_uuid_file: Path) -> None:
    shadow = tmp_path / "shadow"

    def play_once() -> Follower:
        follower = Follower(str(device), str(shadow), config.AgentSettings(), system_uuid_file, follow=False)
        assert follower.run() == 0
        return follower

    play_once()  # a first play: a and b
    placed: list[str] = []
    real_place = ShadowTree._place_new

    def place_new(self: ShadowTree, temp: str, relpath: str, *args: object) -> bool:
        placed.append(relpath)
        return real_place(self, temp, relpath, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ShadowTree, "_place_new", place_new)
    append(device, [file_entry("c", 2), file_entry("d", 3), fmt.DeleteEntry(relpath="c", target_index=2),
                    fmt.MkdirEntry(relpath="dir", mode=0o755, uid=0, gid=0), file_entry("dir/e", 4),
                    file_entry("f", 5),
                    fmt.DeleteEntry(relpath="dir/e", target_index=6)])
    follower = play_once()
    assert "c" not in placed and "dir/e" not in placed and {"d", "f"} <= set(placed)
    state = agent_state(shadow)
    assert (state["rejected"], state["live_files"], state["born_dead"]) == (0, 4, {})
    assert sorted(os.listdir(shadow / "root")) == [".meta", "a", "b", "d", "dir", "f"]
    assert {found.relpath for found in follower.deleted.files.values()} == {"c", "dir/e"}


def test_a_born_dead_pair_split_by_a_stop_is_finished_by_the_next_run(tmp_path: Path, device: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       system_uuid_file: Path) -> None:
    shadow = tmp_path / "shadow"
    settings = config.AgentSettings(batch_max=1)
    assert Follower(str(device), str(shadow), settings, system_uuid_file, follow=False).run() == 0
    append(device, [file_entry("c", 2), file_entry("d", 3), fmt.DeleteEntry(relpath="c", target_index=2)])
    real_batch = Follower._batch

    def batch(self: Follower, first: int, stop: int, progress: object) -> None:
        real_batch(self, first, stop, progress)  # type: ignore[arg-type]
        if first == 2:
            self.stop_signal = signal.SIGTERM  # stopped with c taken, its DELETE not yet played

    monkeypatch.setattr(Follower, "_batch", batch)
    assert Follower(str(device), str(shadow), settings, system_uuid_file, follow=False).run() == 0
    assert agent_state(shadow)["born_dead"] == {"4": [2, "c"]}
    monkeypatch.setattr(Follower, "_batch", real_batch)
    follower = Follower(str(device), str(shadow), settings, system_uuid_file, follow=False)
    assert follower.run() == 0
    state = agent_state(shadow)
    assert (state["applied_index"], state["rejected"], state["live_files"], state["born_dead"]) == (4, 0, 3, {})
    assert not (shadow / "root" / "c").exists()
    assert [found.relpath for found in follower.deleted.files.values()] == ["c"]


def test_the_table_read_finds_every_occupied_slot_and_damage() -> None:
    table = bytearray(fmt.HOST_TABLE_OFFSET + fmt.HOST_SLOTS * fmt.HOST_RECORD_SIZE)
    records = [HostRecord(slot=slot, system_uuid=uuid.uuid4(), incarnation=slot + 1) for slot in (0, 15, 16, 2047, 4095)]
    for found in records:
        table[hosts.slot_offset(found.slot):hosts.slot_offset(found.slot) + fmt.HOST_RECORD_SIZE] = hosts.encode(found)
    table[hosts.slot_offset(100) + 255] = 1  # one stray byte in an empty slot: a damaged slot, not an empty one
    read = list(hosts.read_table(bytes(table)))
    assert [found for found in read if isinstance(found, HostRecord)] == records
    assert [found.slot for found in read if isinstance(found, hosts.DamagedSlot)] == [100]


def test_a_follower_moves_to_a_compacted_log_keeping_every_unchanged_file(
        tmp_path: Path, device: Path, agent_config: Path, system_uuid_file: Path) -> None:
    """docs/reclaim.md, "Log compaction": a following agent that sees a new log epoch plays the new
    log and reconciles its tree with it. A file that is still there keeps its shadow file (its
    inode), an open handle through the mount keeps reading, a file deleted meanwhile (also one the
    agent had not yet applied) is gone, and the host record follows the new epoch. No rebuild, and
    no rejoin: the same incarnation renews on (a rejoin made the mount answer EIO until the new
    log was played, issue 19)."""
    shadow = tmp_path / "shadow"
    append(device, [file_entry("c", 2, size=4096), file_entry("d", 3, size=4096)])
    with agent(device, shadow, agent_config) as process:
        joined = wait_for(serving(device, shadow), "the agent serves")
        kept = {name: (shadow / "root" / name).stat().st_ino for name in ("a", "c")}
        with Mount(shadow, device, tmp_path / "mnt", "cache=direct") as mount:
            handle = os.open(mount.mountpoint / "a", os.O_RDONLY)
            try:
                append(device, [fmt.DeleteEntry(relpath="b", target_index=1)])
                wait_for(lambda: not (shadow / "root" / "b").exists(), "b deleted")
                process.send_signal(signal.SIGSTOP)  # d's DELETE and the compaction happen behind it
                try:
                    append(device, [fmt.DeleteEntry(relpath="d", target_index=3)])
                    famfsctl("compact", device)
                finally:
                    process.send_signal(signal.SIGCONT)
                with Device(device) as opened:
                    end = FamfsLog(opened).header().next_index
                wait_for(lambda: agent_state(shadow).get("log_epoch") == 1, "the agent follows epoch 1")
                moved = wait_for(lambda: (record := current(device, shadow)) is not None and record.log_epoch == 1
                                 and record.applied >= end and record, "the record says epoch 1, all of it applied")
                assert moved.incarnation == joined.incarnation and moved.slot == joined.slot
                assert {name: (shadow / "root" / name).stat().st_ino for name in ("a", "c")} == kept
                assert not (shadow / "root" / "d").exists() and not (shadow / "root" / "b").exists()
                assert os.pread(handle, 4, 0) == b"AAAA"  # the same file, the same handle
                assert bounded(lambda: (mount.mountpoint / "c").stat().st_size, "stat c") == 4096
            finally:
                os.close(handle)
    log = (tmp_path / "shadow.agent.log").read_text()
    assert "log_compacted" in log and "event='rebuild'" not in log and "shadow_damaged" not in log, log


@contextmanager
def follower_in_hand(device: Path, shadow: Path, uuid_file: Path, **settings: object) -> Iterator[Follower]:
    """A following agent driven step by step in this process: started, caught up and renewed
    once (its mount may serve), one entry a batch."""
    follower = Follower(str(device), str(shadow), config.AgentSettings(batch_max=1, **settings),  # type: ignore[arg-type]
                        uuid_file, follow=True)
    follower.tree.open()
    follower.waiter = Waiter()
    try:
        assert follower._open_device() is None
        follower._start()
        assert follower.famfs_log is not None
        follower._play(follower.famfs_log.next_index())
        follower._renew(hosts.boottime_ns())
        yield follower
    finally:
        follower.waiter.close()
        follower.tree.close()
        follower._drop_membership()
        if follower.device is not None:
            follower.device.close()


def heartbeats_during_play(follower: Follower, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Play the log's new entries, a renewal falling due after every batch: the record's
    (heartbeat, applied) after each."""
    seen: list[tuple[int, int]] = []
    real_batch = Follower._batch

    def batch(self: Follower, first: int, stop: int, progress: object) -> None:
        real_batch(self, first, stop, progress)  # type: ignore[arg-type]
        assert self.member is not None and self.member.record is not None
        seen.append((self.member.record.heartbeat, self.member.record.applied))
        self.renew_due = 0.0

    monkeypatch.setattr(Follower, "_batch", batch)
    assert follower.famfs_log is not None
    follower._play(follower.famfs_log.next_index())
    return seen


def test_a_long_play_renews_between_its_batches(tmp_path: Path, device: Path, system_uuid_file: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19 (a client's reads answered EIO in make churn while its agent was busy): a
    following agent renews between the batches of a long play, its record saying what is applied
    so far, so its mount keeps serving."""
    with follower_in_hand(device, tmp_path / "shadow", system_uuid_file) as follower:
        first = follower.member.record  # type: ignore[union-attr]
        assert first is not None and first.renewed_ns and first.applied == 2
        append(device, [file_entry(f"n{n}", 2 + n) for n in range(4)])
        seen = heartbeats_during_play(follower, monkeypatch)
        assert seen[1:] == [(first.heartbeat + n, 2 + n) for n in range(1, 4)]  # after the last: the pass's own


def test_no_renewal_between_batches_while_a_fence_of_this_host_lies_ahead(
        tmp_path: Path, device: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal begun after a FENCE was logged must have played it (docs/reclaim.md, step 3 and
    case 4): with a FENCE of this incarnation further on, a long play does not renew midway, and
    ends fenced."""
    from agent.follower import Fenced  # noqa: PLC0415

    with follower_in_hand(device, tmp_path / "shadow", system_uuid_file) as follower:
        record = follower.member.record  # type: ignore[union-attr]
        assert record is not None
        fence = fmt.FenceEntry(system_uuid=record.system_uuid, incarnation=record.incarnation, slot=record.slot,
                               reason=fmt.FenceReason.OPERATOR, heartbeat=record.heartbeat, applied=record.applied)
        append(device, [*(file_entry(f"n{n}", 2 + n) for n in range(4)), fence])
        with pytest.raises(Fenced):
            heartbeats_during_play(follower, monkeypatch)
        assert current(device, tmp_path / "shadow") is not None
        assert follower.member is not None and follower.member.record is not None
        assert follower.member.record.heartbeat == record.heartbeat  # never renewed past the FENCE


class Stopped(Exception):
    """A compaction stopped after a step, as a kill -9 there would."""


def test_a_move_to_a_new_log_interrupted_before_its_tree_moved_in_keeps_the_tree(
        tmp_path: Path, device: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log moves twice in a row (a compaction's commit: the staging copy; then the copy done:
    the log in its place) before the first move's tree is built: the second move reconciles
    root/ as the first would have, instead of emptying it under the mount (issue 19: a churn run
    gave 1,420 reader EIOs so), and the record keeps its incarnation."""
    from famfs.master import writer  # noqa: PLC0415

    shadow = tmp_path / "shadow"
    with follower_in_hand(device, shadow, system_uuid_file, inflight_retry_ms=0.0) as follower:
        before = {name: (shadow / "root" / name).stat().st_ino for name in ("a", "b")}
        joined = follower.member.record  # type: ignore[union-attr]

        def stop(name: str) -> None:
            if name == "committed":
                raise Stopped(name)

        with writer.session(str(device), system_uuid_file) as session, pytest.raises(Stopped):
            session.compact(stop)
        assert follower._poll()  # moves to the staging copy: cursor before its entry 0
        assert agent_state(shadow)["applied_index"] == -1
        with writer.session(str(device), system_uuid_file):
            pass  # a master session finishes the copy: the log moves again
        emptied: list[bool] = []
        monkeypatch.setattr(ShadowTree, "_empty_root", lambda self: emptied.append(True))
        assert follower._poll()  # the second move, the first one's tree not yet built
        follower._play(follower.famfs_log.next_index())  # type: ignore[union-attr]
        assert not emptied
        assert {name: (shadow / "root" / name).stat().st_ino for name in ("a", "b")} == before
        assert follower.member.record.incarnation == joined.incarnation  # type: ignore[union-attr]


def served_while_moving(device: Path, shadow: Path) -> dict[str, str | None]:
    """Each shadow file in root/ checked as the mount checks it now: None if it is served, else why
    not (famfs.ownership.ShadowCheck against the log where it is and the installed owner map)."""
    from famfs.ownership import ShadowCheck  # noqa: PLC0415
    from famfs.shadowyaml import parse_file_yaml  # noqa: PLC0415

    with Device(device) as opened:
        check = ShadowCheck(FamfsLog(opened), shadow / ".agent" / "owners")
        try:
            return {path.name: check.file_problem(parse_file_yaml(path.read_bytes()))
                    for path in sorted((shadow / "root").iterdir()) if path.is_file()}
        finally:
            check.close()


def test_a_move_serves_every_file_both_logs_hold_live_until_its_tree_is_built(
        tmp_path: Path, device: Path, system_uuid_file: Path) -> None:
    """Issue 19 (make churn's readers: a cold open answered ENOENT while a client's agent moved to
    a compacted log): from the move's first look at the new log until its tree is built, the
    owner map the mount checks against is the previous one carried to the new log's indexes
    (docs/reclaim.md, "What the mount serves while a host moves"). A file both logs hold live
    is served throughout, under its new index; one the new log deletes (not yet played) is not."""
    shadow = tmp_path / "shadow"
    # a(0) b(1) DELETE b(2) c(3) d(4): compacted, a(0) HOLD b(1) c(2) d(3): c and d's indexes move.
    append(device, [fmt.DeleteEntry(relpath="b", target_index=1), file_entry("c", 2, size=4096),
                    file_entry("d", 3, size=4096)])
    with follower_in_hand(device, shadow, system_uuid_file, inflight_retry_ms=0.0) as follower:
        assert served_while_moving(device, shadow) == {"a": None, "c": None, "d": None}
        famfsctl("compact", device)
        with Device(device) as opened:
            compacted = FamfsLog(opened)
            assert [type(entry).__name__ for _, entry in compacted.entries()] == \
                ["FileEntry", "HoldEntry", "FileEntry", "FileEntry"]
        append(device, [fmt.DeleteEntry(relpath="d", target_index=3)])  # in the new log, not played
        assert follower._poll()  # the move: the tables reset, nothing of the new log played yet
        assert agent_state(shadow)["applied_index"] == -1
        moving = served_while_moving(device, shadow)
        assert moving["a"] is None and moving["c"] is None, moving
        assert moving["d"] is not None and "units no live file owns" in moving["d"], moving
        follower._play(follower.famfs_log.next_index())  # type: ignore[union-attr]
        assert agent_state(shadow)["applied_index"] == 4
        assert served_while_moving(device, shadow) == {"a": None, "c": None}


COLD_FILES = 1500  # enough that the reader still opens files it never opened after the move ends


def test_cold_opens_through_a_client_mount_never_fail_while_its_agent_moves(tmp_path: Path, device: Path) -> None:
    """Issue 19, through a real agent and mount: a reader opens files it never opened before, one
    after the other, while `famfsctl compact` moves the log and the agent follows it. Every
    compacted file's index moves (a DELETE before each is dropped); every open answers the file
    (no ENOENT, no EIO) before, during and after the move, and fsck is clean."""
    import threading  # noqa: PLC0415

    from famfs.master import fsck  # noqa: PLC0415

    shadow = tmp_path / "shadow"
    agent_config = tmp_path / "agent.toml"  # the default serve window: a slow move on a busy host is no lapse
    agent_config.write_text(f"[agent]\nheartbeat_interval = {HEARTBEAT_S}\n")
    batch: list[fmt.Entry] = []
    for n in range(COLD_FILES):  # x_n(2+3n) DELETE x_n(3+3n) f_n(4+3n): compacted, f_n is 2+2n
        batch += [file_entry(f"x{n}", 2 + 2 * n), fmt.DeleteEntry(relpath=f"x{n}", target_index=2 + 3 * n),
                  file_entry(f"f{n}", 3 + 2 * n, size=4096)]
    append(device, batch)
    failures: list[tuple[str, int]] = []
    opened: list[float] = []
    done = threading.Event()
    with agent(device, shadow, agent_config):
        wait_for(serving(device, shadow), "the agent serves")
        with Mount(shadow, device, tmp_path / "mnt", "cache=direct") as mount:
            def reader() -> None:
                for n in range(COLD_FILES):
                    if done.is_set():
                        return
                    try:
                        with open(mount.mountpoint / f"f{n}", "rb") as handle:
                            handle.read(16)
                    except OSError as err:
                        failures.append((f"f{n}", err.errno or -1))
                    opened.append(time.monotonic())
                    time.sleep(0.002)  # the opens spread over the compaction and the whole move
            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            try:
                wait_for(lambda: len(opened) >= 20, "the reader opens files")
                started = time.monotonic()
                famfsctl("compact", device)
                with Device(device) as opened_device:
                    end = FamfsLog(opened_device).header().next_index
                wait_for(lambda: (state := agent_state(shadow)).get("log_epoch") == 1
                         and state.get("applied_index", -1) + 1 >= end, "the agent has moved to epoch 1")
                moved = time.monotonic()
                wait_for(lambda: opened[-1] > moved, "the reader opens files it never opened after the move")
            finally:
                done.set()
                thread.join(timeout=WAIT_S)
            during = [stamp for stamp in opened if started <= stamp <= moved]
            assert not failures, (len(failures), failures[:5])
            assert during, "no open happened while the log moved"
    with Device(device) as opened_device:
        assert fsck.check(opened_device).clean
    log = (tmp_path / "shadow.agent.log").read_text()
    assert "log_moved" in log and "event='rebuild'" not in log, log
