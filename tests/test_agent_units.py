"""The agent's small parts on their own: state.json, the progress bar, the wake hint, the scan
that names a duplicate's winner, and the shadow tree's staging hygiene."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pytest

from agent.follower import AgentState
from agent.shadow_writer import ShadowTree
from agent.wakeup import ImageWriteWatch, Waiter
from famfs import env
from famfs import format as fmt
from famfs.device import Device
from famfs.config import Settings
from famfs.famfslog import FamfsLog
from famfs.identity import IdentityError, joining_identity_file
from famfs.progress import Progress
from tests.agent_util import append, file_entry, make_device, mkdir_entry


def test_state_round_trips_and_bad_state_reads_as_none() -> None:
    state = AgentState(device="/dev/dax0.0", fs_uuid="u", applied_index=7, applied_seqnum=7, applied_crc=0xABC,
                       rejected=2, last_error="log entry 5: empty path", pending_deletes=[[8, "d/f"], [9, "d/g"]])
    assert AgentState.parse(state.dump()) == state
    # An agent from before runs of DELETEs saved one pending DELETE: read as a run of one.
    old = state.dump().replace(b'"pending_deletes": [[8, "d/f"], [9, "d/g"]]', b'"pending_delete": {"index": 8, "path": "d/f"}')
    assert AgentState.parse(old).pending_deletes == [[8, "d/f"]]  # type: ignore[union-attr]
    assert AgentState.parse(None) is None
    assert AgentState.parse(b"{not json") is None
    assert AgentState.parse(b'{"fs_uuid": "u"}') is None  # no device: not a state file of ours
    assert AgentState.parse(state.dump().replace(b'"rejected"', b'"unknown_key": 1, "rejected"')) == state


def test_progress_bar_draws_counts_rate_and_eta_then_clears() -> None:
    stream = io.StringIO()
    bar = Progress("replaying", 1100, unit="entries", start=100, bar=True, stream=stream)
    bar.last_shown -= 1  # as if the last draw were a second ago
    bar.update(600)
    drawn = stream.getvalue()
    assert "replaying [###############...............] 500/1,000 entries, " in drawn and "entries/s, ETA " in drawn
    bar.update(601)  # too soon after the last draw: nothing more
    assert stream.getvalue().count("\r") == 1
    bar.finish()
    assert stream.getvalue().endswith("\r\033[K")


def test_write_hint_fires_on_a_device_write_and_not_otherwise(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    waiter = Waiter(ImageWriteWatch(str(image)))
    try:
        assert waiter.wait(0.01) is False
        append(image, [mkdir_entry("x")])  # the writer's pwrite of entry and header
        assert waiter.wait(5.0) is True
        assert waiter.wait(0.01) is False  # drained: one append, one wake
    finally:
        waiter.close()


def test_live_file_index_follows_deletes(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/f", 0), file_entry("d/g", 1)])
    append(image, [fmt.DeleteEntry(relpath="d/f", target_index=1), file_entry("d/f", 2)])
    # The same bytes elsewhere in a slot are no match: a longer name, and one ending in "d/f".
    append(image, [file_entry("d/ff", 3), mkdir_entry("dd"), file_entry("dd/f", 4)])
    tree = ShadowTree(tmp_path / "shadow")
    with Device(image) as device:
        famfs_log = FamfsLog(device)
        assert tree.live_file_index(famfs_log, "d/f", 3) == 1
        assert tree.live_file_index(famfs_log, "d/f", 4) is None  # resumed from entry 3
        assert tree.live_file_index(famfs_log, "d/f", 5) == 4
        assert tree.live_file_index(famfs_log, "d/f", 2) == 1  # before where it left off: from the start
        assert tree.live_file_index(famfs_log, "d/g", 5) == 2
        assert tree.live_file_index(famfs_log, "d", 5) is None  # a directory is not a FILE
        assert tree.live_file_index(famfs_log, "d/f", 8) == 4
        assert [index for index, _ in famfs_log.slots_naming("d/f", 0, 8)] == [1, 3, 4]


def test_opening_a_shadow_clears_staging_and_keeps_root(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    (shadow / ".agent" / "staging" / "1234.5").mkdir(parents=True)
    (shadow / ".agent" / "staging" / "1234.6").write_bytes(b"half a fi")
    (shadow / "root" / "kept").mkdir(parents=True)
    with ShadowTree(shadow) as tree:
        assert os.listdir(tree.staging) == []
        assert (shadow / "root" / "kept").is_dir()
        assert (shadow / ".agent" / "lock").read_text().strip() == str(os.getpid())


def test_the_agent_joins_with_a_named_identity_or_an_existing_default(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file named on purpose may be made (the join makes it); the built-in default only by mkfs."""
    monkeypatch.delenv(env.SYSTEM_UUID_FILE)
    settings = Settings()
    default = tmp_path / "opt" / "system_uuid"
    settings.host.system_uuid_file = str(default)  # the built-in default, as far as `given` knows
    with pytest.raises(IdentityError, match=f"^{default} does not exist: this host has no identity"):
        joining_identity_file(None, settings)
    named = tmp_path / "named" / "system_uuid"
    assert joining_identity_file(str(named), settings) == named
    monkeypatch.setenv(env.SYSTEM_UUID_FILE, str(named))
    assert joining_identity_file(None, settings) == named
    assert not default.parent.exists() and not named.exists()  # asking makes nothing
    monkeypatch.delenv(env.SYSTEM_UUID_FILE)
    default.parent.mkdir()
    default.write_text(str(uuid.uuid4()))
    assert joining_identity_file(None, settings) == default
