"""Our agent + mount in place of upstream's famfs_fused, so that upstream's famfs CLI can stay a
site's master tool (docs/fusefs.md, "Upstream's CLI on our mount"). Upstream's C tools are not
installed here: each test does what the issue says upstream's CLI and smoke tests do.

1. `user.famfs.shadow` answered on every inode (the CLI asks on the path it is handed);
2. the mount's source is the device path (`findmnt -S DEV`, `grep DEV /proc/mounts`);
3. a file whose entry was just appended and whose YAML was just written into the shadow opens
   through the mount at once (the CLI writes both, then opens the file to fill it);
4. a shadow file or directory written ahead of the agent, as the agent would write it, is that
   entry played (no rebuild); one that differs is still damage;
5. `-o ro_namespace`: namespace changes through the mount refused on the master too.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.shadow_writer import ShadowError, ShadowTree
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.shadowdir import DIR_XATTR, FILE_XATTR, SHADOW_DIR_MODE, DirRecord
from famfs.shadowyaml import emit_file_yaml
from fusefs import cli
from tests.agent_util import FOLLOW_WAIT_S, agent_state, append, file_entry, following, make_device, mkdir_entry
from tests.famfsctl_util import famfsctl, make_image
from tests.fuse_util import (WAIT_S, Mount, bounded, client_env, client_uuid_file, read_device, wait_for,
                             write_device)

MiB = 1 << 20


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    """An image this process's host is the master of, with a file deep in directories."""
    image = make_image(tmp_path / "dev.img", "4g")
    famfsctl("mkdir", "--device", image, "-p", "a/b/c")
    famfsctl("creat", "--device", image, "-s", "3m", "-r", "-S", "7", "a/b/c/deep")
    famfsctl("creat", "--device", image, "-s", "4096", "top")
    return image


@pytest.fixture
def agent(tmp_path: Path, device: Path) -> Iterator[Path]:
    """A --follow agent on the device; its shadow dir."""
    shadow = tmp_path / "shadow"
    with following(device, shadow):
        wait_for(lambda: (shadow / "root" / "a/b/c/deep").exists(), "the agent plays the log")
        yield shadow


def mount_fields(mountpoint: Path) -> tuple[str, str]:
    """(fstype, source) of the mount at `mountpoint` in /proc/self/mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(mountpoint):
            after = fields[fields.index("-") + 1:]
            return after[0], after[1].replace("\\040", " ")
    raise AssertionError(f"{mountpoint} is not in /proc/self/mountinfo")


def test_shadow_xattr_on_every_inode(tmp_path: Path, device: Path, agent: Path) -> None:
    """Upstream's CLI asks `user.famfs.shadow` on the path it is handed (`famfs logplay MPT`,
    `famfs verify -f MPT/a/b/c/deep`, `famfs mkdir MPT/a/b/c/x`): every file and directory
    answers the shadow directory, as on famfs_fused. `user.famfs.status` stays the root's."""
    with Mount(agent, device, tmp_path / "mnt", "ro_namespace") as mount:
        root = mount.mountpoint
        for path in (root, root / ".meta", root / ".meta/.log", root / "a", root / "a/b/c", root / "a/b/c/deep",
                     root / "top"):
            assert os.getxattr(path, "user.famfs.shadow") == os.fsencode(agent), path
        with pytest.raises(OSError) as absent:
            os.getxattr(root / "a/b/c/deep", "user.famfs.status")
        assert absent.value.errno == errno.ENODATA
        assert os.getxattr(root, "user.famfs.status").startswith(b"inodes=")
    assert "Traceback" not in mount.log()


