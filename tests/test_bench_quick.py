"""`python -m bench --quick` keeps every benchmark working: it runs each module with tiny sizes and
prints the full table. No timing is asserted here (figures belong to docs/benchmarks.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from famfs import env

REPO = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^name\s+ours\s+baseline\s+ratio\s+note$")
SUMMARY = re.compile(r"^(\d+) results from (\d+) of (\d+) modules$")
FIGURE = re.compile(r"\d")


def test_quick_bench_prints_a_full_table_from_every_module() -> None:
    report = REPO / "docs" / "benchmarks.md"
    report_before = report.stat().st_mtime_ns if report.exists() else None
    # As on a fresh host: no identity named (the session's own check fails the run if one is left).
    fresh = {name: value for name, value in os.environ.items() if name != env.SYSTEM_UUID_FILE}
    run = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=fresh)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert HEADER.match(lines[0]), lines[:2]
    summary = next(match for line in lines if (match := SUMMARY.match(line)))
    results, modules_ok, modules = map(int, summary.groups())
    assert modules_ok == modules >= 3  # agent, fuse and cluster at least
    table = lines[2:2 + results]
    assert len(table) == results >= modules
    assert not any("NOT MEASURED" in row for row in table)
    for row in table:
        name, ours = re.split(r"\s{2,}", row)[:2]
        assert FIGURE.search(ours), f"no figure for {name!r}: {row}"
    # --quick only keeps the benchmarks working: the published report is left alone.
    assert (report.stat().st_mtime_ns if report.exists() else None) == report_before
