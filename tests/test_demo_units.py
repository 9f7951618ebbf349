"""The harness's pure helpers: percentiles, the famfsctl log-line clock, tree snapshots."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from demo.propagation import logged_append_time, percentile
from demo.trees import differences, snapshot


@pytest.mark.parametrize(("fraction", "expected"), [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0), (0.001, 1.0)])
def test_nearest_rank_percentile_reports_a_measured_sample(fraction: float, expected: float) -> None:
    samples = [float(value) for value in range(100, 0, -1)]
    assert percentile(samples, fraction) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_append_time_comes_from_the_first_line_that_names_an_appended_index() -> None:
    stderr = ("timestamp='2026-11-24T08:56:20.000000Z' level='info' event='start'\n"
              "timestamp='2026-11-24T08:56:21.603937Z' level='info' event='creat' device='img' path='f' index=39\n"
              "timestamp='2026-11-24T08:56:22.848342Z' level='info' event='mkdir' paths=['d'] first_index=42\n")
    expected = datetime(2026, 11, 24, 8, 56, 21, 603937, tzinfo=UTC).timestamp()
    assert logged_append_time(stderr) == expected
    assert logged_append_time("timestamp='2026-11-24T08:56:22.848342Z' event='mkdir' first_index=42") is not None
    assert logged_append_time("famfsctl: img: a/f1: no such file\n") is None


def test_snapshot_sees_content_mode_and_kind_and_differences_name_the_path(tmp_path: Path) -> None:
    left, right = tmp_path / "left", tmp_path / "right"
    for root in (left, right):
        (root / "d").mkdir(parents=True)
        (root / "d" / "f").write_bytes(b"same")
    assert snapshot(left) == snapshot(right)
    (right / "d" / "f").write_bytes(b"diff")
    os.chmod(right / "d", 0o2775)
    found = differences(snapshot(left), snapshot(right), ("left", "right"))
    assert [line.split(":")[0] for line in found] == ["d", "d/f"]
    assert list(snapshot(left, skip=("f",))) == ["d"]