def test_mount_source_is_the_device_path(tmp_path: Path, device: Path, agent: Path) -> None:
    """The source is the device path and the type fuse.famfs: `findmnt -S DEV --target MPT`,
    `grep DEV /proc/mounts` and `grep famfs /proc/mounts` (upstream's test0) all find it."""
    with Mount(agent, device, tmp_path / "mnt", "ro_namespace") as mount:
        assert mount_fields(mount.mountpoint) == ("fuse.famfs", str(device))
        found = subprocess.run(["findmnt", "-rn", "-S", str(device), "--target", str(mount.mountpoint)],
                               capture_output=True, text=True, timeout=WAIT_S)
        assert found.returncode == 0, found.stderr
        mounts = Path("/proc/mounts").read_text()
        assert any(line.split()[:3] == [str(device), str(mount.mountpoint), "fuse.famfs"] for line in mounts.splitlines())
    found = subprocess.run(["findmnt", "-rn", "-S", str(device), "--target", str(mount.mountpoint)],
                           capture_output=True, text=True, timeout=WAIT_S)
    assert found.returncode != 0  # gone after the unmount (upstream's "still mounted" check)


def test_mount_source_escapes_commas(tmp_path: Path, system_uuid_file: Path) -> None:
    """libfuse splits options at commas: a device path holding one (or a blank) is still the
    source, whole."""
    image = make_image(tmp_path / "dev, one.img", "1g")
    shadow = tmp_path / "shadow"
    with following(image, shadow):
        wait_for(lambda: (shadow / "root" / ".meta/.log").exists(), "the agent plays the log")
        with Mount(shadow, image, tmp_path / "mnt") as mount:
            assert mount_fields(mount.mountpoint) == ("fuse.famfs", str(image))


def refused(call: object, *args: object) -> int:
    """The errno a call through the mount fails with (bounded: a stuck mount fails the test)."""
    def attempt() -> int:
        try:
            call(*args)  # type: ignore[operator]
        except OSError as err:
            return err.errno or 0
        return 0
    return bounded(attempt, f"{call}{args}")


def test_ro_namespace_refuses_changes_on_the_master(tmp_path: Path, device: Path, agent: Path) -> None:
    """With -o ro_namespace the master's mount is famfs_fused: cp, touch, mkdir, rm, rmdir,
    mv, chmod through it fail (EPERM: famfs_fused says ENOTSUP, upstream's tests check only that
    they fail), nothing is logged, a file rm'd through it is there after a remount; file data
    stays writable."""
    before = famfsctl("status", "--device", device).stdout
    with Mount(agent, device, tmp_path / "mnt", "ro_namespace") as mount:
        root = mount.mountpoint
        assert refused(os.mkdir, root / "newdir") == errno.EPERM
        assert refused(lambda: open(root / "touchfile", "x").close()) == errno.EPERM
        assert refused(os.unlink, root / "top") == errno.EPERM
        assert refused(os.rmdir, root / "a/b/c") == errno.EPERM
        assert refused(os.rename, root / "top", root / "moved") == errno.EPERM
        assert refused(os.chmod, root / "top", 0o600) == errno.EPERM
        for argv in (["cp", "/etc/hostname", str(root / "pwd")], ["touch", str(root / "touchfile")],
                     ["mkdir", str(root / "d")], ["rm", str(root / "top")]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S)
            assert done.returncode != 0, argv
        assert not (root / "pwd").exists() and not (root / "touchfile").exists() and not (root / "d").exists()
        with open(root / "top", "r+b") as data:  # file data stays writable
            data.write(b"written")
        assert (root / "top").read_bytes()[:7] == b"written"
    assert "ro_namespace" in mount.log() and "namespace_change_refused" in mount.log()
    assert famfsctl("status", "--device", device).stdout == before  # nothing logged
    with Mount(agent, device, tmp_path / "mnt", "ro_namespace") as mount:
        assert (mount.mountpoint / "top").stat().st_size == 4096  # upstream's test4: "restored after remount"


def test_default_master_mount_stays_writable(tmp_path: Path, device: Path, agent: Path) -> None:
    """Without the option the master's mount logs namespace changes, as before."""
    with Mount(agent, device, tmp_path / "mnt") as mount:
        bounded(lambda: os.mkdir(mount.mountpoint / "made"), "mkdir through the master's mount")
        assert (mount.mountpoint / "made").is_dir()
    assert (agent / "root" / "made").is_dir()  # logged, and played by the agent


