"""The harness's pure helpers: percentiles, the famfsctl log-line clock, tree snapshots, a churn
reader's errors matched with its host's logs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from demo import churn_errors
from demo.forever import Run
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


MOUNT_LOG = (
    "--- 23:01:50 famfs-fuse-mount --foreground\n"
    "timestamp='2026-12-04T23:01:50.100000Z' level='info' event='mounted'\n"
    "timestamp='2026-12-04T23:01:51.120000Z' level='error' event='bad shadow file, served as EIO' "
    "shadow_path='/dev/shm/s/client1/root/api/small/s3254' reason='deleted before it was read'\n"
    "timestamp='2026-12-04T23:01:59.000000Z' level='warning' event='not serving bytes' errno='EIO' "
    "reason='the agent\\'s lease expired'\n"
)
AGENT_LOG = ('{"timestamp": "2026-12-04T23:01:51.050000Z", "level": "info", "event": "played", "entries": 96}\n'
             '{"timestamp": "2026-12-04T23:05:00.000000Z", "level": "info", "event": "later"}\n')


def fake_cluster(tmp_path: Path) -> Any:
    """What churn_errors reads of a demo.cluster.Cluster: each host's name, home and two logs."""
    home = tmp_path / "client1"
    home.mkdir()
    (home / "mount.log").write_text(MOUNT_LOG)
    (home / "agent.log").write_text(AGENT_LOG)
    (home / "reader0.log").write_text("")
    host = SimpleNamespace(name="client1", home=home, mount_log=home / "mount.log", agent_log=home / "agent.log")
    return SimpleNamespace(hosts=[host])


def test_a_reader_error_is_explained_by_its_hosts_mount_log_and_kept_with_it(tmp_path: Path) -> None:
    cluster = fake_cluster(tmp_path)
    events = [{"host": "client1", "via": "read", "at": "2026-12-04T23:01:51.123000Z", "relpath": "api/small/s3254",
               "op": "open", "errno": "EIO", "message": "[Errno 5] Input/output error"},
              {"host": "client1", "via": "map", "at": "2026-12-04T23:03:00.000000Z", "relpath": "api/d1/f2",
               "op": "famfs.open", "errno": "EIO", "message": "[Errno 5] Input/output error"},
              {"host": "client1", "via": "map", "at": "2026-12-04T23:01:51.200000Z", "relpath": "api/d2/f3",
               "op": "famfs.open", "errno": "EIO", "message": "[Errno 5] Input/output error"}]
    churn_errors.classify(events, cluster)
    assert events[0]["explanation"] == "a shadow file the mount refused as bad: deleted before it was read"
    assert events[1]["explanation"] == churn_errors.UNEXPLAINED  # nothing logged within the window
    assert events[2]["explanation"] == churn_errors.UNEXPLAINED  # near, but a refusal of another file
    kept_in = tmp_path / "kept"
    kept_in.mkdir()
    kept = churn_errors.keep(cluster, events, kept_in, ["2 reader errors"])
    assert kept.parent == kept_in
    assert sorted(path.name for path in (kept / "client1").iterdir()) == ["agent.log", "mount.log", "reader0.log"]
    text = (kept / "errors.txt").read_text()
    assert text.startswith("kept because: 2 reader errors\n")
    assert "== client1 read: open api/small/s3254 at 2026-12-04T23:01:51.123000Z: EIO" in text
    assert "== client1 map: famfs.open api/d2/f3" in text
    assert "deleted before it was read" in text and '"event": "played"' in text
    assert "not serving bytes" not in text and "later" not in text  # too far from either error


def test_a_reader_that_does_not_stop_is_described_with_its_mount(tmp_path: Path) -> None:
    """demo/forever.py's look at a stuck reader: each process's threads and open files, and the
    Python stacks that SIGUSR2 makes both write to their logs (a sleeping stand-in for each)."""
    def stand_in(name: str) -> subprocess.Popen[str]:
        code = ("import faulthandler, os, signal, sys, time\n"
                "faulthandler.register(signal.SIGUSR2, all_threads=True)\n"
                f"held = open({str(tmp_path / name)!r} + '.held', 'w')\n"
                "print('up', flush=True)\n"
                "time.sleep(60)\n")
        with open(tmp_path / f"{name}.log", "w") as log:
            return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=log, text=True)

    reader, mount = stand_in("reader"), stand_in("mount")
    bounds = [threading.Timer(30, process.kill) for process in (reader, mount)]  # a stand-in that never says "up"
    for bound in bounds:
        bound.start()
    try:
        for process in (reader, mount):
            assert process.stdout is not None and process.stdout.readline() == "up\n"
        where = Run.describe_stuck(SimpleNamespace(mount=mount), reader)  # type: ignore[arg-type]
    finally:
        for bound in bounds:
            bound.cancel()
        for process in (reader, mount):
            process.send_signal(signal.SIGKILL)
            process.wait(10)
    said_of_reader, said_of_mount = where.split("its host's mount")
    assert "state S" in said_of_reader and f"{tmp_path}/reader.held" in said_of_reader
    assert f"pid {mount.pid}" in said_of_mount and f"{tmp_path}/mount.held" in said_of_mount
    for name in ("reader", "mount"):
        assert "most recent call first" in (tmp_path / f"{name}.log").read_text()


def test_a_reader_says_at_once_when_a_call_on_its_mount_takes_too_long(tmp_path: Path) -> None:
    """demo/churn_reader.py's watch: a call under way for STUCK_S is named on stderr with the
    reader's Python stacks, once, while it lasts (the harness looks at the mount then). The
    stand-in for a mount that does not answer: an open of a FIFO no one writes."""
    (tmp_path / "api" / "d0").mkdir(parents=True)
    fifo = tmp_path / "api" / "d0" / "f0"
    os.mkfifo(fifo)
    code = ("import time\n"
            "from demo import churn_reader\n"
            "churn_reader.STUCK_S = 0.5\n"
            f"reader = churn_reader.Reader(churn_reader.Path({str(tmp_path)!r}), 'read', 0, 0.0)\n"
            "reader.run(time.monotonic() + 2)\n")
    reader = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    bound = threading.Timer(60, reader.kill)  # a reader that never says ends the reads below
    bound.start()
    try:
        assert reader.stderr is not None
        before = ""
        while not (first := reader.stderr.readline()).startswith("reader stuck:") and first:
            before += first
        with contextlib.suppress(OSError):  # (ENXIO: the reader is gone, the asserts say why)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the open it waits in returns
        rest = reader.stderr.read()
        assert reader.wait(30) == 0, rest
    finally:
        bound.cancel()
        reader.kill()
        reader.wait(10)
    assert first.startswith("reader stuck: open api/d0/f0 for "), before + first + rest
    assert "most recent call first" in before and "reader stuck:" not in rest  # said once
