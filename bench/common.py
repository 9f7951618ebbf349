"""What every benchmark returns: our figure, its same-run baseline, and the ratio."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TMPFS = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


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