# --- 3 and 4: upstream's CLI writes the shadow of what it just logged, ahead of the agent -------

ROUNDS = 150


def write_in_place(path: Path, data: bytes) -> None:
    """As upstream's CLI writes a shadow file: opened with O_TRUNC at its path, written, closed
    (no temp file and rename)."""
    with open(path, "wb") as out:
        out.write(data)


def fill(path: Path, data: bytes) -> None:
    """Open a famfs file through the mount (no O_TRUNC: its size is fixed) and write into it."""
    with open(path, "r+b") as out:
        out.write(data)


def agent_caught_up(image: Path, shadow: Path) -> bool:
    state = agent_state(shadow)
    return int(state["applied_index"]) + 1 >= log_next_index(image)


def log_next_index(image: Path) -> int:
    with Device(image) as device:
        return FamfsLog(device).next_index()


def no_rebuild(agent_log: str) -> None:
    for word in ("rebuild", "shadow_damaged", "shadow_write_failed", "duplicate_path", "behind the agent"):
        assert word not in agent_log, agent_log


def test_logged_written_and_opened_at_once(tmp_path: Path, system_uuid_file: Path) -> None:
    """Upstream's CLI in FUSE mode, `famfs creat`/`cp`, over and over: stat the new path (a
    negative lookup), append the FILE entry (famfs's own writer: entry, then header), write the
    file's YAML into the shadow itself, then at once open the file through the mount and fill it.
    Every open succeeds, every file reads back what was written, and the agent plays every
    entry without calling the CLI's YAML damage."""
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    with following(image, shadow) as agent:
        with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
            append(image, [mkdir_entry("d", mode=0o750)])
            os.makedirs(shadow / "root" / "d", mode=0o755, exist_ok=True)  # the CLI's, with its umask
            for n in range(ROUNDS):
                entry = file_entry(f"d/f{n}", n, size=1000 + n)
                target = mount.mountpoint / entry.relpath
                if n % 2:
                    assert not bounded(target.exists, "stat of a new path")  # upstream stats it first
                append(image, [entry])
                write_in_place(shadow / "root" / entry.relpath, emit_file_yaml(entry))
                bounded(lambda: fill(target, b"%d." % n * 100), f"open and fill {entry.relpath}")
            wait_for(lambda: agent_caught_up(image, shadow), "the agent plays the log", FOLLOW_WAIT_S)
            for n in range(ROUNDS):
                data = bounded((mount.mountpoint / f"d/f{n}").read_bytes, "read back")
                assert data[:len(b"%d." % n * 100)] == b"%d." % n * 100 and len(data) == 1000 + n
                assert (shadow / "root" / f"d/f{n}").read_bytes() == emit_file_yaml(file_entry(f"d/f{n}", n, 1000 + n))
            assert stat.S_IMODE((mount.mountpoint / "d").stat().st_mode) == 0o750  # the logged mode
        assert "Traceback" not in mount.log()
    no_rebuild(agent.log)  # type: ignore[attr-defined]


