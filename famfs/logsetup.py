"""structlog configuration shared by every command: one event per line, key=value or JSON."""

from __future__ import annotations

import logging
import sys

import structlog

FORMATS = ("console", "json")  # key=value lines, or one JSON object a line
LEVELS = ("debug", "info", "warning", "error")  # what the --log-level flags offer


def configure(log_format: str = "console", level: str = "info") -> None:
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    elif log_format == "console":
        renderer = structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)
    else:
        raise SystemExit(f"log format must be console or json, not {log_format!r}")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
