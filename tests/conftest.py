"""Shared fixtures: reference images from tests/data (made by upstream famfs's own code)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.harness import DATA, REFERENCE_IMAGES, materialize_reference, reference_info  # noqa: E402,F401
from famfs import env  # noqa: E402
from famfs.units import parse_size  # noqa: E402,F401 - the one size parser


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
