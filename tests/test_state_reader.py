"""famfs.shadowdir.StateReader: the mount's cached read of the agent's state.json gives what a
fresh read_state gives, however the file changes, and parses it only when it changed."""

from __future__ import annotations

import os
from pathlib import Path

from famfs.shadowdir import AgentState, StateReader, read_state, state_path


def write(shadow: Path, applied_index: int, *, in_place: bool) -> None:
    """state.json with this cursor: by a rename, as the agent writes it, or rewritten in place."""
    state = AgentState(device="/dev/dax0.0", fs_uuid="6f1c1e52-4a54-4a8e-9d3c-2b5a0f3b9a11", applied_index=applied_index)
    path = state_path(shadow)
    if in_place:
        path.write_bytes(state.dump())
        return
    path.with_suffix(".tmp").write_bytes(state.dump())
    os.replace(path.with_suffix(".tmp"), path)


def test_the_cached_state_follows_every_change(tmp_path: Path) -> None:
    reader = StateReader(tmp_path)
    assert reader.read() is None  # no agent ran here
    state_path(tmp_path).parent.mkdir()
    for index, in_place in [(10, False), (11, False), (12, False), (100, True), (13, False)]:
        write(tmp_path, index, in_place=in_place)  # in place: another size (the agent renames)
        got = reader.read()
        assert got == read_state(tmp_path) and got is not None and got.applied_index == index
        assert reader.read() is got  # unchanged: not parsed again
    state_path(tmp_path).write_bytes(b"{not json")
    assert reader.read() is None
    state_path(tmp_path).unlink()
    assert reader.read() is None
