"""famfs.service.stop_on_signals: a SIGTERM that lands at any bytecode of the main thread's own
`stop.wait()` stops it. The make churn reader that did not stop on SIGTERM for 42 s (2026-12-04
23:38 UTC) set its threading.Event from the handler: a handler runs in the main thread, and one
landing while that thread held the Event's lock inside wait() waited for that lock for ever.
Here the signal is sent from a trace hook at the n-th line the wait runs, for each n."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINES = 12  # more than Event.wait and Condition.wait run before and after their sleep

PROGRAM = """
import os, signal, sys, threading
from famfs import service

stop = threading.Event()
if sys.argv[2] == "handler":  # what the churn reader and famfsctl reclaimd did
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
else:
    service.stop_on_signals(stop)
wanted, seen = int(sys.argv[1]), 0

def trace(frame, event, arg):
    global seen
    if event == "line" and frame.f_code.co_filename.endswith("threading.py"):
        seen += 1
        if seen == wanted:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode boundary
    return trace

sys.settrace(trace)
stopped = stop.wait(30)
sys.settrace(None)
print("stopped" if stopped else "timed out", seen >= wanted)
"""


def run(line: int, how: str, bound: float = 15) -> subprocess.CompletedProcess[str] | None:
    """The program's outcome; None if it did not end within `bound` seconds (it was killed)."""
    try:
        return subprocess.run([sys.executable, "-c", PROGRAM, str(line), how], capture_output=True, text=True,
                              timeout=bound, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("line", range(1, LINES + 1))
def test_a_sigterm_at_any_line_of_the_wait_stops_it(line: int) -> None:
    done = run(line, "stop_on_signals")
    assert done is not None, f"SIGTERM at line {line} of the wait: it never stopped"
    assert done.returncode == 0 and done.stdout.split() == ["stopped", "True"], done.stdout + done.stderr


def test_setting_the_event_from_the_handler_deadlocks() -> None:
    """Why: the same trace with the handler setting the Event itself hangs (from the wait's
    third line on, on CPython 3.11: every line while it holds the Event's lock)."""
    assert run(3, "handler", bound=5) is None, "the handler that sets the Event did not deadlock"
