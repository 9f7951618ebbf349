"""famfs-agent.toml documents every setting with its default, docs/config.md every allowed range; the
examples in config/ load; bad values are refused with one line by every program."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from famfs import config

REPO = Path(__file__).resolve().parent.parent
DOCUMENTED = REPO / "famfs-agent.toml"
SECTIONS = config.SECTIONS


def test_every_setting_is_in_the_toml_with_its_default() -> None:
    documented = tomllib.loads(DOCUMENTED.read_text())
    assert set(documented) == set(SECTIONS)
    for name, section in SECTIONS.items():
        # (a TOML array is a list; the setting's default is the tuple it becomes)
        defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                    for f in dataclasses.fields(section)}
        assert documented[name] == defaults, name
        for key, value in documented[name].items():
            assert type(value) is type(defaults[key]), (name, key)


def test_every_key_has_a_comment_above_it() -> None:
    lines = DOCUMENTED.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\w+ = ", line):
            assert lines[number - 1].startswith("#"), f"famfs-agent.toml line {number + 1}: {line} has no comment"


def test_the_documented_file_loads_to_the_defaults() -> None:
    settings = config.load(str(DOCUMENTED))
    assert (settings.host, settings.agent, settings.mount) == (config.HostSettings(), config.AgentSettings(),
                                                               config.MountSettings())


@pytest.mark.parametrize("example", sorted((REPO / "config").glob("*.toml")), ids=lambda path: path.name)
def test_example_configs_load(example: Path) -> None:
    settings = config.load(str(example))
    assert settings.agent.device and settings.agent.shadow and settings.mount.mountpoint


def test_unknown_key_or_wrong_type_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\npoll_max_mx = 3.0\n")
    with pytest.raises(config.ConfigError, match="unknown key 'poll_max_mx'"):
        config.load(str(bad))
    bad.write_text("[agent]\nwake_hint = 1\n")
    with pytest.raises(config.ConfigError, match="wake_hint must be bool"):
        config.load(str(bad))


def test_the_table_of_allowed_values_matches_the_code() -> None:
    """docs/config.md's table: one row per key, in order, with its type, default and range."""
    rows = [line for line in (REPO / "docs" / "config.md").read_text().splitlines() if line.startswith("| [")]
    expected = []
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            default = f.default
            shown = f'"{default}"' if isinstance(default, str) else str(default).lower() if isinstance(default, bool) \
                else repr(default)
            expected.append(f"| [{name}] | `{f.name}` | {type(default).__name__} | `{shown}` | "
                            f"{config.rule(section, f.name).describe(default)} |")
    assert rows == expected


BAD_VALUES = [
    ("agent", "batch_max", "0", "batch_max must be between 1 and 1_000_000"),
    ("agent", "batch_max", "-5", "batch_max must be between 1 and 1_000_000"),
    ("agent", "shadow", '""', "shadow must not be empty"),
    ("agent", "poll_max_ms", "-1.0", "poll_max_ms must be between 0.001 and 60_000"),
    ("agent", "poll_min_ms", "nan", "poll_min_ms must be between"),
    ("agent", "inflight_retry_ms", "-0.5", "inflight_retry_ms must be between 0 and 60_000"),
    ("host", "log_level", '"verbose"', "log_level must be one of debug, info, warning, error, not 'verbose'"),
    ("host", "log_format", '"text"', "log_format must be one of console, json"),
    ("host", "system_uuid_file", '""', "system_uuid_file must not be empty"),
    ("mount", "timeout", "-3", "timeout must be between 0 and 31_536_000"),
    ("mount", "fallback_rescan_s", "inf", "fallback_rescan_s must be between"),
    ("mount", "cache", '"sometimes"', "cache must be one of direct, auto, always"),
]


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD_VALUES, ids=lambda v: str(v)[:20])
def test_out_of_range_values_are_refused(tmp_path: Path, section: str, key: str, value: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(config.ConfigError, match=re.escape(f"config file {bad} [{section}]: {message}")):
        config.load(str(bad))


@pytest.mark.parametrize(("program", "status"), [("famfsctl", 2), ("famfs-agent", 2), ("famfs-fuse-mount", 1)])
def test_every_program_refuses_a_bad_config_with_one_line(tmp_path: Path, program: str, status: int) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nbatch_max = 0\n")
    args = {"famfsctl": ["status", "--config", bad, "x.img"], "famfs-agent": ["--config", bad, "x.img"],
            "famfs-fuse-mount": ["--config", bad, tmp_path]}[program]
    done = subprocess.run([str(Path(sys.executable).parent / program), *map(str, args)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == status and done.stdout == ""
    assert done.stderr == f"{program}: config file {bad} [agent]: batch_max must be between 1 and 1_000_000, not 0\n"