def test_written_and_opened_before_it_is_logged(tmp_path: Path, system_uuid_file: Path) -> None:
    """Upstream's `__famfs_mkfile` in FUSE mode in its own order (famfs_lib.c, read at upstream's
    commit 0330cace, and spec §7): allocate, write the YAML into the shadow, open the file through
    the mount, and only then append the FILE entry, by a store into its MAP_SHARED mapping of
    `.meta/.log`, which on our page-cached mount reaches the device when the CLI closes the log
    at the end of the command. The open succeeds (served ahead of the log: its units are free);
    the agent then plays the entry without a rebuild, and the same handle keeps working."""
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    entry = file_entry("f", 0, size=4096)
    with following(image, shadow):
        with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
            target = mount.mountpoint / "f"
            write_in_place(shadow / "root" / "f", emit_file_yaml(entry))
            with bounded(lambda: open(target, "r+b", buffering=0), "open before the entry is logged") as handle:
                bounded(lambda: handle.write(b"filled"), "fill before the entry is logged")

                def through_a_mapping() -> None:  # as upstream's cp and creat -r fill a new file
                    with mmap.mmap(handle.fileno(), 4096) as mapped:
                        assert mapped[:6] == b"filled"
                        mapped[100:106] = b"mapped"
                        mapped.flush()

                bounded(through_a_mapping, "a shared mapping before the entry is logged")
                append(image, [entry])
                wait_for(lambda: agent_caught_up(image, shadow), "the agent plays the entry", FOLLOW_WAIT_S)
                bounded(lambda: os.pwrite(handle.fileno(), b"again", 6), "a write once it is logged")
            data = bounded(target.read_bytes, "read back")
            assert data[:11] == b"filledagain" and data[100:106] == b"mapped"
            assert read_device(image, entry.extents[0].offset, 106)[100:] == b"mapped"  # on the device
            assert os.getxattr(shadow / "root" / "f", FILE_XATTR)  # the agent's own YAML now
        assert mount.log().count("served ahead of the log") == 1 and "not served" not in mount.log()
    no_rebuild((shadow.parent / f"{shadow.name}.log").read_text())


def test_a_level_of_mkdir_p_is_served_before_it_is_logged(tmp_path: Path, system_uuid_file: Path) -> None:
    """Upstream's `famfs mkdir -p MPT/a/b` (famfs_make_parent_dir, __famfs_mkdir; read at upstream's
    commit 0330cace): mkdir `a` in the shadow, store its MKDIR into the mapped log (on the device
    when the command ends), then stat and realpath `MPT/a` through the mount, as the parent of
    `b`. The level is served ahead of the log with the shadow directory's own mode; once its
    MKDIR is played, with the logged mode, as any directory."""
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    with following(image, shadow):
        with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
            os.mkdir(shadow / "root" / "a", 0o700)
            made = bounded((mount.mountpoint / "a").stat, "stat of the new level")
            assert stat.S_ISDIR(made.st_mode) and (stat.S_IMODE(made.st_mode), made.st_uid) == (0o700, os.geteuid())
            os.mkdir(shadow / "root" / "a" / "b", 0o700)
            assert bounded((mount.mountpoint / "a" / "b").is_dir, "the next level")
            append(image, [mkdir_entry("a", mode=0o750, uid=5, gid=6), mkdir_entry("a/b")])
            wait_for(lambda: agent_caught_up(image, shadow), "the agent plays the entries", FOLLOW_WAIT_S)
            wait_for(lambda: (stat.S_IMODE((mount.mountpoint / "a").stat().st_mode), (mount.mountpoint / "a").stat().st_uid)
                     == (0o750, 5), "the logged mode and owner served")
            assert bounded((mount.mountpoint / "a" / "b").is_dir, "the levels once logged")
    no_rebuild((shadow.parent / f"{shadow.name}.log").read_text())


def not_served_lines(mount_log: str, relpath: str) -> list[str]:
    return [line for line in mount_log.splitlines() if "not served" in line and f"root/{relpath}'" in line]


