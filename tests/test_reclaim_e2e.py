"""Reclaim end to end, with real processes: `famfsctl reclaimd` as a subprocess, two hosts faked
by host records this test writes and renews (famfs.hosts), files made and removed with famfsctl.
The RECLAIM is logged only once both records are past the DELETE; a creat that finds the space
held says by whom, and once reclaimed, reuses it; fsck stays clean."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs import hosts
from famfs.device import Device
from famfs.famfslog import FamfsLog
from tests.famfsctl_util import entries, famfsctl

LEASE_S = 1.0
RENEW_S = 0.1
WAIT_S = 60.0  # bounded: a loaded machine


class FakeHosts:
    """Host records in the table, renewed from a thread as an agent would (heartbeat + 1)."""

    def __init__(self, image: Path, count: int) -> None:
        self.image = image
        self.records = [hosts.HostRecord(slot=10 + n, system_uuid=uuid.uuid4(), incarnation=hosts.new_incarnation(),
                                         hostname=f"fake{n}", serve_window_ns=int(0.3e9)) for n in range(count)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)

    def set(self, n: int, *, applied: int, pin_floor: int = hosts.NO_PIN) -> None:
        record = self.records[n]
        self.records[n] = record.renewed(applied=applied, pin_floor=pin_floor, renewed_ns=hosts.boottime_ns())

    def _renew(self) -> None:
        with Device(self.image, writable=True) as device:
            while not self.stop.is_set():
                for n, record in enumerate(self.records):
                    self.records[n] = record = record.renewed(applied=record.applied, pin_floor=record.pin_floor,
                                                              renewed_ns=hosts.boottime_ns())
                    device.write(hosts.slot_offset(record.slot), hosts.encode(record))
                self.stop.wait(RENEW_S)


@pytest.fixture
def fake_hosts(tmp_path: Path) -> Iterator[FakeHosts]:
    image = tmp_path / "dev.img"
    famfsctl("mkfs", "--size", "18m", image)  # four 2 MiB data units
    fake = FakeHosts(image, 2)
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.stop.set()
        fake.thread.join(5)


def next_index(image: Path) -> int:
    with Device(image) as device:
        return FamfsLog(device).next_index()


def reclaims(image: Path) -> list[fmt.ReclaimEntry]:
    return [entry for entry in entries(image) if isinstance(entry, fmt.ReclaimEntry)]


def config(tmp_path: Path, wait_s: float) -> Path:
    path = tmp_path / f"famfs-agent-{wait_s:g}.toml"
    path.write_text(f"[host]\nlog_level = \"info\"\n\n[master]\nhost_lease = {LEASE_S}\nreclaim_poll = 0.05\n"
                    f"reclaim_wait = {wait_s}\n")
    return path


def test_reclaimd_waits_for_every_host_then_a_new_file_reuses_the_space(
        tmp_path: Path, system_uuid_file: Path, fake_hosts: FakeHosts) -> None:
    image = fake_hosts.image
    patient, impatient = config(tmp_path, 20.0), config(tmp_path, 0.5)
    famfsctl("creat", "--device", image, "-s", "4m", "a")
    famfsctl("creat", "--device", image, "-s", "4m", "b")
    famfsctl("rm", "--device", image, "a")
    delete_index = next_index(image) - 1
    fake_hosts.set(0, applied=delete_index + 1)
    fake_hosts.set(1, applied=delete_index)  # host 1 has not played the DELETE
    daemon = subprocess.Popen([sys.executable, "-m", "famfs.master.famfsctl", "--config", str(patient), "reclaimd",
                               str(image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3 * LEASE_S)  # admitted by now; host 1 still holds the file
        assert reclaims(image) == []
        refused = famfsctl("--config", impatient, "creat", "--device", image, "-s", "4m", "c", check=False)
        assert refused.returncode == 1, refused.stderr
        assert "held by deleted files" in refused.stderr and "fake1" in refused.stderr, refused.stderr
        assert "has not applied the DELETE" in refused.stderr and "Traceback" not in refused.stderr
        listed = famfsctl("host", "list", image).stdout
        assert "fake0" in listed and "fake1" in listed and "active" in listed, listed

        fake_hosts.set(1, applied=delete_index + 1, pin_floor=delete_index - 2)  # past it, but pins file a
        time.sleep(3 * LEASE_S)
        assert reclaims(image) == []
        fake_hosts.set(1, applied=delete_index + 1)  # unpinned: now every host is past it
        # this creat waits (reclaim_wait 20 s) for the coordinator, then takes a's units
        famfsctl("--config", patient, "creat", "--device", image, "-s", "4m", "c")
        found = reclaims(image)
        assert [entry.targets for entry in found] == [((delete_index - 2, delete_index),)]
        files = {entry.relpath: entry for entry in entries(image) if isinstance(entry, fmt.FileEntry)}
        assert files["c"].extents == files["a"].extents
        report = famfsctl("fsck", image).stdout
        assert report.endswith("fsck: clean\n") and "4194304 reclaimed" in report, report
        status = famfsctl("status", image).stdout
        assert "4 MiB reclaimed" in status and "hosts: 2 active; reclaim coordinator on this host: running" in status, status
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            _, stderr = daemon.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.communicate()
            raise
    assert daemon.returncode == 0, stderr
    for event in ("reclaimd_started", "host_admitted", "reclaim", "reclaimd_stopped"):
        assert event in stderr, stderr
    assert "Traceback" not in stderr
