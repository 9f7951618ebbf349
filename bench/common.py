"""What every benchmark returns: our figure, its same-run baseline, and the ratio."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from famfs import env

TMPFS = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
# Where a FUSE daemon and the program making its requests both run, when a benchmark pins them
# (the last CPU this process may use): on the 2-core VM these ran on, a reply that wakes the
# requester on the other CPU made a 4 KiB read take 3x as long (12k against 34k reads/s), and
# where the scheduler put the two decided a run more than the file system did.
CPU = max(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Result:
    name: str  # e.g. "replay 8 MiB log (15,420 entries)"
    ours: float
    unit: str  # e.g. "entries/s", "ms", "GB/s"
    baseline: float | None = None  # measured in the same run; None where there is none
    baseline_name: str = ""  # what the baseline is, e.g. "tmp+rename loop"
    note: str = ""  # target, RSS, anything a reader needs

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        return self.ours / self.baseline


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A work directory on tmpfs (where there is one: shadows live there in production), removed
    afterwards. Mode 0755, as a shadow directory's parent is, so a mount's users can reach it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=TMPFS))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pin(pid: int) -> None:
    """Every thread of process `pid` on CPU (a thread it starts later inherits that)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), {CPU})


@contextlib.contextmanager
def pinned() -> Iterator[None]:
    """This thread on CPU while the block runs."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPU})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def host_identity() -> Iterator[None]:
    """The agents a benchmark starts join as one host whose identity lives in a scratch
    directory, unless $FAMFS_SYSTEM_UUID_FILE names one already: on a fresh machine there is no
    /opt/famfs/system_uuid, and only famfsctl mkfs makes that (docs/agent.md, "The host record")."""
    if os.environ.get(env.SYSTEM_UUID_FILE):
        yield
        return
    with scratch("bench_host_") as home:
        os.environ[env.SYSTEM_UUID_FILE] = str(home / "system_uuid")
        try:
            yield
        finally:
            del os.environ[env.SYSTEM_UUID_FILE]
