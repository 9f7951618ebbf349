"""Settings: defaults here, overridden by famfs-agent.toml, overridden by command-line flags.

Every key is declared once below with its default and its allowed values (`setting`). The
documented copies are famfs-agent.toml (every key with its default) and the table in
docs/config.md (every key with its allowed values); tests/test_config.py checks both against
this module. A config file with an unknown section or key, a wrong type or a value out of range
raises ConfigError: one line, and each program's documented exit code for an unusable set-up.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from famfs import env

CONFIG_ENV = env.AGENT_CONFIG
SYSTEM_CONFIG = Path("/etc/famfs/famfs-agent.toml")
CONFIG_FLAG_HELP = f"famfs-agent.toml to read (default: ${CONFIG_ENV}, then {SYSTEM_CONFIG} if it exists)"
LOG_FORMATS = ("console", "json")  # key=value lines, or one JSON object a line
LOG_LEVELS = ("debug", "info", "warning", "error")
CACHE_MODES = ("direct", "auto", "always")  # docs/consistency.md
COHERENCE_MODES = ("coherent", "flush")  # [host] coherence: famfs.cacheflush
POLL_RANGE = (0.001, 60_000.0)  # milliseconds: a microsecond up to a minute
SECONDS_RANGE = (0.0, 31_536_000.0)  # up to a year, as upstream's longest cache timeout
LOOPBACK = "127.0.0.1"  # where an address without a host (":PORT") binds
RULE = "famfs.config.rule"  # the key of a field's Rule in its metadata


class ConfigError(Exception):
    """A config file, or a value given for one of its keys, that cannot be used."""


@dataclass(frozen=True, slots=True)
class Rule:
    """The values a key allows: a closed numeric range, a fixed set of words, or a non-empty text."""

    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    address: bool = False  # HOST:PORT, :PORT (loopback) or [V6]:PORT, or empty (off)
    paths: bool = False  # a list of non-empty paths

    def describe(self, default: Any) -> str:
        """The allowed values of a key with this default, as docs/config.md's table shows them."""
        if isinstance(default, bool):
            return "true \\| false"
        if self.choices:
            return " \\| ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"{_number(self.low)} .. {_number(self.high)}"
        if self.address:
            return "HOST:PORT, or :PORT (127.0.0.1), or empty: off"
        if self.paths:
            return "a list of paths"
        return "non-empty path" if self.nonempty else "a path, or empty: not set"

    def check(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, not {value!r}"
        if self.low is not None and self.high is not None and not (
                math.isfinite(value) and self.low <= value <= self.high):
            return f"must be between {_number(self.low)} and {_number(self.high)}, not {value!r}"
        if self.nonempty and not value:
            return "must not be empty"
        if self.paths and not all(isinstance(path, str) and path for path in value):
            return f"must be a list of non-empty paths, not {list(value)!r}"
        if self.address and value:
            try:
                parse_address(value)
            except ValueError as err:
                return str(err)
        return None


def parse_address(address: str) -> tuple[str, int]:
    """"HOST:PORT", ":PORT" or "[V6]:PORT" -> (host, port); ValueError if not. No host means
    loopback: a daemon's figures reach other machines only when an address names a host that
    does (0.0.0.0, [::], an interface's address)."""
    host, colon, port_text = address.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"must be HOST:PORT or :PORT with a port 0-65535, not {address!r}")
    host = host.removeprefix("[").removesuffix("]")
    return host or LOOPBACK, int(port_text)


def _number(value: float) -> str:
    return f"{value:,.0f}".replace(",", "_") if value == int(value) else f"{value:g}"


def setting(default: Any, **rule: Any) -> Any:
    """A settings field: its default and the Rule its values must follow."""
    return field(default=default, metadata={RULE: Rule(**rule)})


@dataclass
class HostSettings:
    system_uuid_file: str = setting("/opt/famfs/system_uuid", nonempty=True)
    # Where this host looks for a multi-device file system's devices, besides /dev/dax* and
    # /dev/pmem* (docs/devices.md): image files or device paths, each found by its superblock.
    devices: tuple[str, ...] = setting((), paths=True)
    log_format: str = setting("console", choices=LOG_FORMATS)
    log_level: str = setting("info", choices=LOG_LEVELS)
    coherence: str = setting("coherent", choices=COHERENCE_MODES)  # "flush": shared memory without hardware coherence


