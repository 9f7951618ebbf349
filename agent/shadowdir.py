"""The shadow directory's layout: the contract between famfs-agent, famfsctl and famfs-fuse-mount
(docs/architecture.md). Every name in it, and how another process finds the device, lives here.

Kept free of heavy imports: famfsctl and famfs-fuse-mount read it at start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = "root"  # the tree the mount serves
META_DIR = ".meta"  # upstream's, inside root/; reserved: no log entry may name it
AGENT_DIR = ".agent"  # agent state: never inside root/
STAGING = "staging"  # in .agent/: everything is built here, then renamed into root/
STATE_FILE = "state.json"  # in .agent/: the cursor, and the device other processes read
DAXDEVS_FILE = "daxdevs.json"
DIRS_JOURNAL = "dirs.jsonl"  # one [index, relpath] per applied MKDIR, in log order
LOCK_FILE = "lock"  # flock held by the running agent; holds its pid
SOCKET = "sock"  # famfs-fuse-mount's REST socket (upstream's name): the C CLI needs it to know the mount
SHADOW_XATTR = "user.famfs.shadow"  # a mount's root answers it with the shadow dir (as upstream's)


def state_path(shadow_dir: str | os.PathLike[str]) -> Path:
    return Path(shadow_dir) / AGENT_DIR / STATE_FILE


def recorded_device(shadow_dir: str | os.PathLike[str]) -> str:
    """The device famfs-agent recorded in `<shadow>/.agent/state.json` (AgentState.device).

    FileNotFoundError if the agent never ran there; ValueError, naming the file, if it names no
    usable device. The agent writes an absolute path: a relative one cannot be trusted.
    """
    path = state_path(shadow_dir)
    try:
        device = json.loads(path.read_bytes()).get("device")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: cannot read the device from it: {err}") from None
    if not device:
        raise ValueError(f"{path}: names no device")
    if not isinstance(device, str) or not os.path.isabs(device):
        raise ValueError(f"{path}: device {device!r} is not an absolute path (relative to where famfs-agent ran?)")
    return device
