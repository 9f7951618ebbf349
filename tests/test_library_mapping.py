"""famfs.open on real images: the mapping holds exactly the bytes famfsctl verify and the FUSE
mounts read (simple and striped files), r+ writes reach another host's mount, numpy and Arrow
use it without copying, views outlive close() safely, and every bad input is one clear error."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy
import pyarrow
import pyarrow.compute
import pyarrow.ipc
import pytest

import famfs
from demo.cluster import Cluster
from famfs import format as fmt
from famfs import mapping
from famfs.device import DeviceError, DeviceInfo, map_alignment
from famfs.master import prng
from famfs.master.alloc import InterleaveParams
from famfs.shadowdir import MountError
from famfs.shadowyaml import emit_file_yaml
from tests.agent_util import append
from tests.famfsctl_util import digest, famfsctl, make_image
from tests.fuse_util import Mount, bounded, play, put_yaml, wait_for

MiB = 1 << 20
STRIPED = InterleaveParams(nbuckets=2, nstrips=2, chunk_size=2 * MiB)


def fill(buffer: memoryview, seed: int) -> None:
    position = 0
    for block in prng.pattern_blocks(seed, len(buffer)):
        buffer[position:position + len(block)] = block
        position += len(block)


def address(buffer: memoryview) -> int:
    return int(numpy.frombuffer(buffer, numpy.uint8).ctypes.data)


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    return make_image(tmp_path / "dev.img", "2g")


def test_mapping_equals_verify_and_both_hosts_mounts(tmp_path: Path) -> None:
    with Cluster(tmp_path / "cluster", size="2g", clients=1, namespaces=False) as cluster:
        client = cluster.clients[0]
        master = famfs.Master(cluster.image, system_uuid_file=cluster.master.uuid_file)
        with master.batch():
            master.mkdir("sets/a", parents=True)
            with master.create("sets/a/plain", 5 * MiB + 3) as plain:
                fill(plain.buffer, 7)
            with master.create("striped", 9 * MiB + 11, layout=STRIPED) as striped:
                fill(striped.buffer, 8)
        assert len(striped.entry.stripes[0].strips) == 2
        cluster.ctl("creat", "-s", str(3 * MiB), "-r", "-S", "9", "by_famfsctl")
        for relpath, seed in (("sets/a/plain", 7), ("striped", 8), ("by_famfsctl", 9)):
            assert famfsctl("verify", "--device", cluster.image, "-S", seed, relpath).returncode == 0
            seen = wait_for(lambda: client.view(relpath).exists() and client.view(relpath), f"{relpath} on the client")
            through_mount = seen.read_bytes()
            with famfs.open(seen) as mapped, famfs.open(relpath, device=cluster.image) as by_device:
                assert mapped.buffer == through_mount == by_device.buffer
                assert prng.first_mismatch(seed, [mapped.buffer]) is None
                assert mapped.buffer.readonly and mapped.relpath == relpath

        # r+ on the client: the bytes are in device memory, so the master's mount serves them.
        with famfs.open(client.view("by_famfsctl"), "r+") as writable:
            writable.buffer[MiB:MiB + 5] = b"hello"
        assert (cluster.master.view("by_famfsctl").read_bytes()[MiB:MiB + 5]) == b"hello"
        assert famfsctl("verify", "--device", cluster.image, "-S", 9, "by_famfsctl", check=False).returncode == 1


def test_numpy_and_arrow_use_the_mapping_without_copies(device: Path, system_uuid_file: Path) -> None:
    rows = 4 * MiB  # two 32 MiB columns
    table = pyarrow.table({"x": numpy.arange(rows, dtype=numpy.int64), "y": numpy.ones(rows, dtype=numpy.float64)})
    sink = pyarrow.MockOutputStream()
    with pyarrow.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    master = famfs.Master(device, system_uuid_file=system_uuid_file)
    with master.create("table.arrow", sink.size()) as new:
        with pyarrow.ipc.new_file(pyarrow.FixedSizeBufferWriter(pyarrow.py_buffer(new.buffer)), table.schema) as writer:
            writer.write_table(table)

    before = rss_anon()
    with famfs.open("table.arrow", device=device) as mapped:
        start = address(mapped.buffer)
        read = pyarrow.ipc.open_file(pyarrow.py_buffer(mapped.buffer)).read_all()
        column = read.column("x").chunk(0)
        assert all(start <= buf.address < start + mapped.size for buf in column.buffers() if buf is not None)
        assert pyarrow.compute.sum(read.column("x")).as_py() == rows * (rows - 1) // 2
        array = numpy.frombuffer(mapped.buffer, numpy.uint8)
        assert array.ctypes.data == start and not array.flags.writeable
        assert int(array[:4096].sum()) == sum(bytes(mapped.buffer[:4096]))
        # Reading every byte of a 64 MiB table did not copy it into this process's memory.
        assert rss_anon() - before < mapped.size // 2
        del read, column, array
    # The IPC stream format maps the same way.
    stream = pyarrow.BufferOutputStream()
    with pyarrow.ipc.new_stream(stream, table.schema) as writer:
        writer.write_table(table.slice(0, 1000))
    payload = stream.getvalue()
    with master.create("table.stream", payload.size) as new:
        new.buffer[:] = payload.to_pybytes()
    with famfs.open("table.stream", device=device) as mapped:
        read = pyarrow.ipc.open_stream(pyarrow.py_buffer(mapped.buffer)).read_all()
        assert read.equals(table.slice(0, 1000))
        start = address(mapped.buffer)
        assert all(start <= buf.address < start + mapped.size
                   for buf in read.column("y").chunk(0).buffers() if buf is not None)
        del read


def test_views_outlive_close_and_a_closed_buffer_is_an_error(device: Path, system_uuid_file: Path) -> None:
    master = famfs.Master(device, system_uuid_file=system_uuid_file)
    with master.create("f", 4 * MiB) as new:
        new.buffer[:] = bytes(range(256)) * (4 * MiB // 256)
    mapped = famfs.open("f", device=device)
    array = numpy.frombuffer(mapped.buffer, numpy.uint8)
    piece = mapped.buffer[1000:1010]
    mapped.close()
    assert mapped.closed and mapped.mapped  # two views are alive: nothing was unmapped
    with pytest.raises(ValueError, match="closed famfs file"):
        mapped.buffer  # noqa: B018
    assert int(array[-1]) == 255 and bytes(piece) == bytes(range(232, 242))
    del array
    assert mapped.mapped
    del piece
    assert not mapped.mapped  # the last view went: unmapped

    held = famfs.open("f", device=device)
    buffer = held.buffer
    held.close()
    assert not held.mapped  # no other view: close unmapped it
    with pytest.raises(ValueError, match="released memoryview"):
        buffer[0]  # noqa: B018


# A view taken before the image shrank: touching it is a SIGBUS, which no Python code can catch.
TOUCH_AFTER_TRUNCATE = """
import os, sys, famfs
image, relpath = sys.argv[1:]
mapped = famfs.open(relpath, device=image)
view = mapped.buffer
os.truncate(image, mapped.entry.extents[0].offset)
print("truncated", flush=True)
view[0]
print("never printed")
"""


def test_an_image_truncated_under_a_mapping(device: Path, system_uuid_file: Path, tmp_path: Path) -> None:
    """Caught: the image's size, checked at open (FormatError) and at every `.buffer`
    (ImageTruncated): the process lives on. Not catchable: touching a view taken before the
    truncation (SIGBUS kills the process)."""
    master = famfs.Master(device, system_uuid_file=system_uuid_file)
    with master.create("f", 4 * MiB) as new:
        fill(new.buffer, 9)
    image = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(device), str(image)], check=True, timeout=60)
    mapped = famfs.open("f", device=image)
    end = mapped.entry.extents[0].offset + 4 * MiB
    assert prng.first_mismatch(9, [mapped.buffer]) is None
    os.truncate(image, end - 1)  # one byte short: the last page is past the end
    with pytest.raises(famfs.ImageTruncated) as short:
        mapped.buffer  # noqa: B018
    assert short.value.errno == errno.EIO
    assert str(short.value) == (f"[Errno 5] {image}: f: the image file is {end - 1} bytes, the file's bytes reach "
                                f"{end}: it was truncated, and touching them would kill this process (SIGBUS)")
    with pytest.raises(fmt.FormatError, match=f"superblock says the device is 2147483648 bytes, it has {end - 1}"):
        famfs.open("f", device=image)  # nothing mapped
    os.truncate(image, end)  # long enough again (the bytes past the cut now read as zeros)
    assert len(mapped.buffer) == 4 * MiB
    mapped.close()
    os.truncate(image, device.stat().st_size)  # whole again, for the next process
    done = subprocess.run([sys.executable, "-c", TOUCH_AFTER_TRUNCATE, str(image), "f"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == -signal.SIGBUS and done.stdout == "truncated\n", done


def test_a_deleted_file_stays_readable_and_its_space_is_not_reused(device: Path, system_uuid_file: Path) -> None:
    master = famfs.Master(device, system_uuid_file=system_uuid_file)
    with master.create("old", 2 * MiB) as new:
        fill(new.buffer, 3)
    with famfs.open("old", device=device) as mapped:
        master.remove("old")
        with master.create("new", 2 * MiB) as other:
            other.buffer[:] = b"\xff" * (2 * MiB)
        assert prng.first_mismatch(3, [mapped.buffer]) is None
        assert other.entry.extents[0].offset != mapped.entry.extents[0].offset
    with pytest.raises(FileNotFoundError, match="old: no such famfs file"):
        famfs.open("old", device=device)


def test_bad_inputs_are_one_clear_error_and_change_nothing(tmp_path: Path, device: Path, system_uuid_file: Path) -> None:
    master = famfs.Master(device, system_uuid_file=system_uuid_file)
    master.mkdir("dir")
    with master.create("dir/f", MiB):
        pass
    before = digest(device)
    with pytest.raises(MountError, match="not inside a mounted famfs"):
        famfs.open(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope: no such famfs file"):
        famfs.open("nope", device=device)
    with pytest.raises(IsADirectoryError):
        famfs.open("dir", device=device)
    with pytest.raises(fmt.FormatError, match="absolute path"):
        famfs.open("/dir/f", device=device)
    with pytest.raises(DeviceError, match="no such device or image file"):
        famfs.open("dir/f", device=tmp_path / "missing.img")
    with pytest.raises(ValueError, match="'w'"):
        famfs.open("dir/f", "w", device=device)
    with pytest.raises(famfs.MasterError, match="this host is a client"):
        famfs.Master(device, system_uuid_file=tmp_path / "other_host")
    assert digest(device) == before

    # Extents past the device end or over the log, as a mount's shadow file would name them.
    shadow = tmp_path / "shadow"
    play(device, shadow)
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        good = famfs.open(mount.mountpoint / "dir" / "f").entry
        size = os.path.getsize(device)
        for name, offset, why in (("past_end", size - MiB * 2, "past the device end"),
                                  ("over_log", fmt.LOG_OFFSET, "overlaps the superblock/log")):
            bad = good._replace(relpath=name, extents=(fmt.Extent(offset, 4 * MiB),))
            put_yaml(shadow, name, emit_file_yaml(bad))
            with pytest.raises(fmt.FormatError, match=f"{why}.*nothing mapped"):
                famfs.open(mount.mountpoint / name)
        # Hostile shadow files, refused as the mount refuses them: a FIFO (opened without
        # waiting for a writer) and a YAML whose path key names another file.
        os.mkfifo(shadow / "root" / "fifo")
        with pytest.raises(fmt.FormatError, match="not a regular file"):
            bounded(lambda: famfs.open(mount.mountpoint / "fifo"), "famfs.open of a FIFO'd shadow file")
        put_yaml(shadow, "moved", emit_file_yaml(good))
        with pytest.raises(fmt.FormatError, match="path key 'dir/f' is not where it sits"):
            famfs.open(mount.mountpoint / "moved")
    assert digest(device) == before

    # A logged entry every reader leaves out (its extents overlap the log) is named, not mapped.
    append(device, [fmt.FileEntry(relpath="over_log", size=MiB, mode=0o644, uid=0, gid=0,
                                  extents=(fmt.Extent(fmt.LOG_OFFSET, 2 * MiB),))])
    before = digest(device)
    with pytest.raises(fmt.FormatError, match="log entry 2 is left out by every reader: .*nothing mapped"):
        famfs.open("over_log", device=device)
    assert digest(device) == before


def test_devdax_that_cannot_map_famfs_extents_is_refused(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys_dax"
    info = DeviceInfo(str(tmp_path / "dax0.0"), "devdax", 1 << 34)
    (sysfs / "dax0.0").mkdir(parents=True)
    (sysfs / "dax0.0" / "align").write_text(f"{2 * MiB}\n")
    assert map_alignment(info, sysfs) == 2 * MiB
    (sysfs / "dax0.0" / "align").write_text(f"{1 << 30}\n")
    with pytest.raises(DeviceError, match=r"alignment is 0x40000000 \(1024 MiB\)") as big:
        map_alignment(info, sysfs)
    assert big.value.errno == errno.EINVAL
    (sysfs / "fsdev_dax").mkdir()
    (sysfs / "dax0.0" / "driver").symlink_to(sysfs / "fsdev_dax")
    with pytest.raises(DeviceError, match="fsdev_dax driver .* cannot be mmapped; rebind it to device_dax"):
        map_alignment(info, sysfs)


def test_pieces_of_a_striped_file_lie_in_file_order() -> None:
    strips = tuple(fmt.Extent(offset=(10 + 4 * n) * 2 * MiB, length=4 * MiB) for n in range(3))
    entry = fmt.FileEntry(relpath="s", size=12 * MiB, mode=0o644, uid=0, gid=0,
                          stripes=(fmt.Stripe(chunk_size=2 * MiB, strips=strips),))
    found = mapping.pieces(entry, entry.size)
    assert [(p.file_offset, p.device_offset) for p in found] == [
        (2 * MiB * c, strips[c % 3].offset + (c // 3) * 2 * MiB) for c in range(6)]


def test_a_block_device_maps_like_the_image(tmp_path: Path, device: Path, system_uuid_file: Path) -> None:
    """A loop device over the image is a block device (the pmem path): the same bytes through it."""
    master = famfs.Master(device, system_uuid_file=system_uuid_file)
    with master.create("f", 3 * MiB, layout=STRIPED) as new:
        fill(new.buffer, 5)
    attached = subprocess.run(["losetup", "--find", "--show", str(device)], capture_output=True, text=True, timeout=30)
    assert attached.returncode == 0, f"losetup: {attached.stderr.strip()}"
    loop = attached.stdout.strip()
    try:
        with famfs.open("f", device=loop) as mapped:
            assert prng.first_mismatch(5, [mapped.buffer]) is None
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=30)


def test_open_waits_for_this_hosts_agent_to_show_a_file_the_master_just_logged(tmp_path: Path) -> None:
    with Cluster(tmp_path / "cluster", size="2g", clients=1, namespaces=False) as cluster:
        client = cluster.clients[0]
        client.stop_agent()  # the client shows nothing new until its agent runs again
        master = famfs.Master(cluster.image, system_uuid_file=cluster.master.uuid_file)
        with master.create("late", 3) as new:
            new.buffer[:] = b"abc"
        path = client.view("late")
        with pytest.raises(FileNotFoundError, match="no such famfs file"):
            famfs.open(path)
        with pytest.raises(FileNotFoundError, match="no such famfs file"):
            famfs.open(path, wait=0.2)  # waited, then the same error
        with pytest.raises(ValueError, match="wait="):
            famfs.open("late", device=cluster.image, wait=1)  # the log is read: nothing to wait for
        opened: list[famfs.MappedFile | BaseException] = []

        def open_waiting() -> None:
            try:
                opened.append(famfs.open(path, wait=120))
            except BaseException as err:  # noqa: BLE001 - handed to the test's thread
                opened.append(err)

        waiter = threading.Thread(target=open_waiting)
        waiter.start()
        try:
            client.start_agent()
        finally:
            waiter.join(timeout=180)
        assert not waiter.is_alive()
        assert isinstance(opened[0], famfs.MappedFile), opened
        with opened[0] as mapped:
            assert bytes(mapped.buffer) == b"abc"
