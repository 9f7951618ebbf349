"""famfs.Master on real images: a batch logs what it says under one lock, a created file is in
the log only once committed (data first), an abandoned one leaves nothing, and refusals change
nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import famfs
from famfs import format as fmt
from tests.famfsctl_util import digest, entries, famfsctl, file_bytes, file_entries, make_image

MiB = 1 << 20


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    return make_image(tmp_path / "dev.img", "1g")


@pytest.fixture
def master(device: Path, system_uuid_file: Path) -> famfs.Master:
    return famfs.Master(device, system_uuid_file=system_uuid_file)


def test_a_batch_logs_every_operation_and_fsck_is_clean(device: Path, master: famfs.Master) -> None:
    with master.batch():
        master.mkdir("a/b/c", mode=0o750, uid=7, gid=8, parents=True)
        for n in range(20):
            with master.create(f"a/b/c/f{n}", 100 + n, mode=0o600, uid=1, gid=2) as new:
                new.buffer[:] = bytes([n]) * (100 + n)
        master.remove("a/b/c/f3")
    logged = entries(device)
    assert [type(e).__name__ for e in logged] == ["MkdirEntry"] * 3 + ["FileEntry"] * 20 + ["DeleteEntry"]
    assert logged[2] == fmt.MkdirEntry("a/b/c", 0o750, 7, 8)
    assert logged[-1] == fmt.DeleteEntry("a/b/c/f3", target_index=6)
    assert (logged[3].mode, logged[3].uid, logged[3].gid, logged[3].size) == (0o600, 1, 2, 100)
    assert file_bytes(device, "a/b/c/f19") == bytes([19]) * 119
    assert famfsctl("fsck", device).returncode == 0


def test_a_file_is_logged_only_when_committed(device: Path, master: famfs.Master) -> None:
    new = master.create("f", 3 * MiB)
    assert entries(device) == [] and not new.committed
    new.buffer[-1:] = b"z"
    assert new.commit() == 0 and new.commit() == 0  # idempotent
    assert [e.relpath for e in entries(device)] == ["f"]
    new.buffer[:1] = b"a"  # still mapped, as any writer of a logged file
    new.close()
    assert file_bytes(device, "f")[::3 * MiB - 1] == b"az"
    # The lock was given back: another process writes the log now.
    famfsctl("mkdir", "--device", device, "d")


def test_an_exception_abandons_uncommitted_files_and_their_space(device: Path, master: famfs.Master) -> None:
    before = digest(device)
    with pytest.raises(RuntimeError, match="half-way"), master.batch():
        first = master.create("one", MiB)
        with master.create("two", MiB):
            raise RuntimeError("half-way")
    assert entries(device) == [] and digest(device) == before and first.closed
    with master.create("three", MiB) as again:
        pass
    assert again.entry.extents == first.entry.extents  # the abandoned space was free again


def test_refusals_change_nothing(tmp_path: Path, device: Path, master: famfs.Master) -> None:
    master.mkdir("d")
    with master.create("d/f", MiB):
        pass
    before = digest(device)
    refused = [
        (lambda: master.create("d/f", MiB), "a file of that name exists"),
        (lambda: master.create("nodir/f", MiB), "parent directory 'nodir' does not exist"),
        (lambda: master.create("x" * 80, MiB), "the limit is 79"),
        (lambda: master.create("huge", 2 << 30), "cannot allocate"),
        (lambda: master.mkdir("d"), "a directory of that name exists"),
        (lambda: master.remove("d"), "is a directory"),
        (lambda: master.remove("nope"), "no such file"),
        (lambda: master.mkdir("m", mode=0o17777), "outside"),
        (lambda: master.create("u", MiB, uid=1 << 32), "not a 32-bit id"),
    ]
    for call, why in refused:
        with pytest.raises(famfs.MasterError, match=why):
            call()
    with master.batch():
        pending = master.create("p", MiB)
        with pytest.raises(famfs.MasterError, match="already being created"):
            master.create("p", MiB)
        pending.abandon()
        with pytest.raises(famfs.MasterError, match="abandoned"):
            pending.commit()
    assert digest(device) == before


def test_a_client_is_refused_with_the_clis_message(tmp_path: Path, device: Path) -> None:
    code = (f"import famfs\ntry:\n    famfs.Master({str(device)!r})\nexcept famfs.MasterError as err:\n"
            f"    print(err)\n")
    # The identity comes from $FAMFS_SYSTEM_UUID_FILE, as for famfsctl: another host's here.
    other = {"FAMFS_SYSTEM_UUID_FILE": str(tmp_path / "client" / "uuid"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=other, timeout=60)
    assert done.returncode == 0 and f"{device}: this host is a client of file system" in done.stdout


def test_calls_reuse_the_replayed_log_and_play_only_what_another_writer_appended(
        device: Path, master: famfs.Master, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from famfs.master import writer

    replays: list[int] = []  # 0: the whole log; N: played on from entry N
    real_load = writer.load

    def load(famfs_log, namespace=None, start=0, stop=None):  # type: ignore[no-untyped-def]
        replays.append(start if namespace is not None else 0)
        return real_load(famfs_log, namespace, start, stop)

    monkeypatch.setattr(writer, "load", load)
    master.mkdir("a")
    master.mkdir("b")
    assert replays == []  # the constructor's replay, kept and carried forward
    famfsctl("mkdir", "--device", device, "c")  # another writer: the next call plays its entry only
    with pytest.raises(famfs.MasterError, match="exists"):
        master.mkdir("c")
    assert replays == [2]
    with pytest.raises(famfs.MasterError):
        master.mkdir("no/parent")  # after a refusal, the namespace it touched is not trusted again
    master.mkdir("d")
    assert replays == [2, 0, 0]
    # A file system re-made under it, with more entries than before: replayed whole, not played on.
    famfsctl("mkfs", "--force", device)
    for name in ("a", "b", "c", "d", "e"):
        famfsctl("mkdir", "--device", device, name + "2")
    master.mkdir("a")
    assert replays == [2, 0, 0, 0]
    assert [e.relpath for e in entries(device)] == ["a2", "b2", "c2", "d2", "e2", "a"]


LIBRARY_BATCH = """
import sys
import famfs

master = famfs.Master(sys.argv[1])
with master.batch():
    master.mkdir("d")
    for n in range(500):
        with master.create(f"d/f{n}", 1) as new:
            new.buffer[:] = b"x"
famfs.logsetup.get_logger("famfs.test").warning("a warning is shown")
famfs.logsetup.configure(level="info")  # asked for: info events from now on, on stderr
master.mkdir("asked")
"""


def test_the_library_never_writes_stdout_and_logs_info_only_when_asked(tmp_path: Path, system_uuid_file: Path) -> None:
    device = make_image(tmp_path / "dev.img", "2g")  # 500 files of one 2 MiB unit each
    # stdout is a pipe nobody reads: a line per create there once filled it and blocked the batch.
    process = subprocess.Popen([sys.executable, "-c", LIBRARY_BATCH, str(device)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()  # type: ignore[union-attr]
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 2, lines
    assert "level='warning' event='a warning is shown'" in lines[0]
    assert "level='info' event='mkdir'" in lines[1] and "paths=['asked']" in lines[1]
    assert len(file_entries(device)) == 500
