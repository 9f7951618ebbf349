"""famfs-fuse-mount never hangs and never serves the wrong bytes (docs/consistency.md, "What the
mount never does"): stopped the instant it comes up, hostile files in the shadow tree, the file
system re-made or the image replaced under it. Real mounts, real CLIs, real images."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from famfs.shadowyaml import emit_file_yaml
from tests.agent_util import file_entry, make_device
from tests.famfsctl_util import famfsctl
from tests.fuse_util import MOUNT_CLI, WAIT_S, Mount, empty_shadow, play, unmount, wait_for

SHUTDOWN_TRIALS = 30
GONE_WITHIN_S = 5.0


def in_mountinfo(mountpoint: Path) -> bool:
    """Whether `mountpoint` is mounted, without a request to that mount (a stat would be one)."""
    wanted = os.fsencode(mountpoint)
    return any(line.split(b" ")[4] == wanted for line in Path("/proc/self/mountinfo").read_bytes().splitlines())


def run_bounded(argv: list[str], timeout: float = GONE_WITHIN_S) -> subprocess.CompletedProcess[bytes] | None:
    """argv as a child; None if it has not finished within `timeout` (then it is killed)."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture
def served(tmp_path: Path, system_uuid_file: Path) -> Iterator[tuple[Path, Path]]:
    """(device, shadow): a made file system played into a shadow tree."""
    device = make_device(tmp_path, system_uuid_file)
    shadow = empty_shadow(tmp_path / "shadow")
    play(device, shadow)
    yield device, shadow


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_the_instant_the_mount_appears(served: tuple[Path, Path], tmp_path: Path, signum: signal.Signals) -> None:
    """The daemon is signalled as soon as the mount shows in /proc/self/mountinfo (before or just
    after the kernel's INIT): every one unmounts and exits 0 within GONE_WITHIN_S."""
    device, shadow = served
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for trial in range(SHUTDOWN_TRIALS // 2):
        log = tmp_path / f"mount.{trial}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([MOUNT_CLI, "--foreground", "--shadow", str(shadow), "--device", str(device),
                                        str(mountpoint)], stdout=out, stderr=out)
        try:
            wait_for(lambda: in_mountinfo(mountpoint) or process.poll() is not None, "the mount")
            process.send_signal(signum)
            try:
                code = process.wait(timeout=GONE_WITHIN_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"trial {trial}: still running {GONE_WITHIN_S} s after {signum.name}: {log.read_text()}")
            assert code == 0, log.read_text()
            assert not in_mountinfo(mountpoint), f"trial {trial}: left mounted"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            unmount(mountpoint)
