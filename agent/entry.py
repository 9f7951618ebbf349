"""famfs-agent's process entry (the console script): the stop signals are taken before anything
else is loaded.

Loading the program (agent.cli, the follower, structlog, ...) takes ~60 ms; a SIGTERM in that
time used to kill the agent by the signal (no output, no exit 0). Here SIGTERM and SIGINT are
taken first: until the follower takes them over (Follower.run: finish the entry in hand, save
the cursor), a stop raises Stopped, and nothing has been written yet, so the agent exits 0 at
once. Only Python's own start-up (~25 ms, before any of our code runs) is left to the signal's
default action. `status` and `health` keep the default: their exit code is an answer, and a
probe stopped half-way must not read as healthy. This module imports only the standard library.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

STOPS = (signal.SIGTERM, signal.SIGINT)
PROBES = ("status", "health")  # subcommands whose exit status is their answer
EXIT_STOPPED = 0  # agent.follower.EXIT_OK: a stop is a clean end (docs/agent.md)


class Stopped(BaseException):
    """A stop signal before the follower took the signals over (a BaseException: no `except
    Exception` on the way may swallow it)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def entry(main: Callable[[], int] | None = None) -> NoReturn:
    """famfs-agent: `main` (agent.cli.main, loaded only once the signals are ours), then the end
    without the interpreter's teardown (logsetup.exit_now)."""
    early = not (sys.argv[1:2] and sys.argv[1] in PROBES)
    if early:
        for signum in STOPS:
            signal.signal(signum, _stop)
    try:
        try:
            if main is None:
                from agent.cli import main as program
            else:
                program = main
            code = program()
        finally:
            if early:
                # From here the process only ends: a stop now must not interrupt the flush below.
                # (pthread_sigmask runs a handler already pending before it returns: inside this try.)
                signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    except Stopped:
        code = EXIT_STOPPED
    _exit(code)


def _exit(code: int) -> NoReturn:
    """logsetup.exit_now if the program got as far as loading it, else flush stdio and go. Nothing
    is imported here: an import a stop cut short can leave its package half-loaded (asyncio
    without asyncio.coroutines), and importing it again fails."""
    logsetup = sys.modules.get("famfs.logsetup")  # only a module whose import finished is still there
    if logsetup is not None:
        logsetup.exit_now(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe or stream: there is no one left to tell
    os._exit(code)


if __name__ == "__main__":
    entry()
