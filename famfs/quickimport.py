"""structlog without asyncio: a program's start-up made shorter by what it never uses.

`import structlog` loads structlog.stdlib and structlog._native, which import asyncio for their
async loggers, and asyncio imports ssl and subprocess: ~30 ms of CPU at every start (measured
with `python -X importtime` and the process's CPU time: docs/benchmarks.md), a tenth of a
client's cold start. No famfs program logs through an async logger. So, while structlog is
imported and only then, `asyncio` in sys.modules is a stand-in that loads the real asyncio the
first time one of its names is asked for: structlog's modules keep the stand-in, which forwards
every name, and any later `import asyncio` gets the real module.

This module imports only the standard library and nothing of ours.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

NAME = "asyncio"


class _Deferred(types.ModuleType):
    """asyncio, loaded on the first name asked of it."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(NAME) is self:
            del sys.modules[NAME]
        return getattr(importlib.import_module(NAME), name)


def load_structlog() -> None:
    """Import structlog with asyncio deferred, unless either is loaded already."""
    if "structlog" in sys.modules or NAME in sys.modules:
        return
    stand_in = _Deferred(NAME)
    stand_in.__spec__ = None  # the import system asks a module in sys.modules for it; None: not loading
    sys.modules[NAME] = stand_in
    try:
        importlib.import_module("structlog")
    finally:
        if sys.modules.get(NAME) is stand_in:
            del sys.modules[NAME]
