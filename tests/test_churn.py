"""`make churn` in small: a master and two clients churn one image for seconds (demo/forever.py)
while the clients' readers check every byte. Bounded (the run stops itself; the cluster harness
cleans up); no timing is asserted, only what must hold at any speed."""

from __future__ import annotations

from pathlib import Path

from demo.forever import Plan, churn, summary

SECONDS = 20.0


def test_a_short_churn_serves_no_wrong_byte_and_reclaims(tmp_path: Path) -> None:
    report = churn(Plan(seconds=SECONDS, fsck_every_s=SECONDS / 12, max_hold_s=1.0), parent=tmp_path)
    text = summary(report)
    assert report["wrong_bytes"] == 0, text
    assert report["fsck"]["clean"] >= 10 and not report["fsck"]["unclean"], text  # type: ignore[index]
    assert report["writers"]["api"]["alloc_failures_below_limit"] == 0, text  # type: ignore[index]
    assert report["writers"]["mnt"]["alloc_failures_below_limit"] == 0, text  # type: ignore[index]
    assert report["reclaim"]["files_reclaimed"] > 0, text  # type: ignore[index]
    assert report["readers"]["checks"] > 0 and not report["problems"], text  # type: ignore[index]
    assert list(tmp_path.iterdir()) == [], "the run left files behind"
