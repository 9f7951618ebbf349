"""Bad shadow files get EIO and one log line naming the shadow path; everything else keeps
working and the daemon stays up. Bad arguments and unsafe shadow dirs are refused clearly."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs.shadowyaml import emit_file_yaml
from tests.famfsctl_util import make_image
from tests.fuse_util import (
    MOUNT_CLI,
    Mount,
    empty_shadow,
    put_file,
    put_yaml,
    stat_gives_eio,
    wait_for,
)

MiB = 1 << 20
UNIT = 2 * MiB
DATA_START = fmt.data_start(fmt.DEFAULT_LOG_LEN)
DEVICE_SIZE = 8 << 30


def entry(relpath: str, *, size: int = 1000, extents: int = 1, offset: int = DATA_START) -> fmt.FileEntry:
    return fmt.FileEntry(relpath=relpath, size=size, mode=0o644, uid=0, gid=0,
                         extents=tuple(fmt.Extent(offset=offset + 2 * n * UNIT, length=UNIT) for n in range(extents)))


def bad_yaml_table() -> dict[str, bytes]:
    good = emit_file_yaml(entry("truncated"))
    return {
        "malformed": b"---\nfile: [unclosed\n  path: malformed\n",
        "truncated": good[: len(good) // 2],
        "unknown_key": emit_file_yaml(entry("unknown_key")).replace(b"file:\n", b"file:\n  colour: blue\n"),
        "seventeen_extents": emit_file_yaml(entry("seventeen_extents", extents=17)),
        "past_device_end": emit_file_yaml(entry("past_device_end", offset=DEVICE_SIZE)),
        "size_beyond_extents": emit_file_yaml(entry("size_beyond_extents", size=UNIT + 1)),
        "wrong_path_key": emit_file_yaml(entry("somewhere_else")),
        "empty": b"",
    }


@pytest.fixture
def device(tmp_path: Path, system_uuid_file: Path) -> Path:
    return make_image(tmp_path / "dev.img", "8g")


def test_bad_shadow_files_get_eio_and_one_log_line(tmp_path: Path, device: Path) -> None:
    shadow = empty_shadow(tmp_path / "shadow", device)
    table = bad_yaml_table()
    for name, text in table.items():
        put_yaml(shadow, name, text)
    put_file(shadow, entry("good", size=12345))
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        root = mount.mountpoint
        put_yaml(shadow, "late_bad", b"file: {path: late_bad}\n")  # one more, while mounted
        wait_for(lambda: "late_bad" in os.listdir(shadow / "root") and stat_gives_eio(root / "late_bad"), "the late bad file")
        for name in [*table, "late_bad"]:
            for _ in range(3):
                assert stat_gives_eio(root / name), name
            with pytest.raises(OSError) as opened:
                open(root / name, "rb")
            assert opened.value.errno == errno.EIO, name
        assert (root / "good").stat().st_size == 12345
        assert len((root / "good").read_bytes()) == 12345
        assert sorted(os.listdir(root)) == ["good"]  # refused files are left out of listings
        # Fixing a bad file (a good YAML renamed over it) makes it work.
        put_file(shadow, entry("truncated", size=77, offset=DATA_START + 2 * UNIT))  # not good's memory
        wait_for(lambda: not stat_gives_eio(root / "truncated"), "the repaired file")
        assert (root / "truncated").stat().st_size == 77
        assert mount.process is not None and mount.process.poll() is None
    log = mount.log()
    for name in [*table, "late_bad"]:
        lines = [line for line in log.splitlines() if f"shadow_path='{shadow}/root/{name}'" in line]
        assert len(lines) == 1, (name, lines)
        assert "bad shadow file" in lines[0]
    assert "Traceback" not in log



def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MOUNT_CLI, "--foreground", *args], capture_output=True, text=True, timeout=30)


def test_unsafe_shadow_dirs_and_bad_mount_points_are_refused(tmp_path: Path, device: Path) -> None:
    shadow = empty_shadow(tmp_path / "shadow", device)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    common = ["--shadow", str(shadow), "--device", str(device)]

    done = run_cli(*common, str(tmp_path / "missing"))
    assert done.returncode == 1 and "does not exist" in done.stderr
    (tmp_path / "plain").write_text("")
    done = run_cli(*common, str(tmp_path / "plain"))
    assert done.returncode == 1 and "not a directory" in done.stderr
    done = run_cli(*common, "-o", "cache=sometimes", str(mountpoint))
    assert done.returncode == 1 and done.stderr == \
        "famfs-fuse-mount: -o cache=sometimes: cache must be one of direct, auto, always, not 'sometimes'\n"
    done = run_cli(*common, "-o", "timeout=-1", str(mountpoint))
    assert done.returncode == 1 and "-o timeout=-1: timeout must be between 0 and 31_536_000" in done.stderr
    done = run_cli(*common, "-o", "sync", str(mountpoint))
    assert done.returncode == 1 and "-o sync: unknown option; known: ro, rw, allow_other, cache=" in done.stderr
    done = run_cli("--shadow", str(shadow), "--device", str(tmp_path / "nodev"), str(mountpoint))
    assert done.returncode == 1 and "nodev" in done.stderr
    done = run_cli("--shadow", str(shadow), str(mountpoint))  # no device anywhere
    assert done.returncode == 1 and "state.json" in done.stderr

    (shadow / "root").chmod(0o777)
    done = run_cli(*common, str(mountpoint))
    assert done.returncode == 1 and "mode 0777 is group/other-writable" in done.stderr
    (shadow / "root").chmod(0o755)
    os.chown(shadow, 1000, 1000)
    done = run_cli(*common, str(mountpoint))
    assert done.returncode == 1 and "owned by uid 1000, not by this process's uid 0" in done.stderr
    os.chown(shadow, 0, 0)

    with Mount(shadow, device, mountpoint):
        done = run_cli(*common, str(mountpoint))
        assert done.returncode == 1 and "already a mount point" in done.stderr
    assert not os.path.ismount(mountpoint)
