"""famfs: the core every famfs-agent program shares (docs/architecture.md), and its public
Python API (docs/library.md):

    famfs.open(path, mode="r", wait=0)    a famfs file mapped from the device, zero-copy (wait: for the agent)
    famfs.Master(device)                  the master's batch API: mkdir, create, remove, batch()
    famfs.logsetup.configure(level=...)   show famfs's log events (by default: warnings, on stderr)

The on-media format, device access, the log, the shadow YAML and the shadow directory's
contract, identity, configuration, logging set-up, and the rule book. The master's tools live in
`famfs.master`; the follower in `agent`, the mount in `fusefs`; none of them is imported here:
the API's names load on first use, so the programs that only import the core never pay for them
(and the follower and the mount never load the writer).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["open", "MappedFile", "ImageTruncated", "Master", "NewFile", "MasterError", "logsetup"]


def __getattr__(name: str) -> Any:
    if name in ("open", "MappedFile", "ImageTruncated"):
        from famfs import mapping

        return getattr(mapping, name)
    if name in ("Master", "NewFile", "MasterError"):
        from famfs.master import api

        return getattr(api, name)
    if name == "logsetup":  # a submodule, imported here by name (a from-import would ask __getattr__ again)
        return importlib.import_module("famfs.logsetup")
    raise AttributeError(f"module 'famfs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
