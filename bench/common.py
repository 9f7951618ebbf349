"""What every benchmark returns: our figure, its same-run baseline, and the ratio."""

from __future__ import annotations

from dataclasses import dataclass


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
