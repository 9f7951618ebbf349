"""`python -m bench [--quick]` (`make bench`): every benchmark, one table, docs/benchmarks.md.

Each benchmark module exposes `run(quick: bool) -> list[bench.common.Result]`. A module that is
missing or fails is reported in the table as such, and the run exits non-zero, so a broken
benchmark is never silently left out. Without --quick the table is also written to
docs/benchmarks.md with the machine it ran on and the exact command.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Result

BENCH_DIR = Path(__file__).resolve().parent
# Always run (reported as missing if absent); any other bench/bench_*.py runs before them.
REQUIRED_MODULES = ("bench.bench_agent", "bench.bench_fuse", "bench.bench_cluster")
REPORT = BENCH_DIR.parent / "docs" / "benchmarks.md"
COLUMNS = ("name", "ours", "baseline", "ratio", "note")


@dataclass
class ModuleRun:
    module: str
    results: list[Result] = field(default_factory=list)
    problem: str = ""  # why the module produced nothing: missing, or the error it raised
    seconds: float = 0.0


def modules() -> list[str]:
    found = sorted(f"bench.{path.stem}" for path in BENCH_DIR.glob("bench_*.py"))
    return [name for name in found if name not in REQUIRED_MODULES] + list(REQUIRED_MODULES)


def run_module(module: str, quick: bool) -> ModuleRun:
    started = time.monotonic()
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            return ModuleRun(module, problem=f"import failed: {err}")
        return ModuleRun(module, problem="missing: the module does not exist yet")
    except Exception as err:  # a broken module is a row of the table too
        traceback.print_exc()
        return ModuleRun(module, problem=f"import failed: {type(err).__name__}: {err}")
    try:
        results = list(loaded.run(quick))
    except Exception as err:  # a failing benchmark is a row of the table, not the end of the run
        traceback.print_exc()
        first_line = str(err).splitlines()[0] if str(err) else ""
        return ModuleRun(module, problem=f"failed: {type(err).__name__}: {first_line} (traceback above)",
                         seconds=time.monotonic() - started)
    problem = "" if results else "returned no results"
    return ModuleRun(module, results, problem, time.monotonic() - started)


def number(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    text = f"{value:,.0f}" if magnitude >= 1000 else f"{value:.3g}" if magnitude < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def rows(runs: list[ModuleRun]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for run in runs:
        if run.problem:
            table.append((run.module, "-", "-", "-", f"NOT MEASURED: {run.problem}"))
        for result in run.results:
            baseline = f"{number(result.baseline, result.unit)} ({result.baseline_name})" if result.baseline else "-"
            ratio = f"{result.ratio:.2f}" if result.ratio is not None else "-"
            table.append((result.name, number(result.ours, result.unit), baseline, ratio, result.note))
    return table


def render_text(table: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in [COLUMNS, *table]) for column in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in [COLUMNS, *table]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(table: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(markdown_cell(cell) for cell in row) + " |" for row in table]
    return "\n".join(lines)


def machine() -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [f"CPU: {cpu}", f"cores: {os.cpu_count()}", f"kernel: {platform.system()} {platform.release()}",
            f"python: {platform.python_implementation()} {platform.python_version()}"]


def command_line() -> str:
    """As typed in the repository: the venv's interpreter relative to it when it lives inside."""
    inside = os.path.relpath(sys.executable, BENCH_DIR.parent)
    interpreter = sys.executable if inside.startswith("..") else inside
    return shlex.join([interpreter, "-m", "bench", *sys.argv[1:]])


def write_report(table: list[tuple[str, ...]], runs: list[ModuleRun], load_before: tuple[float, float, float]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = "\n".join([
        "# Benchmarks",
        "",
        f"Written by `{command_line()}` (what `make bench` runs) on {when}. Every figure has a baseline",
        "measured in the same run on the same machine; ratio = ours / baseline (for latencies lower",
        "is better, for rates higher is better).",
        "",
        "Machine: " + "; ".join(machine()),
        f"Load average (1, 5, 15 min) when the run started: {', '.join(f'{load:.2f}' for load in load_before)} "
        + ("(well above 0: other work was running on the machine just before, and may have been during the run)."
           if load_before[0] >= 1.0 else "(the machine was quiet when the run started)."),
        "",
        render_markdown(table),
        "",
        "Modules: " + ", ".join(f"{run.module} ({run.seconds:.0f} s)" for run in runs),
        "",
    ])
    REPORT.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds: keeps the benchmarks working")
    parser.add_argument("--only", action="append", choices=modules(), metavar="MODULE",
                        help="run this module alone (repeatable), as the whole run would; its rows are printed "
                             "(also as markdown, for docs/benchmarks.md), the report is not written")
    args = parser.parse_args()
    load_before = os.getloadavg()
    names = args.only or modules()
    runs = [run_module(module, args.quick) for module in names]
    table = rows(runs)
    print(render_text(table))
    if args.only:
        print(f"\nload average before: {', '.join(f'{load:.2f}' for load in load_before)}, after: "
              f"{', '.join(f'{load:.2f}' for load in os.getloadavg())}\n\n{render_markdown(table)}")
    broken = [run.module for run in runs if run.problem]
    print(f"\n{sum(len(run.results) for run in runs)} results from {len(names) - len(broken)} of {len(names)} "
          f"modules" + (f"; not measured: {', '.join(broken)}" if broken else ""))
    if not args.quick and not args.only:
        write_report(table, runs, load_before)
        print(f"written: {REPORT}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
