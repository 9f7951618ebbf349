"""`make demo`, the README's first command, run as written: it must finish with status 0, say what
it showed, and leave nothing behind (its work directory goes to FAMFS_DEMO_DIR, a temp dir here).
Bounded: the whole process group is killed past the timeout (SIGTERM first, so its clean-up runs)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from famfs import env

REPO = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_S = 600  # < 2 minutes on a quiet machine; CI boxes are slower and share their cores
CLEANUP_GRACE_S = 60


def test_make_demo_runs_as_written_and_leaves_nothing(tmp_path: Path) -> None:
    # As on a fresh host: none of the suite's FAMFS_ settings (its host identity above all).
    demo_env = {key: value for key, value in os.environ.items() if not key.startswith("FAMFS_")}
    demo_env[env.DEMO_DIR] = str(tmp_path)
    process = subprocess.Popen(["make", "demo"], cwd=REPO, env=demo_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=CLEANUP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        raise AssertionError(f"make demo did not finish in {DEMO_TIMEOUT_S} s:\n{output[-4000:]}") from None
    assert process.returncode == 0, output[-4000:]
    assert "famfs demo: one shared memory device" in output
    assert list(tmp_path.iterdir()) == [], "the demo left files behind"
