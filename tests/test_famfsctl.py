"""famfsctl end to end: the real CLI as a subprocess on sparse image files made by its own mkfs."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from famfs import env
from famfs import format as fmt
from famfs.master import prng
from tests.agent_util import following
from tests.famfsctl_util import (
    digest,
    entries,
    famfsctl,
    file_bytes,
    file_entries,
    make_image,
)
from tests.fuse_util import Mount, play, wait_for

MIB = 1 << 20
# Each famfsctl run is bounded (tests.famfsctl_util), the mount's start and stop too
# (demo.harness.Mount); this bounds a whole test, whatever else it waits for.
pytestmark = pytest.mark.timeout(300)


def test_mkfs_makes_a_sparse_image_and_refuses_to_overwrite_without_force(tmp_path: Path, system_uuid_file: Path) -> None:
    image = tmp_path / "dev.img"
    dev_uuid = uuid.uuid4()
    done = famfsctl("mkfs", "--size", "1g", "--loglen", "16m", "--dev-uuid", dev_uuid, image)
    assert "30840 log slots" in done.stdout
    assert image.stat().st_size == 1 << 30 and image.stat().st_blocks * 512 < 64 * MIB
    status = famfsctl("status", image).stdout
    assert f"device uuid: {dev_uuid}" in status and "this host: master" in status
    assert "0 of 30840 slots used, 30840 free" in status

    before = digest(image)
    again = famfsctl("mkfs", image, check=False)
    assert again.returncode != 0 and "already holds a famfs file system; use --force" in again.stderr
    assert digest(image) == before

    famfsctl("mkfs", "--force", image)
    assert "0 of 15420 slots used" in famfsctl("status", image).stdout
    famfsctl("mkfs", "--force", "--kill", image)
    killed = famfsctl("status", image, check=False)
    assert killed.returncode == 1 and "not a usable famfs: " in killed.stdout and "bad magic" in killed.stdout


def test_mkfs_rejects_a_bad_log_length_and_kill_without_force(tmp_path: Path, system_uuid_file: Path) -> None:
    image = tmp_path / "dev.img"
    bad = famfsctl("mkfs", "--size", "1g", "--loglen", "12m", image, check=False)
    assert bad.returncode == 1 and "is not a power of two" in bad.stderr
    usage = famfsctl("mkfs", "--kill", image, check=False)
    assert usage.returncode == 2 and "--kill" in usage.stderr


def test_mkdir_creat_verify(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    famfsctl("mkdir", "--device", image, "top")
    famfsctl("mkdir", "-p", "-m", "0700", "-u", "12", "-g", "34", "--device", image, "top/a/b")
    famfsctl("mkdir", "-p", "--device", image, "top/a")  # exists: fine with -p
    again = famfsctl("mkdir", "--device", image, "top/a", check=False)
    assert again.returncode == 1 and "top/a: a directory of that name exists" in again.stderr
    logged = famfsctl("creat", "-v", "-s", "3m", "-m", "0640", "--randomize", "--seed", "99", "--device", image, "top/a/b/f")
    assert "event='creat'" in logged.stderr and "path='top/a/b/f'" in logged.stderr and "index=3" in logged.stderr
    assert famfsctl("verify", "-S", "99", "--device", image, "top/a/b/f").stdout == \
        f"{image}: top/a/b/f: 3 MiB (3145728 bytes) match seed 99\n"
    wrong = famfsctl("verify", "-S", "98", "--device", image, "top/a/b/f", check=False)
    assert wrong.returncode == 1 and "mismatch at offset 0" in wrong.stderr
    assert entries(image) == [
        fmt.MkdirEntry("top", 0o755, os.geteuid(), os.getegid()),
        fmt.MkdirEntry("top/a", 0o700, 12, 34),
        fmt.MkdirEntry("top/a/b", 0o700, 12, 34),
        fmt.FileEntry("top/a/b/f", 3 * MIB, 0o640, os.geteuid(), os.getegid(),
                      extents=(fmt.Extent(offset=10 * MIB, length=4 * MIB),)),
    ]
    assert file_bytes(image, "top/a/b/f") == prng.pattern(99, 3 * MIB)


def test_creat_of_an_existing_file_reuses_it_only_at_the_same_size(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    famfsctl("creat", "-s", "1m", "--device", image, "f")
    famfsctl("creat", "-s", "1m", "-r", "-S", "5", "--device", image, "f")  # refills in place
    assert len(entries(image)) == 1 and file_bytes(image, "f") == prng.pattern(5, MIB)
    other = famfsctl("creat", "-s", "2m", "--device", image, "f", check=False)
    assert other.returncode == 1 and "f: exists with size 1048576, not 2097152" in other.stderr
    usage = famfsctl("creat", "-s", "1m", "-S", "5", "--device", image, "g", check=False)
    assert usage.returncode == 2 and "--seed needs --randomize" in usage.stderr


def test_cp_copies_trees_bytes_modes_and_empty_files_and_is_restartable(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    source = tmp_path / "tree"
    (source / "deep" / "er").mkdir(parents=True)
    blobs = {"a.bin": os.urandom(5 * MIB + 3), "deep/b.txt": b"hello famfs\n", "deep/er/empty": b""}
    for name, content in blobs.items():
        (source / name).write_bytes(content)
    (source / "a.bin").chmod(0o600)
    os.symlink("a.bin", source / "link")  # no famfs form: skipped, not fatal
    famfsctl("cp", "-r", "--device", image, source, "/")
    for name, content in blobs.items():
        assert file_bytes(image, f"tree/{name}") == content
    logged = entries(image)
    files = {entry.relpath: entry for entry in logged if isinstance(entry, fmt.FileEntry)}
    assert set(files) == {f"tree/{name}" for name in blobs}
    assert files["tree/a.bin"].mode == 0o600 and files["tree/deep/er/empty"].size == 0
    assert {entry.relpath for entry in logged if isinstance(entry, fmt.MkdirEntry)} == {"tree", "tree/deep", "tree/deep/er"}

    famfsctl("cp", "-r", "--device", image, source, ".")  # restart: everything exists, same sizes
    assert entries(image) == logged

    famfsctl("cp", "-m", "0444", "--device", image, source / "a.bin", source / "deep" / "b.txt", "tree/deep/er")
    famfsctl("cp", "--device", image, source / "deep" / "b.txt", "renamed.txt")
    assert file_bytes(image, "tree/deep/er/a.bin") == blobs["a.bin"]
    assert file_bytes(image, "renamed.txt") == blobs["deep/b.txt"]
    assert [e.mode for e in file_entries(image)[len(files):]] == [0o444, 0o444, 0o644]


def test_cp_refusals(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"x")
    famfsctl("creat", "-s", "1", "--device", image, "existing")
    before = digest(image)
    for args, complaint in [
        (["--device", image, tmp_path / "d", "/"], "is a directory (use -r)"),
        (["--device", image, tmp_path / "f", tmp_path / "f", "existing"], "existing: target is not a directory"),
        (["--device", image, tmp_path / "missing", "/"], "No such file or directory"),
    ]:
        done = famfsctl("cp", *args, check=False)
        assert done.returncode == 1 and complaint in done.stderr, done.stderr
    assert digest(image) == before


def test_interleaved_creat_and_cp_round_trip(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img", "4g")
    content = os.urandom(37 * MIB + 11)
    (tmp_path / "src").write_bytes(content)
    famfsctl("cp", "-N", "3", "-B", "4", "-C", "4m", "--device", image, tmp_path / "src", "striped")
    famfsctl("creat", "-s", "9m", "-N", "4", "-B", "4", "-r", "-S", "3", "--device", image, "filled")
    striped, filled = file_entries(image)
    assert striped.stripes[0].nstrips == 3 and striped.stripes[0].chunk_size == 4 * MIB
    assert filled.stripes[0].nstrips == 4 and filled.stripes[0].chunk_size == 2 * MIB
    assert file_bytes(image, "striped") == content
    assert famfsctl("verify", "-S", "3", "--device", image, "filled").returncode == 0
    bad = famfsctl("creat", "-s", "20m", "-N", "5", "-B", "4", "--device", image, "nope", check=False)
    assert bad.returncode == 1 and "nstrips 5 must be 1..4" in bad.stderr


def test_rm_logs_a_delete_and_keeps_the_space(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    famfsctl("mkdir", "--device", image, "d")
    famfsctl("creat", "-s", "2m", "--device", image, "d/f")
    famfsctl("rm", "--device", image, "d/f")
    famfsctl("creat", "-s", "2m", "--device", image, "d/f")
    first, second = file_entries(image)
    assert entries(image)[2] == fmt.DeleteEntry(relpath="d/f", target_index=1)
    assert first.extents[0].offset != second.extents[0].offset  # freed space is not reused
    for args, complaint in [(["d"], "d: is a directory"), (["nothing"], "nothing: no such file")]:
        done = famfsctl("rm", "--device", image, *args, check=False)
        assert done.returncode == 1 and complaint in done.stderr
    report = famfsctl("fsck", image).stdout
    assert "1 files, 1 directories, 1 deleted files" in report
    assert re.search(r"\(of which 2097152 held by deleted files\)", report)


def test_identity_comes_from_flag_then_env_then_config(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")  # the env identity is the master
    other = tmp_path / "other" / "system_uuid"
    via_flag = famfsctl("mkdir", "--system-uuid-file", other, "--device", image, "x", check=False)
    assert via_flag.returncode == 1 and "this host is a client of file system" in via_flag.stderr
    config = tmp_path / "famfs-agent.toml"
    config.write_text(f'[host]\nsystem_uuid_file = "{system_uuid_file}"\n')
    no_env = {k: v for k, v in os.environ.items() if k != env.SYSTEM_UUID_FILE}
    famfsctl("mkdir", "--config", config, "--device", image, "y", env=no_env)
    assert "this host: master" in famfsctl("status", "--config", config, image, env=no_env).stdout
    assert "this host: client" in famfsctl("status", "--system-uuid-file", other, image).stdout


def test_a_path_inside_a_mount_names_device_and_relpath(tmp_path: Path, system_uuid_file: Path) -> None:
    """The lookup contract with famfs-fuse-mount and famfs-agent: the mount root answers
    getxattr(user.famfs.shadow) with the shadow dir, whose .agent/state.json names the device."""
    image = make_image(tmp_path / "dev.img")
    famfsctl("mkdir", "--device", image, "sub")
    shadow, mountpoint = tmp_path / "shadow", tmp_path / "mnt"
    play(image, shadow)  # the agent writes state.json
    (tmp_path / "local.txt").write_bytes(b"from a mount path\n")
    with Mount(shadow, image, mountpoint):
        famfsctl("mkdir", mountpoint / "d")
        famfsctl("creat", "-s", "1m", "-r", "-S", "8", mountpoint / "d" / "f")
        famfsctl("cp", tmp_path / "local.txt", mountpoint / "sub" / "..")  # DEST is the mount root
        famfsctl("cp", tmp_path / "local.txt", mountpoint / "sub")  # into a directory below the root
        play(image, shadow)  # verify reads the file through the mount: the tree must show it
        through_mount = mountpoint / "sub" / ".." / "d" / "f"
        # The mount takes the played tree in from inotify a moment later (and drops the kernel's
        # cached "no such name" then): wait for it, bounded, as a user's next command would.
        wait_for(through_mount.exists, "the mount shows the played file")
        assert famfsctl("verify", "-S", "8", through_mount).stdout == f"{through_mount}: 1 MiB (1048576 bytes) match seed 8\n"
        assert f"device: {image}" in famfsctl("status", mountpoint / "sub").stdout
        assert famfsctl("fsck", mountpoint).stdout.endswith("fsck: clean\n")
    outside = famfsctl("mkdir", tmp_path / "elsewhere", check=False)
    assert outside.returncode == 2 and "not inside a mounted famfs" in outside.stderr
    assert [(type(e).__name__, getattr(e, "relpath", None)) for e in entries(image)] == [
        ("MkdirEntry", "sub"), ("MkdirEntry", "d"), ("FileEntry", "d/f"), ("FileEntry", "local.txt"),
        ("FileEntry", "sub/local.txt")]
    assert file_bytes(image, "sub/local.txt") == b"from a mount path\n"


def test_through_a_mount_famfsctl_returns_once_that_mount_shows_the_change(tmp_path: Path) -> None:
    """With this host's agent following, each logging command given a mount path waits (bounded:
    famfsctl.MOUNT_WAIT_S) for the mount to show what it logged: the next command sees it."""
    image = make_image(tmp_path / "dev.img")
    shadow, mnt = tmp_path / "shadow", tmp_path / "mnt"
    (tmp_path / "local.txt").write_bytes(b"copied\n")
    with following(image, shadow), Mount(shadow, image, mnt):
        assert not (mnt / "d").exists()  # the kernel may keep this "no such name" a while
        famfsctl("mkdir", mnt / "d")
        assert (mnt / "d").is_dir()
        famfsctl("creat", "-s", "1m", "-r", "-S", "8", mnt / "d" / "f")
        assert famfsctl("verify", "-S", "8", mnt / "d" / "f").returncode == 0
        famfsctl("cp", tmp_path / "local.txt", mnt / "d")
        assert (mnt / "d" / "local.txt").read_bytes() == b"copied\n"
        famfsctl("rm", mnt / "d" / "f", mnt / "d" / "local.txt")
        assert os.listdir(mnt / "d") == []
