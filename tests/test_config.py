"""famfs-agent.toml documents every setting with its default; the examples in config/ load."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from famfs import config

REPO = Path(__file__).resolve().parent.parent
DOCUMENTED = REPO / "famfs-agent.toml"
SECTIONS = {"host": config.HostSettings, "agent": config.AgentSettings, "mount": config.MountSettings}


def test_every_setting_is_in_the_toml_with_its_default() -> None:
    documented = tomllib.loads(DOCUMENTED.read_text())
    assert set(documented) == set(SECTIONS)
    for name, section in SECTIONS.items():
        defaults = {f.name: f.default for f in dataclasses.fields(section)}
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
    with pytest.raises(SystemExit, match="unknown key 'poll_max_mx'"):
        config.load(str(bad))
    bad.write_text("[agent]\nwake_hint = 1\n")
    with pytest.raises(SystemExit, match="wake_hint must be bool"):
        config.load(str(bad))
