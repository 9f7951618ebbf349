"""famfs-agent under an adversarial user: upstream's identity file, waits that must end at once on
SIGTERM, and a shadow tree damaged behind its back (repaired without a new log entry)."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from famfs import env
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from tests.agent_util import (
    FOLLOW_WAIT_S,
    agent_state,
    following,
    make_device,
    run_agent,
    snapshot,
)
from tests.famfsctl_util import famfsctl, make_image
from tests.fuse_util import wait_for

SIGTERM_EXIT_S = 5.0
AGENT_SCRIPT = Path(sys.executable).parent / "famfs-agent"  # the console script, as installed
EARLY_TRIES = 30
EARLY_WINDOW_S = 0.3  # the agent's start-up: the interpreter, the imports, the first play


def test_upstream_system_uuid_file_with_its_nul(tmp_path: Path, system_uuid_file: Path) -> None:
    """Upstream writes the 36 characters and the C string's NUL: both tools take it as it is."""
    host = uuid.uuid4()
    system_uuid_file.parent.mkdir(parents=True)
    system_uuid_file.write_bytes(str(host).encode() + b"\0")
    assert len(system_uuid_file.read_bytes()) == 37
    image = make_image(tmp_path / "dev.img")
    with Device(image) as device:
        assert FamfsLog(device).superblock.system_uuid == host  # mkfs read it: this host is the master
    famfsctl("mkdir", "--device", image, "d")  # only the master may write
    shadow = tmp_path / "shadow"
    run_agent(image, "--shadow", shadow, "--no-progress", check=True)
    assert agent_state(shadow)["role"] == "master"
    assert (shadow / "root" / "d").is_dir()


