"""An Arrow table in famfs: the master writes it straight into device memory through famfs.Master,
a client opens it and runs a query. Shared by the demo (`make demo`) and bench/bench_library.py.

`python -m demo.arrow_data query HOW PATH [DEVICE]` is the client, run as its own process so its
anonymous memory (RssAnon) is its own: one JSON line with the open and scan times and how much
RssAnon grew. HOW is `famfs` (famfs.open: zero copies), `file` (pyarrow.ipc.open_file on a
path: read into memory) or `mmap` (pyarrow.memory_map on a path: the kernel's page cache).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy
import pyarrow
import pyarrow.compute
import pyarrow.ipc

import famfs

ROWS_PER_BATCH = 1 << 20
SCHEMA = pyarrow.schema([("id", pyarrow.int64()), ("value", pyarrow.float64())])  # 16 bytes a row
HOWS = ("famfs", "file", "mmap")


def batches(rows: int) -> Iterator[pyarrow.RecordBatch]:
    """`rows` rows of numbers, a batch at a time (the writer never holds the whole table)."""
    for start in range(0, rows, ROWS_PER_BATCH):
        ids = numpy.arange(start, min(rows, start + ROWS_PER_BATCH), dtype=numpy.int64)
        yield pyarrow.record_batch([ids, ids * 0.5], schema=SCHEMA)


def ipc_size(rows: int) -> int:
    """The bytes of the IPC file of `rows` rows (famfs files have their size fixed at creation)."""
    sink = pyarrow.MockOutputStream()
    with pyarrow.ipc.new_file(sink, SCHEMA) as writer:
        for batch in batches(rows):
            writer.write_batch(batch)
    return int(sink.size())


def write_table(master: famfs.Master, relpath: str, rows: int) -> famfs.NewFile:
    """Write the table's IPC file into device memory through the mapping, then commit it."""
    with master.create(relpath, ipc_size(rows)) as new:
        sink = pyarrow.FixedSizeBufferWriter(pyarrow.py_buffer(new.buffer))
        with pyarrow.ipc.new_file(sink, SCHEMA) as writer:
            for batch in batches(rows):
                writer.write_batch(batch)
        sink.close()
    return new


def expected_sum(rows: int) -> float:
    return rows * (rows - 1) / 4  # sum of id * 0.5


@dataclass(frozen=True)
class QueryReport:
    how: str
    rows: int
    table_bytes: int
    open_s: float
    scan_s: float
    rss_anon_growth: int  # bytes

    def line(self) -> str:
        return (f"{self.how:>5}: opened in {self.open_s * 1e3:7.2f} ms, sum(value) over {self.rows:,} rows in "
                f"{self.scan_s * 1e3:7.1f} ms; RssAnon +{self.rss_anon_growth / 2**20:6.1f} MiB "
                f"(table {self.table_bytes / 2**20:.0f} MiB)")


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def query(how: str, path: str, device: str | None = None) -> QueryReport:
    """Open the table one way, sum a column, and say what it cost in time and anonymous memory."""
    open_famfs = famfs.open  # loaded before the clock starts, as pyarrow is
    before = rss_anon()
    start = time.perf_counter()
    mapped = None
    if how == "famfs":
        mapped = open_famfs(path, device=device)
        source: object = pyarrow.py_buffer(mapped.buffer)
    elif how == "mmap":
        source = pyarrow.memory_map(path)
    else:
        source = path
    table = pyarrow.ipc.open_file(source).read_all()
    opened = time.perf_counter()
    total = pyarrow.compute.sum(table.column("value")).as_py()
    scanned = time.perf_counter()
    if total != expected_sum(table.num_rows):
        raise RuntimeError(f"{path}: sum {total}, expected {expected_sum(table.num_rows)}: wrong bytes")
    report = QueryReport(how, table.num_rows, table.nbytes, opened - start, scanned - opened, rss_anon() - before)
    del table, source
    if mapped is not None:
        mapped.close()
    return report


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or argv[0] != "query" or argv[1] not in HOWS:
        print(f"usage: python -m demo.arrow_data query {{{','.join(HOWS)}}} PATH [DEVICE]", file=sys.stderr)
        return 2
    print(json.dumps(asdict(query(argv[1], argv[2], argv[3] if len(argv) == 4 else None))))
    return 0


def run_query(argv_prefix: list[str], how: str, path: str, device: str | None = None) -> QueryReport:
    """The query as its own process (argv_prefix: how to start Python on that host)."""
    done = subprocess.run([*argv_prefix, "-m", "demo.arrow_data", "query", how, path, *([device] if device else [])],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"query {how} {path} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return QueryReport(**json.loads(done.stdout.splitlines()[-1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
