"""The shadow tree is a trust root (docs/security.md, issue 21): the attacks of the review, done
as an unprivileged user (and as root where the check must hold even for root's accidents), are
each refused or inert, with the bytes served and the device unchanged.

The shadow, the mount point and the files the user plants live under a 0755 directory in /tmp,
so the user can reach them: a refusal is the tree's doing, not an unreachable parent's.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs import hosts, safepath
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.ownership import HELD, ListedFile, OwnerMap, ShadowCheck
from famfs.shadowdir import AGENT_DIR, DIR_XATTR, FILE_XATTR, OWNERS_FILE, DirRecord, shadow_permission_problem
from famfs.shadowyaml import emit_file_yaml
from tests.agent_util import dir_attrs, following, make_device, run_agent
from tests.famfsctl_util import digest, famfsctl, file_bytes, make_image
from tests.fuse_util import Mount, wait_for

USER = f"famfssec{os.getpid() % 100000}"


@pytest.fixture
def user() -> Iterator[tuple[int, int]]:
    """(uid, gid) of a fresh unprivileged user, removed after the test whatever happens."""
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", USER],
                   check=True, capture_output=True)
    try:
        import pwd
        entry = pwd.getpwnam(USER)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", USER], check=False, capture_output=True)


def as_user(*argv: object) -> subprocess.CompletedProcess[str]:
    """A command run as the test user (real and effective ids, its groups only)."""
    return subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *map(str, argv)],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Path]:
    """A 0755 root-owned directory under /tmp (sticky), reachable by the test user."""
    where = Path(tempfile.mkdtemp(prefix="famfs-sec-", dir="/tmp"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def served(tmp_path: Path, system_uuid_file: Path, place: Path) -> tuple[Path, Path]:
    """(image, shadow): a master's device with a shared 0777 and a 1777 directory holding root's
    0600 secret, a subdirectory, and a file later deleted."""
    image = make_device(tmp_path, system_uuid_file)
    for args in (["-m", "0777", "shared"], ["-m", "1777", "tmpdir"], ["-m", "0755", "tmpdir/sub"],
                 ["-m", "2775", "-u", "1000", "-g", "100", "setgid"], ["-m", "0700", "private"]):
        famfsctl("mkdir", "--device", image, *args)
    famfsctl("creat", "--device", image, "-s", "2m", "-m", "0600", "-r", "-S", "7", "shared/secret")
    famfsctl("creat", "--device", image, "-s", "2m", "-m", "0644", "-r", "-S", "8", "tmpdir/gone")
    famfsctl("rm", "--device", image, "tmpdir/gone")
    return image, place / "shadow"


def test_directories_are_roots_0755_and_served_with_their_logged_modes(
        tmp_path: Path, system_uuid_file: Path, place: Path) -> None:
    image, shadow = served(tmp_path, system_uuid_file, place)
    with following(image, shadow), Mount(shadow, image, place / "mnt", "allow_other") as mount:
        wait_for(lambda: (mount.mountpoint / "shared" / "secret").exists(), "the tree in the mount")
        for relpath, logged in {"shared": (0o777, 0, 0), "tmpdir": (0o1777, 0, 0), "setgid": (0o2775, 1000, 100),
                                "private": (0o700, 0, 0), "tmpdir/sub": (0o755, 0, 0)}.items():
            on_disk = (shadow / "root" / relpath).lstat()
            assert (stat.S_IMODE(on_disk.st_mode), on_disk.st_uid, on_disk.st_gid) == (0o755, 0, 0), relpath
            assert dir_attrs(shadow / "root" / relpath) == logged
            info = (mount.mountpoint / relpath).stat()
            assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == logged, relpath
        assert stat.S_IMODE((shadow / AGENT_DIR).stat().st_mode) == 0o711


def test_unprivileged_swap_hidden_and_symlink_are_refused(
        tmp_path: Path, system_uuid_file: Path, place: Path, user: tuple[int, int]) -> None:
    image, shadow = served(tmp_path, system_uuid_file, place)
    with following(image, shadow), Mount(shadow, image, place / "mnt", "allow_other") as mount:
        secret = mount.mountpoint / "shared" / "secret"
        wait_for(secret.exists, "the tree in the mount")
        before = digest(image, but=hosts.TABLE_SPAN)  # the agent renews its host record meanwhile
        secret_bytes = file_bytes(image, "shared/secret")
        assert secret.read_bytes() == secret_bytes
        root = shadow / "root"
        # (a) swap: a YAML of the user's own, mode 0666, over root's 0600 file in a 0777 directory.
        swapped = emit_file_yaml(_live(image, "shared/secret")._replace(mode=0o666))
        mine = place / "mine.yaml"
        mine.write_bytes(swapped)
        os.chown(mine, *user)
        moved = as_user("mv", "-f", mine, root / "shared" / "secret")
        assert moved.returncode != 0 and "Permission denied" in moved.stderr
        assert as_user("cat", secret).returncode != 0  # still root's 0600 through the mount
        # (b) hidden: an unlogged directory in the 1777 directory, for planted YAMLs.
        made = as_user("mkdir", root / "tmpdir" / "hidden")
        assert made.returncode != 0 and "Permission denied" in made.stderr
        planted = as_user("sh", "-c", f"cat > '{root / 'tmpdir' / 'gone'}' < /dev/null")
        assert planted.returncode != 0
        # (2) a YAML of the secret's memory planted beside it: the user cannot write it anywhere.
        thief = place / "thief.yaml"
        thief.write_bytes(emit_file_yaml(_live(image, "shared/secret")._replace(relpath="tmpdir/thief", mode=0o666)))
        os.chown(thief, *user)
        for target in (root / "tmpdir" / "thief", root / "thief", shadow / "thief"):
            copied = as_user("cp", thief, target)
            assert copied.returncode != 0 and "Permission denied" in copied.stderr, target
        assert not (mount.mountpoint / "tmpdir" / "thief").exists()
        # (c) symlink: a logged subdirectory replaced by a link to a root-only directory.
        (place / "rootonly").mkdir(mode=0o700)
        renamed = as_user("mv", root / "tmpdir" / "sub", root / "tmpdir" / "elsewhere")
        assert renamed.returncode != 0 and "Permission denied" in renamed.stderr
        linked = as_user("ln", "-s", place / "rootonly", root / "tmpdir" / "sub2")
        assert linked.returncode != 0
        # Nothing changed: the tree's owners, the bytes served, the device.
        assert secret.read_bytes() == secret_bytes
        assert digest(image, but=hosts.TABLE_SPAN) == before
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            assert info.st_uid == 0 and not info.st_mode & 0o022, path


def _live(image: Path, relpath: str) -> fmt.FileEntry:
    """The last FILE entry naming relpath (the live one in these tests, or the one deleted)."""
    with Device(str(image)) as device:
        found = [entry for _, entry in FamfsLog(device).entries()
                 if isinstance(entry, fmt.FileEntry) and entry.relpath == relpath]
    return found[-1]


def test_root_planted_yaml_is_never_served_first_or_not(tmp_path: Path, system_uuid_file: Path, place: Path) -> None:
    """Item 2 of issue 21, as root (so also as anyone): a YAML mapping a live file's units, a
    deleted file's, or free space, planted and looked up before the real file, is not served;
    the real file is, with its bytes; the same for famfs.open."""
    image, shadow = served(tmp_path, system_uuid_file, place)
    root = shadow / "root"
    # A one-shot play: its record does not self-fence (docs/reclaim.md), so the mount serves with
    # no agent running while the YAMLs are planted behind its back.
    played = run_agent("--shadow", shadow, image)
    assert played.returncode == 0, played.stderr
    secret = _live(image, "shared/secret")
    gone = _live(image, "tmpdir/gone")
    free = secret._replace(relpath="free", extents=(fmt.Extent(secret.extents[0].offset + 64 * fmt.ALLOC_UNIT,
                                                                fmt.ALLOC_UNIT),))
    plants = {"planted": secret._replace(relpath="planted", mode=0o666),  # a live file's memory
              "tmpdir/gone": gone,  # a deleted file's YAML copied back (cp -a, a backup)
              "free": free}  # free device space
    for relpath, entry in plants.items():
        (root / relpath).write_bytes(emit_file_yaml(entry))
    # A directory made by hand, with a YAML in it; and a logged directory's xattr forged.
    (root / "byhand").mkdir()
    (root / "byhand" / "f").write_bytes(emit_file_yaml(free._replace(relpath="byhand/f")))
    before = digest(image)
    with Mount(shadow, image, place / "mnt", "allow_other") as mount:
        for relpath in [*plants, "byhand", "byhand/f"]:  # looked up first, before the real file
            with pytest.raises(FileNotFoundError):
                (mount.mountpoint / relpath).stat()
        assert set(os.listdir(mount.mountpoint)) == {".meta", "shared", "tmpdir", "setgid", "private"}
        assert "gone" not in os.listdir(mount.mountpoint / "tmpdir")
        assert (mount.mountpoint / "shared" / "secret").read_bytes() == file_bytes(image, "shared/secret")
        import famfs
        with famfs.open(mount.mountpoint / "shared" / "secret") as mapped:
            assert bytes(mapped.buffer) == file_bytes(image, "shared/secret")
        for relpath in plants:
            with pytest.raises(FileNotFoundError, match="not served"):
                famfs.open(mount.mountpoint / relpath)
    log = mount.log()
    assert "maps units of log entry" in log and "maps free device space" in log and "no live file owns" in log
    assert "shadow directory not served" in log
    assert digest(image) == before


def _indexed(image: Path, relpath: str) -> int:
    """The index of the last FILE entry naming relpath."""
    with Device(str(image)) as device:
        return [index for index, entry in FamfsLog(device).entries()
                if isinstance(entry, fmt.FileEntry) and entry.relpath == relpath][-1]


def test_a_file_record_lists_the_logs_attributes_and_a_copied_or_forged_one_never(
        tmp_path: Path, system_uuid_file: Path, place: Path) -> None:
    """The agent records each shadow file's owner-map entry in trusted.famfs.file, the YAML
    byte-identical to upstream's; a listing serves the attributes of that slot only when the
    owner map says it is the live entry for the path. A record copied with its YAML (cp -a, as
    root) or naming another file's entry lists nothing of that entry: the YAML is checked in full."""
    image, shadow = served(tmp_path, system_uuid_file, place)
    famfsctl("creat", "--device", image, "-s", "3m", "-m", "0640", "-u", "7", "-g", "8", "shared/other")
    played = run_agent("--shadow", shadow, image)
    assert played.returncode == 0, played.stderr
    root = shadow / "root"
    secret, other = _live(image, "shared/secret"), _live(image, "shared/other")
    secret_at, other_at, gone_at = (_indexed(image, name) for name in ("shared/secret", "shared/other", "tmpdir/gone"))
    assert (root / "shared" / "secret").read_bytes() == emit_file_yaml(secret)
    assert os.getxattr(root / "shared" / "secret", FILE_XATTR) == str(secret_at).encode()
    with Device(str(image)) as device:
        check = ShadowCheck(FamfsLog(device), shadow / AGENT_DIR / OWNERS_FILE)
        assert check.listed(b"shared/other", other_at) == ListedFile(3 << 20, 0o640, 7, 8, other.capacity())
        assert check.listed(b"planted", secret_at) is None  # another path's entry
        assert check.listed(b"tmpdir/gone", gone_at) is None  # deleted: its units are held, no one's
        assert check.listed(b"shared", 0) is None  # not a FILE entry
        assert check.listed(b"shared/secret", 1 << 40) is None  # past the log's end
        check.close()
    shutil.copy2(root / "shared" / "secret", root / "planted")  # cp -a: the record too
    assert os.getxattr(root / "planted", FILE_XATTR) == str(secret_at).encode()
    os.setxattr(root / "shared" / "other", FILE_XATTR, str(secret_at).encode())  # forged: another file's entry
    with Mount(shadow, image, place / "mnt") as mount:
        assert "planted" not in os.listdir(mount.mountpoint)
        with pytest.raises(OSError) as refused:  # EIO: its YAML names another path
            (mount.mountpoint / "planted").stat()
        assert refused.value.errno == errno.EIO
        assert sorted(os.listdir(mount.mountpoint / "shared")) == ["other", "secret"]
        got = (mount.mountpoint / "shared" / "other").stat()
        assert (got.st_size, stat.S_IMODE(got.st_mode), got.st_uid, got.st_gid) == (3 << 20, 0o640, 7, 8)
        got = (mount.mountpoint / "shared" / "secret").stat()
        assert (got.st_size, stat.S_IMODE(got.st_mode), got.st_blocks) == (2 << 20, 0o600, secret.capacity() // 512)
    famfsctl("creat", "--device", image, "-s", "1m", "shared/late")  # played on resume: staged, renamed in
    played = run_agent("--shadow", shadow, image)
    assert played.returncode == 0, played.stderr
    assert os.getxattr(root / "shared" / "late", FILE_XATTR) == str(_indexed(image, "shared/late")).encode()


def test_a_symlink_where_a_logged_directory_was_is_never_followed(
        tmp_path: Path, system_uuid_file: Path, place: Path) -> None:
    """Root's accident (or a compromised tool): a logged directory replaced by a symlink to a
    root-only directory. The agent creates nothing there (the symlink is never resolved:
    ENOTDIR), takes it for a tree changed behind its back and rebuilds."""
    image, shadow = served(tmp_path, system_uuid_file, place)
    root = shadow / "root"
    outside = place / "rootonly"
    outside.mkdir(mode=0o700)
    with following(image, shadow) as agent:
        wait_for(lambda: (root / "tmpdir" / "sub").is_dir(), "the first play")
        shutil.rmtree(root / "tmpdir" / "sub")
        os.symlink(outside, root / "tmpdir" / "sub")
        famfsctl("creat", "--device", image, "-s", "2m", "tmpdir/sub/next")
        famfsctl("mkdir", "--device", image, "-m", "0777", "tmpdir/sub/nextdir")
        wait_for(lambda: (root / "tmpdir" / "sub").is_dir() and not (root / "tmpdir" / "sub").is_symlink()
                 and (root / "tmpdir" / "sub" / "nextdir").is_dir(), "the rebuilt tree")
        assert agent.poll() is None
    assert list(outside.iterdir()) == []
    assert dir_attrs(root / "tmpdir" / "sub" / "nextdir") == (0o777, 0, 0)
    log = (shadow.parent / f"{shadow.name}.log").read_text()
    assert "cannot create 'tmpdir/sub/next'" in log and "event='rebuild'" in log


def test_safe_resolution_refuses_symlinks_and_dotdot_with_and_without_openat2(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    os.symlink(tmp_path / "a", tmp_path / "link")
    try:
        with safepath.Root(tmp_path) as root:
            for have in (True, False):
                safepath._have_openat2 = have
                fd = safepath.open_beneath(root, "a/b/f", os.O_RDONLY)
                assert os.read(fd, 1) == b"x"
                os.close(fd)
                for bad in ("link/b/f", "../x", "/etc/passwd", "link"):
                    with pytest.raises(OSError) as refused:
                        safepath.open_beneath(root, bad, os.O_RDONLY)
                    assert refused.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)
    finally:
        safepath._have_openat2 = True


def test_shadow_permission_rule(tmp_path: Path, place: Path, user: tuple[int, int]) -> None:
    shadow = place / "shadow"
    shadow.mkdir(mode=0o755)
    assert shadow_permission_problem(shadow) is None
    shadow.chmod(0o775)
    assert "group/other-writable" in (shadow_permission_problem(shadow) or "")
    shadow.chmod(0o755)
    os.chown(shadow, *user)
    assert "owned by uid" in (shadow_permission_problem(shadow) or "")
    os.chown(shadow, 0, 0)
    open_parent = place / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    (open_parent / "shadow").mkdir(mode=0o755)
    assert "without the sticky bit" in (shadow_permission_problem(open_parent / "shadow") or "")
    refused = run_agent("--shadow", open_parent / "shadow", make_image(place / "img"))
    assert refused.returncode == 2 and "without the sticky bit" in refused.stderr
    # An agent that cannot set trusted.* xattrs (not root here) refuses to start, in one line.
    mine = place / "users_shadow"
    mine.mkdir(mode=0o755)
    os.chown(mine, *user)
    identity = place / "users_system_uuid"  # one the user can read: the agent reads its identity first
    identity.write_text("0a1d1bd2-7d5c-4a55-9a3c-6c7ae2a14c7e\n")
    identity.chmod(0o644)
    as_nobody = as_user(sys.executable, "-m", "agent.cli", "--system-uuid-file", identity, "--shadow", mine, place / "img")
    assert as_nobody.returncode == 2, as_nobody.stderr
    assert "cannot set the trusted.famfs.dir xattr" in as_nobody.stderr


def test_owner_map_ordering_and_verification_cost(tmp_path: Path, system_uuid_file: Path, place: Path) -> None:
    """The owner map names each live file's entry, held for a deleted file's units; the check
    of one YAML costs microseconds (printed, never asserted)."""
    image, shadow = served(tmp_path, system_uuid_file, place)
    with following(image, shadow):
        wait_for(lambda: (shadow / "root" / "shared" / "secret").exists(), "the first play")
    with Device(str(image)) as device:
        famfs_log = FamfsLog(device)
        sb = famfs_log.superblock
        fd = os.open(shadow / AGENT_DIR / OWNERS_FILE, os.O_RDONLY)
        owners = OwnerMap.load(fd, sb.dev_size // sb.alloc_unit, sb.alloc_unit)
        os.close(fd)
        secret = _live(image, "shared/secret")
        gone = _live(image, "tmpdir/gone")
        start, _ = owners.span(gone.extents[0])
        assert owners.table[start] == HELD
        check = ShadowCheck(famfs_log, shadow / AGENT_DIR / OWNERS_FILE)
        assert check.file_problem(secret) is None
        rounds = 2000
        began = time.perf_counter()
        for _ in range(rounds):
            check.file_problem(secret)
        print(f"verify_file: {(time.perf_counter() - began) / rounds * 1e6:.1f} us per shadow file")
        assert isinstance(check.dir_problem("tmpdir", os.getxattr(shadow / "root" / "tmpdir", DIR_XATTR)), DirRecord)
        check.close()


def test_a_shadow_root_replaced_by_a_symlink_is_never_followed(
        tmp_path: Path, system_uuid_file: Path, place: Path) -> None:
    image, shadow = served(tmp_path, system_uuid_file, place)
    run_agent("--shadow", shadow, "--no-progress", image, check=True)
    outside = place / "rootonly"
    outside.mkdir(mode=0o700)
    shutil.rmtree(shadow / "root")
    os.symlink(outside, shadow / "root")
    again = run_agent("--shadow", shadow, "--no-progress", image)
    assert again.returncode == 0, again.stderr
    assert list(outside.iterdir()) == []
    assert not (shadow / "root").is_symlink() and (shadow / "root" / "shared").is_dir()
    assert dir_attrs(shadow / "root" / "tmpdir") == (0o1777, 0, 0)


def test_a_carried_owner_map_names_only_files_both_logs_hold_live_and_unshared() -> None:
    """OwnerMap.carried (docs/reclaim.md, "What the mount serves while a host moves"): a FILE of
    the new log is named (by its latest SETATTR, if any) only if the old map gave all its units to
    one live entry, nothing in the new log deletes, reclaims or shares them, and it is on the
    primary device; every other unit the old map or the new log takes is held, and a unit is
    free only where both leave it free."""
    unit, reserved = 1 << 21, 2

    def mapping(relpath: str, first: int, units: int = 1, devindex: int = 0) -> fmt.FileEntry:
        return fmt.FileEntry(relpath, 4096, 0o644, 0, 0, (fmt.Extent(first * unit, units * unit, devindex),))

    old = OwnerMap(16, unit, reserved, 1)
    for first, units, index in ((2, 2, 10), (4, 1, 11), (5, 1, 12), (6, 1, 13), (7, 1, 14), (8, 2, 15)):
        old.table[first:first + units] = array("I", [index + 1]) * units
    old.table[9] = 99  # 8 and 9 no longer one owner's
    old.table[11] = HELD  # a deleted file's, this host played its DELETE
    new_log: list[tuple[int, fmt.Entry]] = [
        (0, mapping("kept", 2, 2)), (1, mapping("chmod", 4)), (2, mapping("deleted", 5)),
        (3, mapping("shared", 6)), (4, mapping("other", 6)), (5, mapping("split", 8, 2)),
        (6, fmt.HoldEntry(mapping("held", 11))), (7, mapping("new", 12)), (8, mapping("reclaimed", 7)),
        (9, mapping("added", 13, devindex=1)),
        (10, fmt.SetattrEntry("chmod", 1, 0o600, 0, 0)), (11, fmt.DeleteEntry("deleted", 2)),
        (12, fmt.ReclaimEntry(((8, 8),))),
    ]
    carried = old.carried(new_log, reserved, 2).table
    assert list(carried[2:4]) == [1, 1]  # kept: entry 0
    assert carried[4] == 11  # chmod: its SETATTR, entry 10
    assert list(carried[5:10]) == [HELD] * 5  # deleted, shared, reclaimed, split: none named
    assert carried[10] == 0  # free in both
    assert list(carried[11:13]) == [HELD] * 2  # held (a HOLD), new (free before, taken now)
    assert list(carried[13:16]) == [0, 0, 0]  # an added device's extent is not this map's
    assert list(carried[:reserved]) == [HELD] * reserved


def test_the_shadow_check_reads_the_log_where_a_compaction_has_moved_it(
        tmp_path: Path, system_uuid_file: Path, place: Path) -> None:
    """From a compaction's commit until its copy is done the log is read from its staging copy,
    and its header where it was is zeroed: a check that read it there refused every file ("past
    the log's end": make churn's refusals at a compaction, issue 19 follow-up). A file and a
    directory logged before the deleted one keep their entries through the compaction: at every
    step they pass the check; a planted file is refused at every step."""
    from famfs.master import writer  # noqa: PLC0415 - the master's side, for its compaction steps
    from famfs.master.compact import STEPS  # noqa: PLC0415

    image, shadow = served(tmp_path, system_uuid_file, place)
    played = run_agent("--shadow", shadow, image)
    assert played.returncode == 0, played.stderr
    secret = _live(image, "shared/secret")
    shared = os.getxattr(shadow / "root" / "shared", DIR_XATTR)
    planted = secret._replace(relpath="shared/planted")
    with Device(str(image)) as device:
        check = ShadowCheck(FamfsLog(device), shadow / AGENT_DIR / OWNERS_FILE)
        seen: dict[str, tuple[str | None, bool, str | None]] = {}

        def at(step: str) -> None:
            seen[step] = (check.file_problem(secret), isinstance(check.dir_problem("shared", shared), DirRecord),
                          check.file_problem(planted))

        with writer.session(str(image), system_uuid_file) as current:
            assert current.namespace.deleted_paths == {"tmpdir/gone"}  # logged after the file and directory
            current.compact(at)
        check.close()
    assert list(seen) == list(STEPS)
    for step, (file_problem, dir_served, planted_problem) in seen.items():
        assert (file_problem, dir_served) == (None, True), step
        assert planted_problem is not None and "shared/secret" in planted_problem, step
