"""structlog configuration shared by every command: one event per line, key=value or JSON.

Everything else that logs goes the same way: the standard `logging` records of libraries
(pyfuse3, trio, watchdog) and Python warnings are rendered by the same processors, so every line
on stderr (or in the daemon's log file) has one format. A drawn progress bar is erased before a
line is written (famfs/progress.py).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, NoReturn

import structlog

from famfs import config, progress

FORMATS = config.LOG_FORMATS
LEVELS = config.LOG_LEVELS
FOREIGN_TEXT_MAX = 1000  # a library's message longer than this is cut: some dump whole path lists


class _Printer:
    """structlog's PrintLogger, erasing a progress bar first. It writes to whatever sys.stderr is
    at the time (a test's capture, a daemon's log file), never to one bound when configured."""

    def msg(self, message: str) -> None:
        progress.clear_bar()
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _cut_foreign(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    text = event.get("event")
    if isinstance(text, str) and len(text) > FOREIGN_TEXT_MAX:
        event["event"] = f"{text[:FOREIGN_TEXT_MAX]}... ({len(text)} characters)"
    return event


class _Handler(logging.Handler):
    """Hands a standard-library record to the stdlib-backed renderer, onto our printer."""

    def __init__(self, formatter: logging.Formatter, printer: _Printer) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.printer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def configure(log_format: str = "console", level: str = "info") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if log_format == "json" else
        structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"], drop_missing=True))
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    threshold = logging.getLevelNamesMapping()[level.upper()]
    printer = _Printer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: printer,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _cut_foreign],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Handler(formatter, printer))
    root.setLevel(max(threshold, logging.WARNING))  # libraries' info chatter is not ours to show
    logging.captureWarnings(True)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` without the interpreter's teardown: 20 to 30 ms of freeing
    objects and modules the kernel frees anyway, a tenth of a client's cold start. For a command's
    very end only, once every file it wrote is closed: what Python still buffers (stdout, stderr,
    logging's handlers) is flushed here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe or stream: there is no one left to tell
    os._exit(code)