def test_what_is_not_served_ahead_of_the_log(tmp_path: Path, paused: tuple[Path, Path, subprocess.Popen[str]]) -> None:
    """On the master's ro_namespace mount, a YAML no entry owns yet is refused (ENOENT, one log
    line naming the path and the rule) when a unit it maps is a logged file's, or logged since
    the agent's cursor to another path; when root does not own it; when it carries the agent's
    file record. A directory some user owns is not served ahead either. One on free space is."""
    image, shadow, agent = paused  # keep/old on unit 0
    root = shadow / "root"
    with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
        mnt = mount.mountpoint
        agent.send_signal(signal.SIGSTOP)  # no idle check of the agent's meanwhile: it would rebuild the tree
        try:
            write_in_place(root / "overlap", emit_file_yaml(file_entry("overlap", 0)))
            assert refused(os.stat, mnt / "overlap") == errno.ENOENT
            assert refused(os.stat, mnt / "overlap") == errno.ENOENT  # asked twice, said once
            write_in_place(root / "theirs", emit_file_yaml(file_entry("theirs", 7)))
            os.chown(root / "theirs", 1234, 1234)
            assert refused(os.stat, mnt / "theirs") == errno.ENOENT
            write_in_place(root / "recorded", emit_file_yaml(file_entry("recorded", 8)))
            os.setxattr(root / "recorded", FILE_XATTR, os.getxattr(root / "keep/old", FILE_XATTR))
            assert refused(os.stat, mnt / "recorded") == errno.ENOENT
            os.mkdir(root / "userdir")
            os.chown(root / "userdir", 1234, 1234)
            assert refused(os.stat, mnt / "userdir") == errno.ENOENT
            write_in_place(root / "free", emit_file_yaml(file_entry("free", 9, size=777)))
            assert bounded((mnt / "free").stat, "a YAML on free space").st_size == 777
            append(image, [file_entry("keep/pending", 5)])  # logged, not played: the agent is stopped
            write_in_place(root / "same-units", emit_file_yaml(file_entry("same-units", 5)))
            assert refused(os.stat, mnt / "same-units") == errno.ENOENT
            log = mount.log()  # before the agent runs again: it rebuilds a tree with files the log has not
        finally:
            agent.send_signal(signal.SIGCONT)
    for relpath, rule in (("overlap", "not free device space"), ("theirs", "owned by uid 1234"),
                          ("recorded", "trusted.famfs.file"), ("same-units", "not played yet")):
        lines = not_served_lines(log, relpath)
        assert len(lines) == 1 and rule in lines[0], (relpath, lines)
    assert "owned by uid 1234" in not_served_lines(log, "userdir")[0] and not not_served_lines(log, "free")
    assert "Traceback" not in mount.log()


def test_nothing_is_served_ahead_on_a_client_or_without_ro_namespace(tmp_path: Path, system_uuid_file: Path) -> None:
    """The master's default mount and a client's (ro_namespace or not) serve only what the log
    owns: a YAML on free space and a directory without its xattr are not served there."""
    image = make_device(tmp_path, system_uuid_file)
    hosts = ((tmp_path / "master", (), None),
             (tmp_path / "client", ("--system-uuid-file", client_uuid_file(tmp_path)), client_env(tmp_path)))
    for base, agent_args, env in hosts:
        base.mkdir()
        shadow = base / "shadow"
        with following(image, shadow, *agent_args) as agent:
            for options in ((), ("ro_namespace",)) if env is not None else ((),):
                with Mount(shadow, image, base / "mnt", *options, env=env) as mount:
                    agent.send_signal(signal.SIGSTOP)  # no idle check: it would rebuild the tree
                    try:
                        write_in_place(shadow / "root" / "early", emit_file_yaml(file_entry("early", 3)))
                        os.mkdir(shadow / "root" / "level")
                        assert refused(os.stat, mount.mountpoint / "early") == errno.ENOENT, (base, options)
                        assert refused(os.stat, mount.mountpoint / "level") == errno.ENOENT, (base, options)
                    finally:
                        (shadow / "root" / "early").unlink()
                        (shadow / "root" / "level").rmdir()
                        agent.send_signal(signal.SIGCONT)
                assert "ahead of the log" not in mount.log() and not_served_lines(mount.log(), "early")


def direct_read(fd: int) -> bytes:
    """The first 4 KiB of `fd` (opened O_DIRECT: the read reaches the mount, whatever the page
    cache holds), into an aligned buffer, as O_DIRECT needs."""
    with mmap.mmap(-1, 4096) as buffer:
        done = os.preadv(fd, [buffer], 0)
        return bytes(buffer[:done])


