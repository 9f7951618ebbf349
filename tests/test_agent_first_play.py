"""A first play on two cores (agent/first_play.py): the forked file creator fails whole, dies with
the agent, and the filter of names it was sent never hides a file. (Duplicates, DELETEs and
directories over files inside a first play: tests/test_rulebook.py's property test, whose every
sequence is a first play.)"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent import first_play
from agent.first_play import NameFilter
from agent.follower import Follower
from famfs.config import AgentSettings
from tests.agent_util import (
    AGENT,
    agent_state,
    append,
    file_entry,
    following,
    make_device,
    mkdir_entry,
    run_agent,
    snapshot,
    wait_for,
)

FILES = 3000


def test_the_name_filter_never_misses_a_name_and_rarely_claims_one() -> None:
    names = [f"d{n // 500}/f{n}" for n in range(100_000)]
    sent = NameFilter(len(names))
    for name in names:
        sent.add(name)
    assert all(sent.may_hold(name) for name in names)
    strangers = sum(sent.may_hold(f"x{n}/g{n}") for n in range(100_000))
    assert strangers < 100  # documented: about 1 in 5,000 when full


def logged_tree(tmp_path: Path, system_uuid_file: Path) -> Path:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d")] + [file_entry(f"d/f{n}", n) for n in range(FILES)])
    return image


def creator_of(agent: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The pid of the file-creating child of `agent`, once it has one."""
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if pids := children.read_text().split():
                return int(pids[0])
        time.sleep(0.001)
    raise AssertionError("the agent never forked its file creator")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@contextlib.contextmanager
def small_tmpfs(where: Path, inodes: int) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64m,nr_inodes={inodes}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_file_the_creator_cannot_make_drops_the_whole_build(tmp_path: Path, system_uuid_file: Path) -> None:
    image = logged_tree(tmp_path, system_uuid_file)
    with small_tmpfs(tmp_path / "small", inodes=FILES // 2) as small:
        shadow = small / "shadow"
        failed = run_agent("--shadow", shadow, image)
        assert failed.returncode == 2, failed.stderr
        assert "shadow_write_failed" in failed.stderr and "No space left on device" in failed.stderr
        assert [path for path in snapshot(shadow / "root") if not path.startswith(".meta")] == []
        assert agent_state(shadow)["applied_index"] == -1  # no cursor for a tree that never moved in
        assert list((shadow / ".agent" / "staging").iterdir()) == []
        subprocess.run(["mount", "-o", f"remount,nr_inodes={4 * FILES}", str(small)], check=True)
        run_agent("--shadow", shadow, image, check=True)
        assert len(list((shadow / "root" / "d").iterdir())) == FILES


def test_the_creator_dies_with_a_killed_agent(tmp_path: Path, system_uuid_file: Path) -> None:
    image = logged_tree(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    # Per-entry debug events slow the play down: the kill lands inside it.
    agent = subprocess.Popen([*AGENT, "--shadow", str(shadow), "--log-level", "debug", str(image)],
                             stderr=subprocess.DEVNULL)
    try:
        creator = creator_of(agent)
        agent.send_signal(signal.SIGKILL)
        assert agent.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: gone(creator), "the creator exits with the agent", 5)
    finally:
        agent.kill()
        agent.wait()
    run_agent("--shadow", shadow, image, check=True)  # the shadow is free again: no lock left held
    assert len(list((shadow / "root" / "d").iterdir())) == FILES


def test_a_follower_whose_creator_is_killed_plays_again(tmp_path: Path, system_uuid_file: Path) -> None:
    image = logged_tree(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    with following(image, shadow, "--log-level", "debug") as agent:
        os.kill(creator_of(agent), signal.SIGKILL)
        wait_for(lambda: agent_state(shadow)["applied_index"] == FILES, "the follower plays the log again", 60)
        assert len(list((shadow / "root" / "d").iterdir())) == FILES
    assert "the file-creating process" in agent.log  # type: ignore[attr-defined]
    fresh = tmp_path / "fresh"
    run_agent("--shadow", fresh, image, check=True)
    assert snapshot(shadow / "root") == snapshot(fresh / "root")


def test_without_a_second_process_the_agent_makes_the_same_tree_itself(tmp_path: Path, system_uuid_file: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    image = logged_tree(tmp_path, system_uuid_file)
    append(image, [file_entry("d/f0", FILES + 1)])  # a duplicate: looked up in the tree, as with a creator

    def no_fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    # Only the fork is undone after: monkeypatch.undo() would drop the test's identity too.
    with monkeypatch.context() as patch, structlog.testing.capture_logs() as events:
        patch.setattr(first_play.os, "fork", no_fork)
        Follower(str(image), str(tmp_path / "shadow"), AgentSettings(), system_uuid_file, follow=False).run()
    assert [event["event"] for event in events if event["log_level"] == "warning"] == [
        "file_creator_unavailable", "duplicate_path"]
    run_agent("--shadow", tmp_path / "fresh", image)
    made, fresh = snapshot(tmp_path / "shadow" / "root"), snapshot(tmp_path / "fresh" / "root")
    assert len(made) == 1 + FILES + 3  # d and its files (the duplicate is not one), .meta and its two
    assert {path: value for path, value in made.items() if not path.startswith(".meta")} == {
        path: value for path, value in fresh.items() if not path.startswith(".meta")}
