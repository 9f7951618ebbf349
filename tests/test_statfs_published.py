"""statfs from the agent's published space figures (AgentState.total_units, fusefs/capacity.py):
for random logs they equal a whole replay's, and they are taken only for the log they describe."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from famfs import Master
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import writer
from famfs.master.compact import STEPS
from famfs.shadowdir import AgentState, read_state, state_path
from fusefs.capacity import Capacity, CapacityCache
from tests.agent_util import append, file_entry, run_agent
from tests.famfsctl_util import famfsctl, make_image

MiB = 1 << 20
OWNER = writer.Ownership(0o644, 0, 0)


def replayed(image: Path) -> Capacity:
    """The figures of a whole replay: no shadow directory, so nothing published is looked at."""
    with Device(str(image)) as device:
        return CapacityCache(FamfsLog(device)).current()


def from_shadow(image: Path, shadow: Path) -> tuple[Capacity, int]:
    """The figures a fresh mount's first statfs gives, and whether they were the published ones."""
    with Device(str(image)) as device:
        cache = CapacityCache(FamfsLog(device), str(shadow))
        return cache.current(), cache.published


def play(image: Path, shadow: Path, host: Path) -> None:
    """One play; exit 1 only for the rejected entry the test appends (the agent's report of it)."""
    result = run_agent("--shadow", shadow, "--system-uuid-file", host, image)
    assert result.returncode == 0 or (result.returncode == 1 and "entries rejected" in result.stderr), result.stderr


def churn(image: Path, host: Path, rng: random.Random, serial: list[int], compact: bool) -> None:
    """A random round of creates, deletes, reclaims of some deleted files, then a compaction if
    asked (its HOLDs carry the deleted files not yet reclaimed)."""
    with writer.session(str(image), host) as current:
        for _ in range(rng.randrange(5, 25)):
            live = sorted(current.namespace.files)
            roll = rng.random()
            if roll < 0.5 or not live:
                serial[0] += 1
                directory = rng.choice(["", "d/"])
                if directory and current.namespace.kind("d") is None:
                    current.mkdir("d", OWNER)
                current.create(f"{directory}f{serial[0]}", rng.randrange(1, 7 * MiB), OWNER)
            elif roll < 0.8:
                current.remove(rng.choice(live))
            elif current.namespace.deletions:
                pairs = sorted(current.namespace.deletions.items())
                current.reclaim(rng.sample(pairs, rng.randrange(1, len(pairs) + 1)))
        if compact:
            current.compact()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_published_figures_equal_a_whole_replay(tmp_path: Path, system_uuid_file: Path, seed: int) -> None:
    image = make_image(tmp_path / "dev.img", "1g")
    shadow = tmp_path / "shadow"
    rng = random.Random(seed)
    serial = [0]
    for round_ in range(4):
        churn(image, system_uuid_file, rng, serial, compact=round_ in (1, 2))
        if round_ == 0:  # a FILE on units another file holds: rejected by the agent, left out of a replay
            append(image, [file_entry(f"bad{seed}", 0)])
        play(image, shadow, system_uuid_file)
        state = read_state(shadow)
        assert state is not None
        truth = replayed(image)
        assert (state.total_units, state.free_units, state.held_units) == (
            truth.total_units, truth.free_units, truth.held_units)
        assert from_shadow(image, shadow) == (truth, 1)


def test_figures_of_another_log_are_not_taken(tmp_path: Path, system_uuid_file: Path) -> None:
    """A cursor behind the log, another file system's state, a changed last entry, or no figures
    at all: the mount replays the log instead."""
    image = make_image(tmp_path / "dev.img", "1g")
    shadow = tmp_path / "shadow"
    with writer.session(str(image), system_uuid_file) as current:
        current.create("a", 3 * MiB, OWNER)
    play(image, shadow, system_uuid_file)
    assert from_shadow(image, shadow) == (replayed(image), 1)

    append(image, [file_entry("b", 40)])  # the agent has not played it
    assert from_shadow(image, shadow) == (replayed(image), 0)
    play(image, shadow, system_uuid_file)
    assert from_shadow(image, shadow)[1] == 1

    saved = state_path(shadow).read_bytes()
    state = AgentState.parse(saved)
    assert state is not None and state.free_units is not None

    def with_state(**changed: object) -> tuple[Capacity, int]:
        forged = AgentState.parse(saved)
        assert forged is not None
        for name, value in changed.items():
            setattr(forged, name, value)
        state_path(shadow).write_bytes(forged.dump())
        return from_shadow(image, shadow)

    truth = replayed(image)
    assert with_state(fs_uuid="00000000-0000-0000-0000-000000000000") == (truth, 0)
    assert with_state(applied_crc=(state.applied_crc or 0) ^ 1) == (truth, 0)
    assert with_state(log_epoch=state.log_epoch + 1) == (truth, 0)
    assert with_state(free_units=None) == (truth, 0)
    assert with_state(held_units="3") == (truth, 0)
    assert with_state(device_ino=(state.device_ino or 0) + 1) == (truth, 0)
    famfsctl("mkfs", "--force", image)  # another file system at the same path: the old state is not its
    with writer.session(str(image), system_uuid_file) as current:
        current.create("a", 3 * MiB, OWNER)
        current.create("b", 1, OWNER)
    state_path(shadow).write_bytes(saved)
    assert from_shadow(image, shadow) == (replayed(image), 0)


def test_the_masters_figures_follow_a_compaction_at_every_step(tmp_path: Path, system_uuid_file: Path) -> None:
    """make churn's allocation failures below 80 % live (issue 19 follow-up): the master's mount
    decides ENOSPC by its own replay (CapacityCache.replayed), which read the log where it was when
    the mount opened it; a compaction zeroes that header while it copies the staging copy over it
    (steps 3-5), and the figures read then were 0 free and 0 held: ENOSPC at once, nothing to wait
    for. Read at every step, lock-free as the mount reads them, they are now the log's."""
    image = make_image(tmp_path / "dev.img", "1g")
    master = Master(str(image), system_uuid_file=system_uuid_file)
    for n in range(12):
        master.create(f"f{n}", 3 * MiB).commit()
    master.remove(*(f"f{n}" for n in range(0, 12, 2)))
    with Device(str(image)) as device:
        cache = CapacityCache(FamfsLog(device))
        before = cache.replayed()
        seen: dict[str, Capacity] = {}
        with writer.session(str(image), system_uuid_file) as current:
            current.compact(lambda step: seen.setdefault(step, cache.replayed()))
        after = cache.replayed()
    assert list(seen) == list(STEPS)
    assert before.held_units == 12 and before.free_units > 0
    for step, figures in seen.items():
        assert (figures.free_units, figures.held_units) == (before.free_units, before.held_units), step
    assert (after.free_units, after.held_units) == (before.free_units, before.held_units)