def test_units_taken_by_the_log_after_the_open(tmp_path: Path, paused: tuple[Path, Path, subprocess.Popen[str]]) -> None:
    """A file served ahead of the log whose writer died before logging it (an orphan): once the
    log gives its units to another file, the next read and write of the open handle fail (EIO),
    before the agent has played that entry and after; the other file's bytes never come back
    through it, and a new open is EIO."""
    image, shadow, agent = paused
    orphan = file_entry("orphan", 3, size=4096)
    with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
        path = mount.mountpoint / "orphan"
        write_in_place(shadow / "root" / "orphan", emit_file_yaml(orphan))
        with contextlib.ExitStack() as opened:  # closed before the unmount, even on failure
            handle = opened.enter_context(bounded(lambda: open(path, "r+b", buffering=0), "open ahead of the log"))
            bounded(lambda: handle.write(b"orphan's"), "write ahead of the log")
            assert bounded(lambda: os.pread(handle.fileno(), 8, 0), "read ahead of the log") == b"orphan's"
            direct = bounded(lambda: os.open(path, os.O_RDONLY | os.O_DIRECT), "open with O_DIRECT")
            opened.callback(os.close, direct)
            agent.send_signal(signal.SIGSTOP)
            try:
                append(image, [file_entry("other", 3, size=4096)])  # another command took the free unit
                write_device(image, orphan.extents[0].offset, b"OTHER'S!")
                assert refused(direct_read, direct) == errno.EIO  # logged, not played yet: a read that reaches the mount
                assert refused(os.pwrite, handle.fileno(), b"clobber", 0) == errno.EIO

                def cached_read_fails() -> bool:  # a read from the page cache holds the orphan's own bytes,
                    try:                          # until the mount has the kernel drop them (within a second)
                        assert os.pread(handle.fileno(), 8, 0) == b"orphan's"
                    except OSError as err:
                        return err.errno == errno.EIO
                    return False

                wait_for(lambda: bounded(cached_read_fails, "a read of the orphan"), "the orphan's pages dropped")
            finally:
                agent.send_signal(signal.SIGCONT)
            wait_for(lambda: agent_caught_up(image, shadow), "the agent plays the other file", FOLLOW_WAIT_S)
            assert refused(os.pread, handle.fileno(), 8, 0) == errno.EIO
            assert refused(direct_read, direct) == errno.EIO
        assert refused(lambda: open(path, "rb").close()) == errno.EIO
        assert bounded((mount.mountpoint / "other").read_bytes, "the other file")[:8] == b"OTHER'S!"
    lines = not_served_lines(mount.log(), "orphan")  # one a reason: the entry not played, then the unit taken
    assert lines and "not played yet" in lines[0] and "'other'" in lines[0], lines


@pytest.fixture
def paused(tmp_path: Path, system_uuid_file: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[str]]]:
    """(image, shadow, agent): a following agent that has played a first file, to be stopped
    (SIGSTOP) while a test writes ahead of it."""
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("keep"), file_entry("keep/old", 0)])
    shadow = tmp_path / "shadow"
    with following(image, shadow) as agent:
        wait_for(lambda: agent_caught_up(image, shadow), "the first play", FOLLOW_WAIT_S)
        yield image, shadow, agent


def ahead(agent: subprocess.Popen[str], write: Callable[[], None]) -> None:
    """`write` while the agent is stopped: it plays what was logged only afterwards."""
    agent.send_signal(signal.SIGSTOP)
    try:
        write()
    finally:
        agent.send_signal(signal.SIGCONT)


