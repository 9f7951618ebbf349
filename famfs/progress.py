"""Progress of long work (copies, fills, verifies, log replays), shared by every program.

On a terminal: one bar on stderr with the count, the rate and the time left, redrawn at most
every DRAW_PERIOD_S; a log line printed meanwhile first erases the bar (famfs/logsetup.py calls
`clear_bar`), so the two never share a line. Elsewhere (a pipe, a journal): a `progress` log
event every LOG_PERIOD_S, and none at all for work that ends sooner.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from famfs import logsetup
from famfs.units import format_rate, format_size

DRAW_PERIOD_S = 0.2
LOG_PERIOD_S = 5.0
BAR_WIDTH = 30

log = logsetup.get_logger("famfs")
_drawn: TextIO | None = None  # the stream holding a drawn bar, erased before any log line


def clear_bar() -> None:
    """Erase a drawn bar: called before a log line goes to stderr."""
    global _drawn
    if _drawn is not None:
        _drawn.write("\r\033[K")
        _drawn.flush()
        _drawn = None


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Progress of `what` from position `start` to `stop`, counted in `unit` ("bytes" or
    "entries"). `bar`: draw on `stream` (default: when it is a terminal); else log periodic events."""

    def __init__(self, what: str, stop: int, *, unit: str = "bytes", start: int = 0, bar: bool | None = None,
                 stream: TextIO = sys.stderr) -> None:
        self.what, self.start, self.total, self.unit, self.stream = what, start, stop - start, unit, stream
        self.bar = stream.isatty() if bar is None else bar
        self.done = 0
        self.started = time.monotonic()
        self.last_shown = self.started

    def _amount(self, count: float) -> str:
        return format_size(int(count)) if self.unit == "bytes" else f"{int(count):,}"

    def _rate(self, rate: float) -> str:
        return format_rate(rate) if self.unit == "bytes" else f"{rate:,.0f} {self.unit}/s"

    def advance(self, count: int) -> None:
        self.update(self.start + self.done + count)

    def update(self, position: int) -> None:
        global _drawn
        done = self.done = position - self.start
        now = time.monotonic()
        if now - self.last_shown < (DRAW_PERIOD_S if self.bar else LOG_PERIOD_S):
            return
        self.last_shown = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else None
        eta = _duration(left) if left is not None else "?"
        if self.bar:
            filled = BAR_WIDTH * min(done, self.total) // max(self.total, 1)
            counted = "" if self.unit == "bytes" else f" {self.unit}"
            self.stream.write(f"\r{self.what} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self._amount(done)}/"
                              f"{self._amount(self.total)}{counted}, {self._rate(rate)}, ETA {eta}\033[K")
            self.stream.flush()
            _drawn = self.stream
        else:
            log.info("progress", what=self.what, done=self._amount(done), total=self._amount(self.total),
                     rate=self._rate(rate), eta=eta)

    def finish(self) -> None:
        if self.bar:
            clear_bar()
