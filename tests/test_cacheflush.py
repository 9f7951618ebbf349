"""coherence = "flush" (docs/consistency.md, "Memory that is not cache-coherent"): the C extension's
ranges and refusals, the policy chosen once and refused where it cannot work, every writer's order
(data, then entry, then header) and every reader's invalidation, and a real cluster whose hosts all
run with "flush" reading the same bytes through the mount and famfs.open as a coherent one."""

from __future__ import annotations

import ctypes
import mmap
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import famfs
from demo.cluster import Cluster
from famfs import _cacheline, cacheflush, config
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import famfsctl as famfsctl_cli
from fusefs.datapath import DataPath
from tests.agent_util import file_entry
from tests.famfsctl_util import famfsctl, make_image

MiB = 1 << 20


@pytest.fixture
def restore_policy() -> Iterator[None]:
    saved = cacheflush._host
    yield
    cacheflush._host = saved


# --- the extension --------------------------------------------------------------------------

def test_this_cpu_is_known() -> None:
    found = _cacheline.info()
    assert found["arch"] == "x86_64" and found["line_size"] >= 32
    assert found["writeback"] in ("clwb", "clflushopt", "clflush")
    assert found["invalidate"] in ("clflushopt", "clflush")
    assert cacheflush.info() == found


def test_ranges_of_a_mapping_keep_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 64)
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        for offset, length in ((0, 0), (0, 1), (63, 2), (1, 16383), (0, 16384), (16383, 1), (16384, 0)):
            cacheflush.flush(m, offset, length)
            cacheflush.invalidate(m, offset, length)
        cacheflush.flush(memoryview(m)[100:200], 10, 90)  # a view's offsets are its own
        cacheflush.invalidate(memoryview(m).toreadonly())  # default: all of it
        m[5:8] = b"abc"
        cacheflush.flush(m, 5, 3)
        cacheflush.invalidate(m, 0, len(m))
        assert m[5:8] == b"abc" and m[8] == 8
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        cacheflush.invalidate(m, 0, len(m))  # a read-only mapping: lines can still be dropped
        assert m[5:8] == b"abc"


@pytest.mark.parametrize("offset, length", [(-1, 1), (0, -1), (0, 4097), (4096, 1), (4000, 200)])
def test_ranges_outside_are_refused(offset: int, length: int) -> None:
    with mmap.mmap(-1, 4096) as m:
        for call in (cacheflush.flush, cacheflush.invalidate, cacheflush.Flush().flush):
            with pytest.raises(ValueError, match="not within the buffer's 4096 bytes"):
                call(m, offset, length)
        with pytest.raises(ValueError, match="not within the buffer's 4096 bytes"):
            _cacheline.writeback(m, offset, length)  # the extension checks too


@pytest.mark.parametrize("buffer", [b"x" * 64, bytearray(64), memoryview(bytearray(64)), (ctypes.c_ubyte * 64)()],
                         ids=["bytes", "bytearray", "memoryview", "ctypes"])
def test_memory_that_is_not_a_mapping_is_refused(buffer: Any) -> None:
    for call in (cacheflush.flush, cacheflush.invalidate, cacheflush.Flush().invalidate):
        with pytest.raises(TypeError, match="not a mapping of device memory"):
            call(buffer, 0, 1)


def test_a_window_declared_device_memory_is_accepted() -> None:
    window = (ctypes.c_ubyte * 128)()
    cacheflush.device_memory(window)
    view = memoryview(window).cast("B")
    cacheflush.flush(view, 0, 128)
    cacheflush.invalidate(view[64:], 0, 64)
    del view, window  # forgotten with it: a new object at the same address is not device memory
    assert all(ref() is not None for ref in cacheflush._windows.values())


# --- the policy -----------------------------------------------------------------------------

def test_policies(restore_policy: None) -> None:
    assert cacheflush.policy("coherent") is cacheflush.COHERENT
    assert cacheflush.policy("flush").name == "flush"
    with pytest.raises(config.ConfigError, match="coherence must be one of coherent, flush, not 'sometimes'"):
        cacheflush.policy("sometimes")
    assert cacheflush.use("flush").name == "flush" and cacheflush.host().name == "flush"


def test_flush_is_refused_on_a_cpu_or_build_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cacheline, "info", lambda: {"arch": "unsupported", "line_size": 0,
                                                     "writeback": "none", "invalidate": "none"})
    with pytest.raises(cacheflush.CacheFlushError, match=r"this CPU \(unsupported\) has no cache-line flush"):
        cacheflush.policy("flush")
    assert cacheflush.policy("coherent") is cacheflush.COHERENT  # coherent hosts never need it
    monkeypatch.delattr(famfs, "_cacheline")
    monkeypatch.setitem(sys.modules, "famfs._cacheline", None)
    with pytest.raises(cacheflush.CacheFlushError, match="extension is not built"):
        cacheflush.policy("flush")


def test_the_setting_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                restore_policy: None) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[host]\ncoherence = "maybe"\n')
    with pytest.raises(config.ConfigError, match=r"\[host\]: coherence must be one of coherent, flush, not 'maybe'"):
        config.load(str(bad))
    good = tmp_path / "good.toml"
    good.write_text('[host]\ncoherence = "flush"\n')
    assert config.load(str(good)).host.coherence == "flush"
    monkeypatch.setattr(_cacheline, "info", lambda: {"arch": "riscv64", "line_size": 0,
                                                     "writeback": "none", "invalidate": "none"})
    assert famfsctl_cli.main(["--config", str(good), "status", "--device", str(tmp_path / "none")]) == 2
    assert 'coherence = "flush": this CPU (riscv64)' in capsys.readouterr().err


