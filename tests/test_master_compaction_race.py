"""A master session that waits for the device lock while another process compacts the log
(make churn, 2026-12-04 23:47 UTC: `famfs.Master.remove` refused `api/d6/f20: no such file`, a
file the same Master had created). The session must see the log as it is once it holds the lock:
a view read while it waited names the staging copy of a compaction in progress, where an append
lands in free data units and never in the log (docs/library.md, famfs.Master)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import famfs
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import writer
from tests.famfsctl_util import make_image

MiB = 1 << 20
WAIT_S = 20.0  # a bound only: each wait below ends in milliseconds when all is well


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    image = make_image(tmp_path / "dev.img", "1g")
    master = famfs.Master(image, system_uuid_file=system_uuid_file)
    with master.batch():
        master.mkdir("d")
        for n in range(40):
            master.create(f"d/old{n}", MiB).close()
    master.remove(*(f"d/old{n}" for n in range(0, 40, 2)))  # something for the compaction to drop
    return image


def live_files(image: Path) -> set[str]:
    with Device(image) as opened:
        return set(writer.load(FamfsLog(opened)).files)


@pytest.mark.parametrize("stop_at", ["staged", "committed", "header_cleared", "copied", "header_written"])
def test_a_master_that_waited_for_a_compaction_appends_to_the_new_log(
        device: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch, stop_at: str) -> None:
    master = famfs.Master(device, system_uuid_file=system_uuid_file)
    master.create("d/before", MiB).close()  # the Master keeps this session's namespace (writer.Replayed)
    reached, master_waits = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    original = Device.exclusive

    @contextlib.contextmanager
    def exclusive(self: Device) -> Iterator[None]:
        if threading.current_thread() is threading.main_thread():
            master_waits.set()  # the master session is about to wait for the compaction's lock
        with original(self):
            yield

    monkeypatch.setattr(Device, "exclusive", exclusive)

    def step(name: str) -> None:
        if name == stop_at:
            reached.set()
            if not master_waits.wait(WAIT_S):
                raise TimeoutError("the master session never asked for the lock")

    def compact() -> None:
        try:
            with writer.session(str(device), system_uuid_file) as current:
                current.compact(step)
        except BaseException as err:  # noqa: BLE001 (reported by the main thread)
            failures.append(err)
            reached.set()

    compactor = threading.Thread(target=compact, daemon=True)
    compactor.start()
    try:
        assert reached.wait(WAIT_S)
        with master.create("d/during", MiB) as new:  # waits for the lock the compaction holds
            new.buffer[:5] = b"hello"
    finally:
        master_waits.set()
        compactor.join(WAIT_S)
    assert not compactor.is_alive() and not failures, failures
    assert {"d/before", "d/during"} <= live_files(device)
    master.remove("d/during", "d/before")  # the refusal make churn met: 'no such file; nothing removed'
    assert not {"d/before", "d/during"} & live_files(device)
