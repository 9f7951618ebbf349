"""kill -9 at random instants: no partial or orphan file in root/, and a restarted agent converges
to exactly the tree (and rejected count) of a fresh one-shot play. Also re-made file systems."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.shadow_writer import UNITS_HEADER
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master.mkfs import mkfs
from famfs.shadowdir import UNITS_FILE, tree_problem
from famfs.shadowyaml import emit_file_yaml
from tests.agent_util import (
    AGENT,
    agent_state,
    dir_attrs,
    append,
    file_entry,
    make_device,
    mkdir_entry,
    run_agent,
    snapshot,
)


def churn_log(rng: random.Random, count: int) -> list[fmt.Entry]:
    """A log as a busy master writes it, plus the odd duplicate and rejected entry."""
    entries: list[fmt.Entry] = []
    dirs = [""]
    live: dict[str, int] = {}
    unit = 0
    while len(entries) < count:
        roll = rng.random()
        index = len(entries)
        if roll < 0.05:
            parent = rng.choice(dirs)
            path = f"{parent}/d{index}" if parent else f"d{index}"
            dirs.append(path)
            entries.append(mkdir_entry(path, mode=rng.choice([0o755, 0o700, 0o2775, 0o1777]), uid=rng.randrange(3), gid=rng.randrange(3)))
        elif roll < 0.15 and live:
            path = rng.choice(sorted(live))
            entries.append(fmt.DeleteEntry(relpath=path, target_index=live.pop(path)))
        elif roll < 0.17 and live:
            unit += 1
            entries.append(file_entry(rng.choice(sorted(live)), unit, size=rng.randrange(1, 4096)))  # duplicate
        elif roll < 0.18:
            unit += 1
            entries.append(file_entry(f"missing{index}/f", unit))  # rejected: no parent
        else:
            parent = rng.choice(dirs)
            path = f"{parent}/f{index}" if parent else f"f{index}"
            unit += 1
            live[path] = index
            entries.append(file_entry(path, unit, size=rng.randrange(1, 1 << 20), mode=rng.choice([0o644, 0o600])))
    return entries


def possible_contents(entries: list[fmt.Entry]) -> dict[str, set[bytes]]:
    contents: dict[str, set[bytes]] = {}
    for entry in entries:
        if isinstance(entry, fmt.FileEntry):
            contents.setdefault(entry.relpath, set()).add(emit_file_yaml(entry))
    return contents


def test_kill_9_at_random_instants_then_restart_converges(tmp_path: Path, system_uuid_file: Path) -> None:
    rng = random.Random(9)
    image = make_device(tmp_path, system_uuid_file)
    entries = churn_log(rng, 15000)
    legal_files = possible_contents(entries)
    pending = [entries[:5000]] + [entries[start:start + 2500] for start in range(5000, len(entries), 2500)]
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nbatch_max = 97\n")  # many cursor writes: kills land in every phase
    shadow = tmp_path / "shadow"
    kills = 0
    observed: dict[str, tuple[object, ...]] = {}
    while pending or kills < 12:
        if pending:
            append(image, pending.pop(0))
        # Per-entry debug events slow the play down, so more kills land inside it.
        agent = subprocess.Popen([*AGENT, "--shadow", str(shadow), "--config", str(config), "--log-level", "debug",
                                  str(image)], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.3))
        agent.send_signal(signal.SIGKILL)
        if agent.wait(timeout=10) != -signal.SIGKILL:
            if not pending and kills < 12:
                # Caught up before the kill: lose the cursor, so the next run rebuilds the whole
                # tree (and the next kills land in a reset and a replay from entry 0).
                (shadow / ".agent" / "state.json").unlink()
            continue
        kills += 1
        for path, value in snapshot(shadow / "root").items():
            if path.startswith(".meta"):
                continue
            if value[0] == "f":
                assert value[1] in legal_files.get(path, set()), f"partial or foreign file {path} after kill {kills}"
            else:
                assert observed.setdefault(path, value) == value, f"directory {path} changed after kill {kills}"
    assert kills >= 12
    final = run_agent("--shadow", shadow, "--config", config, image)
    assert final.returncode == 1  # the log holds rejected entries on purpose
    fresh = tmp_path / "fresh"
    assert run_agent("--shadow", fresh, image).returncode == 1
    assert snapshot(shadow / "root") == snapshot(fresh / "root")
    resumed, clean = agent_state(shadow), agent_state(fresh)
    for key in ("applied_index", "applied_crc", "rejected", "fs_uuid"):
        assert resumed[key] == clean[key], key
    assert list((shadow / ".agent" / "staging").iterdir()) == []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_a_stop_signal_finishes_the_entry_in_hand_and_saves_the_cursor(stop: signal.Signals, tmp_path: Path,
                                                                        system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d")] + [file_entry(f"d/f{n}", n) for n in range(8000)])
    shadow = tmp_path / "shadow"
    agent = subprocess.Popen([*AGENT, "--shadow", str(shadow), str(image)], stderr=subprocess.PIPE, text=True)
    while not (shadow / ".agent" / "state.json").exists():
        time.sleep(0.005)
    time.sleep(0.05)
    agent.send_signal(stop)
    _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert f"stopped_by_signal='{stop.name}'" in stderr
    cursor = agent_state(shadow)["applied_index"]
    files = {path for path, value in snapshot(shadow / "root").items() if value[0] == "f" and path.startswith("d/")}
    assert files == {f"d/f{n}" for n in range(cursor)}  # entry n + 1 is d/fn: exactly the cursor's
    run_agent("--shadow", shadow, image, check=True)
    assert len(list((shadow / "root" / "d").iterdir())) == 8000


def test_remade_file_system_is_detected_and_the_tree_rebuilt(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("old"), file_entry("old/f", 0)])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    mkfs(str(image), uuid_file=system_uuid_file, force=True)
    append(image, [mkdir_entry("new", mode=0o700)])
    result = run_agent("--shadow", shadow, image, check=True)
    assert "event='rebuild'" in result.stderr and "file system re-made" in result.stderr
    assert sorted(snapshot(shadow / "root")) == [".meta", ".meta/.log", ".meta/.superblock", "new"]
    assert agent_state(shadow)["applied_index"] == 0


def test_log_no_longer_matching_the_cursor_is_detected(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    fs_uuid = uuid.uuid4()
    mkfs(str(image), uuid_file=system_uuid_file, force=True, fs_uuid=fs_uuid)
    append(image, [mkdir_entry("a"), file_entry("a/f", 0), file_entry("a/g", 1)])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    # Same UUID, different history: a longer log whose entry 2 differs from the one applied.
    mkfs(str(image), uuid_file=system_uuid_file, force=True, fs_uuid=fs_uuid)
    append(image, [mkdir_entry("a"), file_entry("a/f", 0), file_entry("a/h", 1), file_entry("a/i", 2)])
    result = run_agent("--shadow", shadow, image, check=True)
    assert "log entry 2 no longer matches the cursor" in result.stderr
    assert sorted(p for p in snapshot(shadow / "root") if p.startswith("a/")) == ["a/f", "a/h", "a/i"]
    # Same UUID, shorter log.
    mkfs(str(image), uuid_file=system_uuid_file, force=True, fs_uuid=fs_uuid)
    append(image, [mkdir_entry("b")])
    result = run_agent("--shadow", shadow, image, check=True)
    assert "the log holds 1 entries but the cursor is at entry 3" in result.stderr
    assert sorted(snapshot(shadow / "root")) == [".meta", ".meta/.log", ".meta/.superblock", "b"]


def test_a_delete_interrupted_around_its_unlink_is_finished_on_restart(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/f", 0), fmt.DeleteEntry(relpath="d/f", target_index=1)])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    done = agent_state(shadow)
    fresh_yaml = emit_file_yaml(file_entry("d/f", 0))
    for unlinked in (False, True):
        # The state a kill leaves between the "pending" cursor write and the one after the unlink.
        state = agent_state(shadow)
        with Device(image) as device:
            crc = int.from_bytes(FamfsLog(device).raw_entry(1)[fmt.ENTRY_CRC_SPAN:], "little")
        state.update(applied_index=1, applied_seqnum=1, applied_crc=crc, pending_deletes=[[2, "d/f"]])
        (shadow / ".agent" / "state.json").write_text(json.dumps(state))
        units = shadow / ".agent" / UNITS_FILE  # saved with that cursor too (a DELETE claims no units)
        _, nunits = UNITS_HEADER.unpack_from(units.read_bytes())
        units.write_bytes(UNITS_HEADER.pack(1, nunits) + units.read_bytes()[UNITS_HEADER.size:])
        if not unlinked:
            (shadow / "root" / "d" / "f").write_bytes(fresh_yaml)
        result = run_agent("--shadow", shadow, image, check=True)
        assert "rebuild" not in result.stderr
        assert not (shadow / "root" / "d" / "f").exists()
        after = agent_state(shadow)
        assert (after["applied_index"], after["applied_crc"], after["rejected"], after["pending_deletes"]) == \
            (done["applied_index"], done["applied_crc"], 0, [])


@pytest.mark.parametrize("unlinked", [0, 2, 3])
def test_a_run_of_deletes_interrupted_around_its_unlinks_is_finished_on_restart(
        tmp_path: Path, system_uuid_file: Path, unlinked: int) -> None:
    """A run of DELETEs is saved as pending once, with the cursor before it, then unlinked: a kill
    after any number of its unlinks leaves a state the restart finishes."""
    image = make_device(tmp_path, system_uuid_file)
    names = ["d/f0", "d/f1", "d/f2"]
    append(image, [mkdir_entry("d"), *(file_entry(name, n) for n, name in enumerate(names)),
                   *(fmt.DeleteEntry(relpath=name, target_index=1 + n) for n, name in enumerate(names))])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    done = agent_state(shadow)
    state = agent_state(shadow)
    with Device(image) as device:
        crc = int.from_bytes(FamfsLog(device).raw_entry(3)[fmt.ENTRY_CRC_SPAN:], "little")
    state.update(applied_index=3, applied_seqnum=3, applied_crc=crc, live_files=3,
                 pending_deletes=[[4 + n, name] for n, name in enumerate(names)])
    (shadow / ".agent" / "state.json").write_text(json.dumps(state))
    units = shadow / ".agent" / UNITS_FILE  # saved with that cursor too (a DELETE claims no units)
    _, nunits = UNITS_HEADER.unpack_from(units.read_bytes())
    units.write_bytes(UNITS_HEADER.pack(3, nunits) + units.read_bytes()[UNITS_HEADER.size:])
    for n, name in enumerate(names[unlinked:], start=unlinked):
        (shadow / "root" / name).write_bytes(emit_file_yaml(file_entry(name, n)))
    result = run_agent("--shadow", shadow, image, check=True)
    assert "rebuild" not in result.stderr
    assert not any((shadow / "root" / name).exists() for name in names)
    after = agent_state(shadow)
    assert (after["applied_index"], after["applied_crc"], after["rejected"], after["live_files"], after["pending_deletes"]) == \
        (done["applied_index"], done["applied_crc"], 0, 0, [])


def test_an_unreadable_cursor_is_a_rebuild_that_says_why(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/f", 0)])
    shadow = tmp_path / "shadow"
    run_agent("--shadow", shadow, image, check=True)
    before = snapshot(shadow / "root")
    (shadow / ".agent" / "state.json").write_text('{"device": "cut short')  # damaged, or edited by hand
    result = run_agent("--shadow", shadow, image, check=True)
    assert "rebuild" in result.stderr and "state.json is unreadable" in result.stderr, result.stderr
    assert snapshot(shadow / "root") == before
    assert agent_state(shadow)["applied_index"] == 1


def test_a_resumed_agent_knows_the_directories_rmdir_removed(tmp_path: Path, system_uuid_file: Path) -> None:
    """RMDIR lines in the directory journal: a resumed agent neither keeps a removed directory
    (which would reject its re-creation as a duplicate) nor forgets one that is still there."""
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    append(image, [mkdir_entry("gone"), mkdir_entry("kept"), fmt.RmdirEntry("gone", target_index=0)])
    run_agent("--shadow", shadow, "--no-progress", image, check=True)
    assert sorted(path.name for path in (shadow / "root").iterdir() if path.name != ".meta") == ["kept"]
    append(image, [mkdir_entry("gone", mode=0o700), fmt.RmdirEntry("kept", target_index=1), file_entry("gone/f", 0)])
    assert tree_problem(shadow, 2) is None  # the self-check reads the RMDIR lines too
    resumed = run_agent("--shadow", shadow, "--no-progress", image, check=True)
    assert "duplicate_path" not in resumed.stderr + resumed.stdout
    assert "shadow_damaged" not in resumed.stderr + resumed.stdout  # no needless rebuild on start
    assert tree_problem(shadow, 5) is None
    assert sorted(path.name for path in (shadow / "root").iterdir() if path.name != ".meta") == ["gone"]
    assert dir_attrs(shadow / "root" / "gone")[0] == 0o700
    assert (shadow / "root" / "gone" / "f").read_bytes() == emit_file_yaml(file_entry("gone/f", 0))
    assert agent_state(shadow)["rejected"] == 0


def test_a_directory_removed_and_made_again_in_one_batch_gets_its_new_file(tmp_path: Path, system_uuid_file: Path) -> None:
    """The agent keeps a batch's parent directories open (ShadowTree.parent): an RMDIR must drop
    them, or a file of the directory made again under the same name lands in the removed one."""
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    append(image, [mkdir_entry("d"), file_entry("d/a", 1)])
    run_agent("--shadow", shadow, image, check=True)  # a first play: d/a is in the tree
    append(image, [fmt.DeleteEntry(relpath="d/a", target_index=1), fmt.RmdirEntry(relpath="d", target_index=0),
                   mkdir_entry("d"), file_entry("d/b", 2), file_entry("d/c", 3)])
    run_agent("--shadow", shadow, image, check=True)  # one batch, resumed in root/
    assert sorted(path.name for path in (shadow / "root" / "d").iterdir()) == ["b", "c"]
