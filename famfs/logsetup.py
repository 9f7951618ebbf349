"""structlog configuration shared by every command: one event per line, key=value or JSON.

Everything else that logs goes the same way: the standard `logging` records of libraries
(pyfuse3, trio) and Python warnings are rendered by the same processors, so every line
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

from famfs import config

FORMATS = config.LOG_FORMATS
LEVELS = config.LOG_LEVELS
FOREIGN_TEXT_MAX = 1000  # a library's message longer than this is cut: some dump whole path lists


class _Printer:
    """structlog's PrintLogger, erasing a progress bar first. It writes to whatever sys.stderr is
    at the time (a test's capture, a daemon's log file), never to one bound when configured."""

    def msg(self, message: str) -> None:
        from famfs import progress  # here, not at the top: progress logs through get_logger

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


_quiet: Any = None  # the unconfigured library's logger, made on first use


def _library_default() -> Any:
    global _quiet
    if _quiet is None:
        _quiet = structlog.wrap_logger(
            _Printer(),
            processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.format_exc_info,
                        structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"],
                                                              drop_missing=True)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return _quiet


class LibraryLogger:
    """structlog's logger `name` once the program configured structlog (`configure`, or its own
    `structlog.configure`); until then warnings and errors only, on stderr, never stdout."""

    __slots__ = ("_configured",)

    def __init__(self, name: str) -> None:
        self._configured = structlog.get_logger(name)

    def __getattr__(self, method: str) -> Any:
        return getattr(self._configured if structlog.is_configured() else _library_default(), method)


def get_logger(name: str) -> Any:
    """The logger of a famfs module (see the module's docstring for where its lines go)."""
    return LibraryLogger(name)


def configure(log_format: str = "console", level: str = "info") -> None:
    """Every famfs log line from now on: `log_format` "console" (key=value) or "json", one event a
    line on stderr, `level` and above. The CLIs call it first; a program using famfs as a library
    calls it to see famfs's info events (by default it sees warnings and errors only)."""
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