@dataclass
class AgentSettings:
    device: str = setting("")
    shadow: str = setting("/run/famfs/shadow", nonempty=True)
    poll_min_ms: float = setting(0.5, low=POLL_RANGE[0], high=POLL_RANGE[1])  # poll interval while entries arrive
    poll_max_ms: float = setting(2.0, low=POLL_RANGE[0], high=POLL_RANGE[1])  # idle poll interval, polling alone
    hint_poll_max_ms: float = setting(100.0, low=POLL_RANGE[0], high=POLL_RANGE[1])  # idle, with the write hint
    wake_hint: bool = setting(True)  # watch an image-file device with inotify (IN_MODIFY) to wake at once
    inflight_retry_ms: float = setting(200.0, low=0.0, high=POLL_RANGE[1])  # how long a bad tail entry may be in flight
    batch_max: int = setting(4096, low=1, high=1_000_000)  # entries applied between two cursor writes
    progress: bool = setting(True)  # progress of long one-shot replays
    metrics_address: str = setting("", address=True)  # HOST:PORT for Prometheus metrics while following; "" = off
    health_max_lag_s: float = setting(5.0, low=0.0, high=SECONDS_RANGE[1])  # `health`: how long the agent may take to reach the tail
    # Reclaim (docs/reclaim.md): a following agent renews its host record this often, and its
    # mount serves bytes for serve_window seconds after the start of the last renewal.
    heartbeat_interval: float = setting(1.0, low=0.01, high=60.0)
    serve_window: float = setting(10.0, low=0.05, high=3600.0)
    # Shadow files no logged entry names may stay this long, the log not moving, before the idle
    # check rebuilds the tree: upstream's CLI fills a new file before it logs it (docs/agent.md).
    unlogged_grace_s: float = setting(300.0, low=0.0, high=SECONDS_RANGE[1])


@dataclass
class MountSettings:
    mountpoint: str = setting("")
    cache: str = setting("auto", choices=CACHE_MODES)
    timeout: float = setting(3600.0, low=SECONDS_RANGE[0], high=SECONDS_RANGE[1])  # entry/attr timeout
    negative_timeout: float = setting(3600.0, low=SECONDS_RANGE[0], high=SECONDS_RANGE[1])
    fallback_rescan_s: float = setting(60.0, low=SECONDS_RANGE[0], high=SECONDS_RANGE[1])  # 0: never
    allow_other: bool = setting(False)
    read_only: bool = setting(False)
    # famfs_fused's behaviour, for sites whose master tool is upstream's famfs CLI: namespace
    # changes through the mount are refused on the master too (docs/fusefs.md, "Upstream's CLI on our mount").
    read_only_namespace: bool = setting(False)
    metrics_address: str = setting("", address=True)  # HOST:PORT for Prometheus metrics; "" = off
    staging_mib: int = setting(256, low=0, high=1_048_576)  # master: new files' bytes held until their last close
    apply_wait_s: float = setting(10.0, low=0.1, high=3600.0)  # master: how long a change waits for the agent to play it


@dataclass
class MasterSettings:
    """The reclaim coordinator's (docs/reclaim.md; famfsctl reclaimd)."""

    host_lease: float = setting(30.0, low=1.0, high=86_400.0)  # seconds: admission, silence, left hosts
    auto_fence: bool = setting(False)  # fence a host silent for a lease (else log host_silent and wait)
    reclaim_poll: float = setting(0.2, low=0.01, high=60.0)  # seconds between two reads of the host table
    reclaim_wait: float = setting(10.0, low=0.0, high=3600.0)  # seconds an allocation waits for space being reclaimed; 0: never
    compact_below: float = setting(0.25, low=0.0, high=0.9)  # compact the log when fewer of its slots than this are free; 0: never
    metrics_address: str = setting("", address=True)  # HOST:PORT for the coordinator's Prometheus metrics; "" = off


@dataclass
class Settings:
    host: HostSettings = field(default_factory=HostSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    mount: MountSettings = field(default_factory=MountSettings)
    master: MasterSettings = field(default_factory=MasterSettings)
    source: str | None = None  # the file these came from, if any
    given: set[str] = field(default_factory=set)  # "section.key" of every key the file set


SECTIONS: dict[str, type[Any]] = {"host": HostSettings, "agent": AgentSettings, "mount": MountSettings,
                                  "master": MasterSettings}


def rule(section: type[Any], key: str) -> Rule:
    return next(f.metadata[RULE] for f in dataclasses.fields(section) if f.name == key)


def check(section: type[Any], key: str, value: Any, where: str) -> None:
    """Raise ConfigError when `value` is not allowed for `key` (also for flags and -o options)."""
    why = rule(section, key).check(value)
    if why is not None:
        raise ConfigError(f"{where}: {key} {why}")


def config_path(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if env_path := os.environ.get(CONFIG_ENV):
        return Path(env_path)
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
        raise ConfigError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: {getattr(err, 'strerror', None) or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    for section_name, values in data.items():
        if section_name not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"config file {path}: unknown section [{section_name}]")
        _overlay(getattr(settings, section_name), values, f"config file {path} [{section_name}]")
        settings.given.update(f"{section_name}.{key}" for key in values)
    settings.source = str(path)
    return settings


def _overlay(section: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}")
        default = getattr(section, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if type(value) is not type(default):
            raise ConfigError(f"{where}: {key} must be {type(default).__name__}, not {value!r}")
        check(type(section), key, value, where)
        setattr(section, key, value)