def test_unreadable_system_uuid_file_is_one_line_and_exit_2(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    system_uuid_file.chmod(0o644)
    system_uuid_file.write_bytes(b"not a uuid\0")
    done = run_agent(image, "--shadow", tmp_path / "shadow", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not a UUID" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_ends_a_long_wait_at_once(tmp_path: Path, system_uuid_file: Path) -> None:
    """A log header past the last slot makes the follower wait inflight_retry_ms (here a minute)
    before re-opening the device: SIGTERM ends that wait, not the minute."""
    image = make_device(tmp_path, system_uuid_file)
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\ninflight_retry_ms = 60000.0\n")
    shadow = tmp_path / "shadow"
    with following(image, shadow, "--config", config) as agent:
        with Device(image, writable=True) as device:
            past_end = fmt.log_capacity(FamfsLog(device).superblock.log_len) + 5
            device.write(fmt.LOG_OFFSET + fmt.LOG_NEXT_SEQNUM_OFFSET, past_end.to_bytes(8, "little") * 2)
        time.sleep(1.0)  # let the follower's next poll (every <= 100 ms) find it and start waiting
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=SIGTERM_EXIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"famfs-agent still running {SIGTERM_EXIT_S} s after SIGTERM") from None


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM now (the SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_sigterm_at_any_instant_of_the_start_is_a_clean_exit(tmp_path: Path, system_uuid_file: Path) -> None:
    """SIGTERM at random instants of an agent's first 0.3 s: once the process has any handler
    (it takes one before loading the program: agent/entry.py) the exit is 0, with no traceback,
    and the shadow tree it leaves is one the next play takes up without a rebuild. Before that,
    only Python's own start-up runs, and the signal's default action may end it (docs/agent.md)."""
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("mkdir", "--device", image, "d")
    rng = random.Random(21)
    handled = 0
    for attempt in range(EARLY_TRIES):
        shadow = tmp_path / f"shadow{attempt}"
        agent = subprocess.Popen([AGENT_SCRIPT, "--follow", "--shadow", str(shadow), str(image)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(rng.uniform(0.0, EARLY_WINDOW_S))
            installed = catches_sigterm(agent.pid)
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=SIGTERM_EXIT_S)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        assert "Traceback" not in stderr, stderr
        if installed:
            handled += 1
            assert agent.returncode == 0, f"try {attempt}: exit {agent.returncode}\n{stderr}"
        else:
            assert agent.returncode in (0, -signal.SIGTERM), f"try {attempt}: exit {agent.returncode}\n{stderr}"
        replay = run_agent(image, "--shadow", shadow, "--no-progress", check=True)
        assert "rebuild" not in replay.stderr and (shadow / "root" / "d").is_dir(), replay.stderr
    assert handled >= EARLY_TRIES // 2, f"only {handled} of {EARLY_TRIES} stops came after the handler"


# Runs famfs-agent's entry with a SIGTERM sent to itself the moment a given module starts loading:
# a stop at a known instant of the start-up, before the follower exists.
STOP_WHILE_LOADING = """
import importlib.abc, os, signal, sys
module, *sys.argv[1:] = sys.argv[1:]

class StopWhileLoading(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == module:
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, StopWhileLoading())
sys.argv[0] = "famfs-agent"
from agent.entry import entry
entry()
"""


@pytest.mark.parametrize("module", ["agent.cli", "structlog", "agent.follower", "agent.shadow_writer"])
def test_sigterm_while_the_program_loads_is_exit_0(module: str, tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    done = subprocess.run([sys.executable, "-c", STOP_WHILE_LOADING, module, "--follow", "--shadow", str(shadow),
                           str(image)], capture_output=True, text=True, timeout=SIGTERM_EXIT_S * 4)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not shadow.exists()  # stopped before anything was written


def made_tree(tmp_path: Path, system_uuid_file: Path) -> Path:
    """An image with files at the top, a directory and a file in it."""
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("mkdir", "--device", image, "d")
    for relpath in ("top1", "top2", "d/inner"):
        famfsctl("creat", "-s", "4k", "--device", image, relpath)
    return image


@pytest.mark.parametrize("damage", ["contents", "root"])
def test_following_agent_repairs_a_damaged_tree(tmp_path: Path, system_uuid_file: Path, damage: str) -> None:
    """`rm -rf root/*` (files only at the top level too) and `rm -rf root`: the tree comes back
    whole with no new log entry."""
    image = made_tree(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    root = shadow / "root"
    with following(image, shadow) as agent:
        wait_for(lambda: (root / "d" / "inner").exists(), "the first play")
        whole = snapshot(root)
        if damage == "root":
            shutil.rmtree(root)
        else:
            for child in root.iterdir():
                if child.name != ".meta":  # what the shell's `root/*` matches
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        wait_for(lambda: root.is_dir() and snapshot(root) == whole, "the tree repaired", FOLLOW_WAIT_S)
    assert "shadow_damaged" in agent.log  # type: ignore[attr-defined]


def test_an_unlogged_shadow_file_is_left_alone_for_the_grace_then_removed(
        tmp_path: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream's CLI writes a new file's YAML, fills the file, then logs it: a YAML no entry names
    is not damage at the next idle check, only once it has outlasted [agent] unlogged_grace_s
    with the log standing still (an orphan of a CLI that died); then the tree is rebuilt."""
    image = made_tree(tmp_path, system_uuid_file)
    grace_s = 10.0  # 5 idle checks (TREE_CHECK_S = 2 s)
    config = tmp_path / "famfs-agent.toml"
    config.write_text(f"[agent]\nunlogged_grace_s = {grace_s}\n")
    monkeypatch.setenv(env.AGENT_CONFIG, str(config))
    shadow = tmp_path / "shadow"
    root = shadow / "root"
    with following(image, shadow) as agent:
        wait_for(lambda: (root / "d" / "inner").exists(), "the first play")
        whole = snapshot(root)
        (root / "being_filled").write_bytes((root / "top1").read_bytes())  # what the CLI writes first
        placed = time.monotonic()
        wait_for(lambda: "shadow_unlogged" in (shadow.parent / "shadow.log").read_text(), "the idle check sees it",
                 FOLLOW_WAIT_S)
        assert time.monotonic() - placed < grace_s  # the test's premise: seen within the grace,
        assert (root / "being_filled").exists()  # and left alone
        wait_for(lambda: snapshot(root) == whole, "the orphan removed by a rebuild", FOLLOW_WAIT_S + grace_s)
    assert "shadow_damaged" in agent.log  # type: ignore[attr-defined]


def test_restarted_agent_repairs_a_tree_damaged_while_it_was_down(tmp_path: Path, system_uuid_file: Path) -> None:
    image = made_tree(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    root = shadow / "root"
    run_agent(image, "--shadow", shadow, "--no-progress", check=True)
    whole = snapshot(root)
    (root / "top1").unlink()  # files only: every directory is still there
    (root / "d" / "inner").unlink()
    done = run_agent(image, "--shadow", shadow, "--no-progress", check=True)
    assert snapshot(root) == whole
    assert "damaged behind the agent's back" in done.stderr