# --- writers and readers --------------------------------------------------------------------

class Recorder:
    """A Flush policy that also notes each range, in order."""

    name = "flush"

    def __init__(self) -> None:
        self.real = cacheflush.Flush()
        self.calls: list[tuple[str, int, int]] = []

    def flush(self, buffer: Any, offset: int, length: int) -> None:
        self.real.flush(buffer, offset, length)
        self.calls.append(("flush", offset, length))

    def invalidate(self, buffer: Any, offset: int, length: int) -> None:
        self.real.invalidate(buffer, offset, length)
        self.calls.append(("invalidate", offset, length))


def test_append_writes_back_each_entry_before_the_header(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img", "1g")
    recorder = Recorder()
    with Device(image, writable=True, coherence=recorder) as device, device.exclusive():
        famfs_log = FamfsLog(device)
        assert ("invalidate", 0, fmt.SUPERBLOCK.size) in recorder.calls  # the superblock, read fresh
        recorder.calls.clear()
        first = famfs_log.append([file_entry("a", 3), file_entry("b", 4)])
    flushes = [call for call in recorder.calls if call[0] == "flush"]
    header = fmt.LOG_OFFSET + fmt.LOG_NEXT_SEQNUM_OFFSET
    assert flushes == [("flush", famfs_log.slot_offset(first), fmt.ENTRY_SIZE),
                       ("flush", famfs_log.slot_offset(first + 1), fmt.ENTRY_SIZE), ("flush", header, 16)]
    assert recorder.calls[0][0] == "invalidate"  # the header read before appending
    recorder.calls.clear()
    with Device(image, coherence=recorder) as device:
        entries = list(FamfsLog(device).entries())
    assert [getattr(entry, "relpath", None) for _, entry in entries][-2:] == ["a", "b"]
    read = [call for call in recorder.calls if call[0] == "invalidate"]
    assert any(offset == famfs_log.slot_offset(0) for _, offset, _ in read)  # the slots, before they are read
    assert not [call for call in recorder.calls if call[0] == "flush"]  # a reader writes nothing back


def test_the_mount_data_path_invalidates_each_piece_read_and_writes_back_each_written(
        tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img", "1g")
    entry = file_entry("f", 0, size=5000)
    (start, _), = fmt.device_ranges(entry)
    recorder = Recorder()
    with Device(image, writable=True, coherence=recorder) as device:
        data = DataPath(device)
        assert data.write(entry, 100, b"abc") == 3
        assert recorder.calls == [("flush", start + 100, 3)]
        assert bytes(data.read(entry, 99, 5)) == b"\0abc\0"
        assert recorder.calls[1:] == [("invalidate", start + 99, 5)]
        data.close()


def test_mapped_file_ranges(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img", "1g")
    recorder = Recorder()
    master = famfs.Master(image)
    with master.create("data", 3 * MiB + 5) as new:
        new.coherence = recorder  # as the host's policy would be: committed only after its bytes are written back
        new.buffer[:4] = b"head"
    assert recorder.calls == [("flush", 0, 3 * MiB + 5)]
    with famfs.open("data", device=image) as mapped:
        mapped.coherence = recorder
        mapped.flush(1, 10)
        mapped.invalidate(3 * MiB)
        mapped.invalidate(0, 0)  # nothing: nothing done
        with pytest.raises(ValueError, match=r"data: range \[3145728, 3145734\) is not within the file's 3145733 bytes"):
            mapped.flush(3 * MiB, 6)
        with pytest.raises(ValueError, match="not within"):
            mapped.invalidate(-1)
        assert bytes(mapped.buffer[:4]) == b"head"
    assert recorder.calls[1:] == [("flush", 1, 10), ("invalidate", 3 * MiB, 5)]


# --- end to end -----------------------------------------------------------------------------

def test_a_cluster_on_flush_serves_the_same_bytes(tmp_path: Path, restore_policy: None) -> None:
    """Every host with coherence = "flush": mkfs, famfsctl creat and cp, famfs.Master, the
    agents' replay and the mounts' reads all flush or invalidate; every byte is the same."""
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(251)) * 20_000)
    with Cluster(tmp_path / "cluster", size="2g", clients=1, namespaces=False, coherence="flush") as cluster:
        cacheflush.use("flush")  # this process is a host too: famfs.Master and famfs.open
        cluster.ctl("creat", "-s", str(3 * MiB + 7), "-r", "-S", "5", "made")
        cluster.ctl("cp", str(source), "copied")
        master = famfs.Master(cluster.image, system_uuid_file=cluster.master.uuid_file)
        with master.create("by_api", 2 * MiB) as new:
            new.buffer[:] = bytes(range(256)) * (2 * MiB // 256)
        assert famfsctl("verify", "--device", cluster.image, "-S", "5", "made").returncode == 0
        for host in cluster.hosts:
            assert re.search(r'coherence"?[=:] ?["\']?flush', host.agent_log.read_text())
            assert re.search(r'coherence"?[=:] ?["\']?flush', host.mount_log.read_text())
            view = host.view("by_api")
            cluster_wait(lambda: view.exists(), f"{host.name} to show by_api")
            assert host.view("copied").read_bytes() == source.read_bytes()
            assert view.read_bytes() == bytes(range(256)) * (2 * MiB // 256)
            with famfs.open(host.view("made")) as mapped:
                assert mapped.coherence.name == "flush"
                assert bytes(mapped.buffer) == host.view("made").read_bytes()
        assert famfsctl("fsck", "--device", cluster.image).returncode == 0


def cluster_wait(check: Any, what: str) -> None:
    from demo.harness import wait_for
    wait_for(lambda: check() or None, what)
