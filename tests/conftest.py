"""Shared fixtures: reference images from tests/data (made by upstream famfs's own code)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.harness import DATA, REFERENCE_IMAGES, materialize_reference, reference_info  # noqa: E402,F401
from famfs import env  # noqa: E402
from famfs.config import SYSTEM_CONFIG, AgentSettings, HostSettings  # noqa: E402
from fusefs.cli import DEFAULT_LOG_FILE  # noqa: E402
from famfs.units import parse_size  # noqa: E402,F401 - the one size parser


# `make test-quick` (pytest -m quick): the modules that run in-process with no mount, no daemon and
# no large image (the format, the rule book, shadow YAML, config, allocation, the fill pattern, the
# handlers' and CLIs' units, the import rules): a minute at most. `make test` runs everything.
QUICK_MODULES = frozenset({
    "test_format", "test_rulebook", "test_shadowyaml", "test_config", "test_prng", "test_alloc", "test_layering",
    "test_docs_references", "test_fuse_units", "test_agent_units", "test_demo_units", "test_robustness_parser",
    "test_systemd_units",
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quick: in the quick tier (make test-quick); given by module in conftest.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in QUICK_MODULES:  # type: ignore[attr-defined]
            item.add_marker(pytest.mark.quick)


# What the programs write by default outside a temporary directory (the host identity, the shadow,
# the mount's log, the system config) and what the README's blocks make: the suite must leave none
# of them behind (tests/test_readme.py runs those blocks under private tmpfs mounts).
HOST_PATHS = tuple(Path(path) for path in (
    HostSettings.system_uuid_file, Path(AgentSettings.shadow).parent, DEFAULT_LOG_FILE, SYSTEM_CONFIG.parent,
    "/var/tmp/famfs.img", "/var/tmp/client_uuid", "/mnt/famfs", "/mnt/client"))


@pytest.fixture(scope="session", autouse=True)
def leaves_the_host_alone() -> Iterator[None]:
    """Fails the run when it made one of HOST_PATHS (a program fell back to a default path: the
    test forgot to give it one, or the program writes where nothing asked it to)."""
    before = {path for path in HOST_PATHS if os.path.lexists(path)}
    yield
    left = [str(path) for path in HOST_PATHS if os.path.lexists(path) and path not in before]
    assert not left, (f"the suite left these on the host: {', '.join(left)} (remove them, then find the test; "
                      "or another run on this host made them meanwhile)")


@pytest.fixture
def reference_image(tmp_path: Path) -> Callable[[str], Path]:
    """Factory: reference_image("b_mixed") -> path of a fresh sparse copy of that device."""
    return lambda name: materialize_reference(name, tmp_path / f"{name}.img")


@pytest.fixture(autouse=True)
def system_uuid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private host identity for this test (never /opt/famfs), also exported to subprocesses.
    Every test has it, asked for or not: a test that forgot it would write /opt/famfs/system_uuid
    on the host (mkfs makes the file when it is missing)."""
    path = tmp_path / "host" / "system_uuid"
    monkeypatch.setenv(env.SYSTEM_UUID_FILE, str(path))
    return path
