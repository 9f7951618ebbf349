"""famfs-fuse-mount data path through real mounts: randomized files, striped and multi-extent
files built by hand, writes that land in the image, mmap, fixed sizes, refused namespace calls."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import subprocess
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import prng
from tests.famfsctl_util import famfsctl, make_image
from tests.fuse_util import (
    WAIT_S,
    Mount,
    client_env,
    client_uuid_file,
    empty_shadow,
    play,
    put_file,
    read_device,
    write_device,
)

MiB = 1 << 20
CHUNK = 2 * MiB


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    return make_image(tmp_path / "dev.img", "8g")


def test_randomized_files_read_back_through_the_mount(tmp_path: Path, device: Path) -> None:
    famfsctl("mkdir", "--device", device, "dir")
    famfsctl("creat", "--device", device, "-s", "3000001", "-r", "-S", "11", "-m", "0640", "-u", "1000", "-g", "2000",
             "dir/plain")
    famfsctl("creat", "--device", device, "-s", str(9 * MiB + 7), "-r", "-S", "12", "-N", "2", "-B", "4", "striped")
    shadow = tmp_path / "shadow"
    play(device, shadow)
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        plain = mount.mountpoint / "dir" / "plain"
        st = plain.stat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert (st.st_uid, st.st_gid, st.st_size) == (1000, 2000, 3000001)
        assert st.st_blocks * 512 == 2 * CHUNK  # the allocation: two 2 MiB units
        assert prng.first_mismatch(11, [plain.read_bytes()]) is None
        striped = (mount.mountpoint / "striped").read_bytes()
        assert len(striped) == 9 * MiB + 7
        assert prng.first_mismatch(12, [striped]) is None
        with open(plain, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            assert prng.first_mismatch(11, [mapped[:]]) is None
        # The metadata files are the device's real bytes.
        assert (mount.mountpoint / ".meta" / ".superblock").read_bytes() == read_device(device, 0, fmt.SUPERBLOCK_SIZE)
        log_len = FamfsLog(Device(device)).superblock.log_len
        assert (mount.mountpoint / ".meta" / ".log").read_bytes() == read_device(device, fmt.LOG_OFFSET, log_len)


def striped_by_hand(data_start: int) -> tuple[fmt.FileEntry, int]:
    strips = tuple(fmt.Extent(offset=data_start + CHUNK * (1 + 8 * n), length=4 * CHUNK) for n in range(3))
    size = 3 * 4 * CHUNK - 12345
    entry = fmt.FileEntry(relpath="by_hand", size=size, mode=0o644, uid=0, gid=0,
                          stripes=(fmt.Stripe(chunk_size=CHUNK, strips=strips),))
    return entry, size


def test_hand_built_striped_and_multi_extent_files(tmp_path: Path, device: Path) -> None:
    data_start = fmt.data_start(fmt.DEFAULT_LOG_LEN)
    entry, size = striped_by_hand(data_start)
    content = os.urandom(size)
    # Chunk c of the file lives in strip c % nstrips, at chunk c // nstrips of that strip.
    for chunk in range(-(-size // CHUNK)):
        strip = entry.stripes[0].strips[chunk % 3]
        write_device(device, strip.offset + (chunk // 3) * CHUNK, content[chunk * CHUNK:(chunk + 1) * CHUNK])
    pieces = (fmt.Extent(offset=data_start + 40 * CHUNK, length=CHUNK),
              fmt.Extent(offset=data_start + 30 * CHUNK, length=2 * CHUNK))
    multi = fmt.FileEntry(relpath="multi", size=3 * CHUNK - 1, mode=0o644, uid=0, gid=0, extents=pieces)
    multi_content = os.urandom(multi.size)
    write_device(device, pieces[0].offset, multi_content[:CHUNK])
    write_device(device, pieces[1].offset, multi_content[CHUNK:])
    shadow = empty_shadow(tmp_path / "shadow", device)
    put_file(shadow, entry)
    put_file(shadow, multi)
    with Mount(shadow, device, tmp_path / "mnt", "cache=direct") as mount:
        assert (mount.mountpoint / "by_hand").read_bytes() == content
        assert (mount.mountpoint / "multi").read_bytes() == multi_content
        with open(mount.mountpoint / "by_hand", "rb") as handle:
            # Reads that straddle chunk and strip boundaries, and one past the end.
            for offset in (CHUNK - 5, 3 * CHUNK - 1, 5 * CHUNK + 17, size - 3):
                assert os.pread(handle.fileno(), 4096, offset) == content[offset:offset + 4096]
            assert os.pread(handle.fileno(), 4096, size) == b""


def test_writes_reach_the_image_and_never_grow_the_file(tmp_path: Path, device: Path) -> None:
    famfsctl("creat", "--device", device, "-s", str(3 * MiB), "target")
    shadow = tmp_path / "shadow"
    play(device, shadow)
    with Device(device) as dev:
        (file_entry,) = [entry for _, entry in FamfsLog(dev).entries() if isinstance(entry, fmt.FileEntry)]
    (extent,) = file_entry.extents
    for cache in ("auto", "direct"):
        payload = os.urandom(100_000)
        with Mount(shadow, device, tmp_path / f"mnt-{cache}", f"cache={cache}") as mount:
            path = mount.mountpoint / "target"
            with open(path, "r+b", buffering=0) as handle:
                assert os.pwrite(handle.fileno(), payload, 2 * MiB - 50_000) == len(payload)
                with pytest.raises(OSError) as too_far:
                    os.pwrite(handle.fileno(), b"x", 3 * MiB)
                assert too_far.value.errno == errno.EFBIG
                # A write that straddles the end stores what fits and reports it.
                assert os.pwrite(handle.fileno(), b"abcdef", 3 * MiB - 2) == 2
            assert path.stat().st_size == 3 * MiB
        assert read_device(device, extent.offset + 2 * MiB - 50_000, len(payload)) == payload
        assert read_device(device, extent.offset + 3 * MiB - 2, 2) == b"ab"


def test_namespace_changes_are_refused_quietly(tmp_path: Path, device: Path) -> None:
    """On a client (the master's mount makes these changes: tests/test_master_mount.py)."""
    famfsctl("mkdir", "--device", device, "dir")
    famfsctl("creat", "--device", device, "-s", "4096", "file")
    shadow = tmp_path / "shadow"
    play(device, shadow, "--system-uuid-file", client_uuid_file(tmp_path))
    with Mount(shadow, device, tmp_path / "mnt", env=client_env(tmp_path)) as mount:
        root = mount.mountpoint
        attempts = {
            "create": lambda: open(root / "new", "w"),
            "mkdir": lambda: os.mkdir(root / "newdir"),
            "unlink": lambda: os.unlink(root / "file"),
            "rmdir": lambda: os.rmdir(root / "dir"),
            "rename": lambda: os.rename(root / "file", root / "moved"),
            "link": lambda: os.link(root / "file", root / "hard"),
            "symlink": lambda: os.symlink("file", root / "soft"),
            "mknod": lambda: os.mkfifo(root / "fifo"),
            "chmod": lambda: os.chmod(root / "file", 0o600),
            "chown": lambda: os.chown(root / "file", 1, 1),
            "truncate": lambda: os.truncate(root / "file", 0),
            "open O_TRUNC": lambda: open(root / "file", "w"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EPERM, what
        # fallocate(2) itself (glibc's posix_fallocate would fall back to writes).
        fallocate = subprocess.run(["fallocate", "-l", "8192", str(root / "file")], capture_output=True, text=True,
                                   timeout=WAIT_S)
        assert fallocate.returncode != 0 and "not supported" in fallocate.stderr
        assert (root / "file").stat().st_size == 4096
        assert sorted(os.listdir(root)) == [".meta", "dir", "file"]
    assert "error" not in mount.log() and "Traceback" not in mount.log()


def test_only_user_xattrs_are_served(tmp_path: Path, device: Path) -> None:
    """Other namespaces are EOPNOTSUPP: ls -l then stops asking for an SELinux label and an ACL
    on every file (each a FUSE request)."""
    famfsctl("creat", "--device", device, "-s", "4096", "-m", "0640", "file")
    shadow = tmp_path / "shadow"
    play(device, shadow)
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        root = mount.mountpoint
        for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
            with pytest.raises(OSError) as unsupported:
                os.getxattr(root / "file", name, follow_symlinks=False)
            assert unsupported.value.errno == errno.EOPNOTSUPP, name
        with pytest.raises(OSError) as absent:
            os.getxattr(root / "file", "user.famfs.other")
        assert absent.value.errno == errno.ENODATA
        assert os.getxattr(root, "user.famfs.shadow") == os.fsencode(shadow)
        listing = subprocess.run(["ls", "-l", str(root)], capture_output=True, text=True, check=True, timeout=WAIT_S)
        assert listing.stderr == ""
        assert "-rw-r----- 1 root root 4096" in listing.stdout
    assert "error" not in mount.log() and "Traceback" not in mount.log()


def test_read_only_mount_refuses_writes(tmp_path: Path, device: Path) -> None:
    famfsctl("creat", "--device", device, "-s", "4096", "-r", "-S", "3", "file")
    shadow = tmp_path / "shadow"
    play(device, shadow)
    with Mount(shadow, device, tmp_path / "mnt", "ro") as mount:
        with pytest.raises(OSError) as refused:
            open(mount.mountpoint / "file", "r+b")
        assert refused.value.errno == errno.EROFS
        assert prng.first_mismatch(3, [(mount.mountpoint / "file").read_bytes()]) is None