def test_entries_written_ahead_are_played_without_rebuild(paused: tuple[Path, Path, subprocess.Popen[str]]) -> None:
    """Logged entries whose shadow file (byte-identical YAML), directory (logged mode and owner,
    or the CLI's umask'ed mode) or half-written YAML (a prefix: the CLI mid-write) is there
    before the agent plays them: each is that entry played. No rebuild: the files of earlier
    entries keep their shadow inodes."""
    image, shadow, agent = paused
    root = shadow / "root"
    old_ino = (root / "keep/old").stat().st_ino
    whole, half = file_entry("keep/whole", 1), file_entry("new/half", 2, mode=0o600, uid=12, gid=34)

    def write() -> None:
        append(image, [whole, mkdir_entry("new", mode=0o711, uid=5, gid=6), mkdir_entry("same", mode=0o755), half])
        write_in_place(root / "keep/whole", emit_file_yaml(whole))
        os.mkdir(root / "new", 0o700)  # not the logged mode or owner: the agent sets them
        os.mkdir(root / "same", 0o755)
        write_in_place(root / "new/half", emit_file_yaml(half)[:100])

    ahead(agent, write)
    wait_for(lambda: agent_caught_up(image, shadow), "the agent plays the entries", FOLLOW_WAIT_S)
    assert (root / "keep/whole").read_bytes() == emit_file_yaml(whole)
    assert (root / "new/half").read_bytes() == emit_file_yaml(half)
    made = (root / "new").stat()  # the agent's now (docs/security.md): the logged mode in its xattr
    assert (stat.S_IMODE(made.st_mode), made.st_uid, made.st_gid) == (SHADOW_DIR_MODE, os.geteuid(), os.getegid())
    record = DirRecord.decode(os.getxattr(root / "new", DIR_XATTR))
    assert record is not None and (record.mode, record.uid, record.gid) == (0o711, 5, 6)
    assert (root / "keep/old").stat().st_ino == old_ino  # not rebuilt
    assert agent_state(shadow)["live_files"] == 3
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=FOLLOW_WAIT_S)
    log = (shadow.parent / f"{shadow.name}.log").read_text()
    no_rebuild(log)
    # whole, half (a prefix), and both directories: each made the agent's (root's 0755, the logged
    # mode and owner in its xattr), "same" too, though the CLI made it with the logged mode.
    assert log.count("ahead_written_accepted") == 4


def test_a_differing_file_written_ahead_is_damage(paused: tuple[Path, Path, subprocess.Popen[str]]) -> None:
    """A shadow file at a logged path that is not what the agent writes for the entry (another
    mode here) is still damage: the tree is rebuilt, and then holds the log's YAML."""
    image, shadow, agent = paused
    root = shadow / "root"
    entry = file_entry("keep/other", 1, mode=0o600)
    ahead(agent, lambda: (append(image, [entry]),
                          write_in_place(root / "keep/other", emit_file_yaml(file_entry("keep/other", 1, mode=0o666)))))
    log_path = shadow.parent / f"{shadow.name}.log"
    wait_for(lambda: "rebuild" in log_path.read_text() and agent_caught_up(image, shadow)
             and (root / "keep/other").exists() and (root / "keep/other").read_bytes() == emit_file_yaml(entry),
             "the rebuild", FOLLOW_WAIT_S)
    assert "is not what log entry" in log_path.read_text()


def test_lookup_waits_for_the_agent_behind_the_log(tmp_path: Path,
                                                   paused: tuple[Path, Path, subprocess.Popen[str]]) -> None:
    """A YAML in the shadow the mount cannot serve yet (half-written here; with the owner map,
    one the agent does not own yet) while this host's agent is behind the log: the lookup waits
    for the agent (bounded) and answers with what it played. Once the agent is caught up, no
    lookup waits: a bad YAML is EIO at once."""
    image, shadow, agent = paused
    entry = file_entry("keep/late", 1, size=4321)
    with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
        agent.send_signal(signal.SIGSTOP)
        try:
            append(image, [entry])
            write_in_place(shadow / "root" / entry.relpath, emit_file_yaml(entry)[:60])
            waiter = threading.Timer(0.3, agent.send_signal, (signal.SIGCONT,))
            waiter.start()
            assert bounded((mount.mountpoint / entry.relpath).stat, "a lookup that waits").st_size == 4321
        finally:
            agent.send_signal(signal.SIGCONT)
        wait_for(lambda: agent_caught_up(image, shadow), "the agent plays the entry", FOLLOW_WAIT_S)
        write_in_place(shadow / "root" / "keep/junk", b"not yaml\n")  # no entry: the agent is not behind
        assert refused(os.stat, mount.mountpoint / "keep/junk") == errno.EIO


