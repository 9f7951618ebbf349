"""Settings: defaults here, overridden by famfs-agent.toml, overridden by command-line flags.

The documented copy of every key and its default is famfs-agent.toml at the top of the repo;
tests/test_config.py checks that it agrees with the defaults below.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from famfs import env

CONFIG_ENV = env.AGENT_CONFIG
SYSTEM_CONFIG = Path("/etc/famfs/famfs-agent.toml")
CONFIG_FLAG_HELP = f"famfs-agent.toml to read (default: ${CONFIG_ENV}, then {SYSTEM_CONFIG} if it exists)"


@dataclass
class HostSettings:
    system_uuid_file: str = "/opt/famfs/system_uuid"
    log_format: str = "console"  # console (key=value) or json
    log_level: str = "info"


@dataclass
class AgentSettings:
    device: str = ""
    shadow: str = "/run/famfs/shadow"
    poll_min_ms: float = 0.5  # poll interval while entries are arriving
    poll_max_ms: float = 2.0  # idle poll interval when polling alone (devdax, pmem)
    hint_poll_max_ms: float = 100.0  # idle poll interval when the image-file write hint can wake us
    wake_hint: bool = True  # watch an image-file device with inotify (IN_MODIFY) to wake at once
    inflight_retry_ms: float = 200.0  # how long a bad entry at the tail may be in flight
    batch_max: int = 4096  # entries applied between two cursor writes
    progress: bool = True  # progress bar for long one-shot replays on a terminal
    metrics_address: str = ""  # HOST:PORT for Prometheus metrics while following; "" = off
    health_max_lag_s: float = 5.0  # `famfs-agent health`: how long the agent may take to reach the log's tail


@dataclass
class MountSettings:
    mountpoint: str = ""
    cache: str = "auto"  # direct | auto | always (docs/consistency.md)
    timeout: float = 3600.0  # entry/attr timeout, seconds: invalidation keeps it right
    negative_timeout: float = 3600.0  # cached negative lookups, seconds
    fallback_rescan_s: float = 60.0  # full reconcile period, bounding a lost notification
    allow_other: bool = False
    read_only: bool = False
    metrics_address: str = ""  # HOST:PORT for Prometheus metrics; "" = off


@dataclass
class Settings:
    host: HostSettings = field(default_factory=HostSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    mount: MountSettings = field(default_factory=MountSettings)
    source: str | None = None  # the file these came from, if any


def config_path(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load(explicit: str | None = None) -> Settings:
    """Defaults, overlaid with the config file (explicit path, $FAMFS_AGENT_CONFIG, /etc/famfs)."""
    settings = Settings()
    path = config_path(explicit)
    if path is None:
        return settings
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as err:
        raise SystemExit(f"config file {path}: {err}") from None
    for section_name, values in data.items():
        section = getattr(settings, section_name, None)
        if section_name == "source" or not dataclasses.is_dataclass(section) or not isinstance(values, dict):
            raise SystemExit(f"config file {path}: unknown section [{section_name}]")
        _overlay(section, values, f"{path} [{section_name}]")
    settings.source = str(path)
    return settings


def _overlay(section: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise SystemExit(f"config file {where}: unknown key {key!r}")
        default = getattr(section, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise SystemExit(f"config file {where}: {key} must be {type(default).__name__}, not {value!r}")
        setattr(section, key, value)
