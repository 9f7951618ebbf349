"""Shared fixtures: reference images from tests/data (made by upstream famfs's own code)."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
REFERENCE_IMAGES = ("a_empty", "b_mixed", "c_full", "d_striped")
sys.path.insert(0, str(REPO))

from agent.ctl import parse_size  # noqa: E402 - one size parser: famfsctl's (upstream's suffixes)


def reference_info(name: str) -> dict[str, str]:
    """The key=value pairs of a reference image's info.txt."""
    pairs: dict[str, str] = {}
    for word in (DATA / name / "info.txt").read_text().split():
        if "=" in word:
            key, value = word.split("=", 1)
            pairs[key] = value
    return pairs


def materialize_reference(name: str, target: Path) -> Path:
    """A whole sparse device image of reference image `name`."""
    with gzip.open(DATA / name / "meta.bin.gz") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.truncate(target, parse_size(reference_info(name)["devsize"]))
    return target


@pytest.fixture
def reference_image(tmp_path: Path) -> Callable[[str], Path]:
    """Factory: reference_image("b_mixed") -> path of a fresh sparse copy of that device."""
    return lambda name: materialize_reference(name, tmp_path / f"{name}.img")


@pytest.fixture
def system_uuid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private host identity for this test (never /opt/famfs), also exported to subprocesses."""
    path = tmp_path / "host" / "system_uuid"
    monkeypatch.setenv("FAMFS_SYSTEM_UUID_FILE", str(path))
    return path