def test_ro_namespace_option_and_negative_timeout(tmp_path: Path) -> None:
    """-o ro_namespace (or the [mount] key) caches no negative lookup unless negative_timeout
    is set on purpose; -o rw_namespace overrides the key."""
    config = tmp_path / "famfs-agent.toml"
    base = ["--shadow", str(tmp_path), "--device", str(tmp_path / "dev.img"), "--config", str(config), "/mnt/x"]

    def resolved(*options: str, toml: str = "") -> tuple[bool, float]:
        config.write_text(toml)
        cfg = cli.resolve(cli.parser().parse_args([*(f"-o{option}" for option in options), *base]))
        return cfg.read_only_namespace, cfg.negative_timeout

    assert resolved() == (False, 3600.0)
    assert resolved("ro_namespace") == (True, 0.0)
    assert resolved("ro_namespace,negative_timeout=5") == (True, 5.0)
    assert resolved(toml="[mount]\nread_only_namespace = true\n") == (True, 0.0)
    assert resolved(toml="[mount]\nread_only_namespace = true\nnegative_timeout = 7.0\n") == (True, 7.0)
    assert resolved("rw_namespace", toml="[mount]\nread_only_namespace = true\n") == (False, 3600.0)
    assert cli.fsname("/dev/x,y\\z") == "/dev/x\\,y\\\\z"


def built_with_ahead_writes(tmp_path: Path, uuid_file: Path, top: bytes | None = None) -> Path:
    """A first play (built in staging/) while upstream's CLI writes the shadow of the same entries
    into root/: a directory with its own mode, a whole YAML, half a YAML and `top` (default: the
    agent's own bytes). The shadow dir; ShadowError from finish_build if the merge refuses."""
    image = make_device(tmp_path, uuid_file)
    entries = [mkdir_entry("d", mode=0o750, uid=3, gid=4), file_entry("d/f", 0), file_entry("d/g", 1),
               file_entry("top", 2)]
    append(image, entries)
    shadow = tmp_path / "shadow"
    with ShadowTree(shadow) as tree, Device(image) as device:
        famfs_log = FamfsLog(device)
        tree.reset(famfs_log.superblock, str(image))
        tree.begin_build()
        for index, entry in enumerate(entries):
            tree.apply(index, entry, famfs_log)
        root = shadow / "root"
        os.mkdir(root / "d", 0o700)
        write_in_place(root / "d/f", emit_file_yaml(entries[1]))
        write_in_place(root / "d/g", emit_file_yaml(entries[2])[:50])
        write_in_place(root / "top", emit_file_yaml(entries[3]) if top is None else top)
        tree.finish_build()
    return shadow


def test_a_first_play_merges_what_was_written_ahead(tmp_path: Path, system_uuid_file: Path) -> None:
    root = built_with_ahead_writes(tmp_path, system_uuid_file) / "root"
    made = (root / "d").stat()  # the agent's, the logged mode and owner in its xattr (docs/security.md)
    assert (stat.S_IMODE(made.st_mode), made.st_uid, made.st_gid) == (SHADOW_DIR_MODE, os.geteuid(), os.getegid())
    record = DirRecord.decode(os.getxattr(root / "d", DIR_XATTR))
    assert record is not None and (record.mode, record.uid, record.gid) == (0o750, 3, 4)
    assert (root / "d/f").read_bytes() == emit_file_yaml(file_entry("d/f", 0))
    assert (root / "d/g").read_bytes() == emit_file_yaml(file_entry("d/g", 1))
    assert (root / "top").read_bytes() == emit_file_yaml(file_entry("top", 2))
    assert sorted(os.listdir(root / "d")) == ["f", "g"]


def test_a_first_play_refuses_what_differs(tmp_path: Path, system_uuid_file: Path) -> None:
    with pytest.raises(ShadowError, match="'top' appeared behind the agent's back"):
        built_with_ahead_writes(tmp_path, system_uuid_file, top=b"---\nnot what the log says\n")
