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

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_util import following
from tests.famfsctl_util import famfsctl, make_image
from tests.fuse_util import WAIT_S, Mount, bounded, wait_for

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
