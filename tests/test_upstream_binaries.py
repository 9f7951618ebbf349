"""Upstream's own `famfs` CLI against ours (issue 24; docs/fusefs.md, "Upstream's binaries"): its
writes through our mount (famfs-agent + famfs-fuse-mount -o ro_namespace in place of famfs_fused)
read back by our agent and fsck, and its readers (logplay, fsck) on logs we wrote, with every
entry type of ours, compacted or not, with a host table.

Runs only where upstream's CLI is built: $FAMFS_UPSTREAM_BIN names the directory holding its
`famfs` binary. Skipped otherwise, with that reason. tests/test_upstream_cli.py does each step of
upstream's CLI by hand and runs everywhere; this module is the same contract tried with the real
program.

Upstream's CLI reads the host identity from /opt/famfs/system_uuid, whatever the environment
says (famfs_lib.c: SYS_UUID_DIR): these tests use that file, and make it (and remove it after)
only when the host has none.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from famfs import Master, env
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import writer
from tests.agent_util import following
from tests.famfsctl_util import famfsctl, file_bytes, make_image
from tests.fuse_util import WAIT_S, Mount, wait_for
from tests.test_compaction import churned_image, upstream_logplay
from tests.test_upstream_cli import agent_caught_up

MiB = 1 << 20
UPSTREAM_TIMEOUT_S = 120  # one command of upstream's CLI on a few MiB: a stuck one fails, never hangs
UPSTREAM_UUID_FILE = Path("/opt/famfs/system_uuid")  # hard-coded in upstream's CLI
UPSTREAM_DIR = os.environ.get(env.UPSTREAM_BIN, "")
FAMFS_CLI = Path(UPSTREAM_DIR) / "famfs"


def _why_skipped() -> str | None:
    if not UPSTREAM_DIR:
        return (f"upstream's famfs CLI is not built on this host: set {env.UPSTREAM_BIN} to the directory "
                "holding its `famfs` binary (docs/fusefs.md, \"Upstream's binaries\")")
    if not os.access(FAMFS_CLI, os.X_OK):
        return f"{env.UPSTREAM_BIN}={UPSTREAM_DIR}: {FAMFS_CLI} is not an executable file"
    if os.geteuid() != 0:
        return "upstream's CLI logs and writes the shadow tree as root only"
    return None


pytestmark = pytest.mark.skipif(_why_skipped() is not None, reason=_why_skipped() or "")


@pytest.fixture
def upstream_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The identity file upstream's CLI reads, shared with our programs (so our mkfs makes this
    host the master upstream's CLI sees); made for the test only if the host has none."""
    made_dir = not UPSTREAM_UUID_FILE.parent.exists()
    made_file = not UPSTREAM_UUID_FILE.exists()
    if made_file:
        UPSTREAM_UUID_FILE.parent.mkdir(parents=True, exist_ok=True)
        UPSTREAM_UUID_FILE.write_text(f"{uuid.uuid4()}\n")
    monkeypatch.setenv(env.SYSTEM_UUID_FILE, str(UPSTREAM_UUID_FILE))
    try:
        yield UPSTREAM_UUID_FILE
    finally:
        if made_file:
            UPSTREAM_UUID_FILE.unlink(missing_ok=True)
        if made_dir:
            UPSTREAM_UUID_FILE.parent.rmdir()


def upstream(*args: object) -> subprocess.CompletedProcess[str]:
    """Upstream's `famfs ARGS...`, in FUSE mode whatever the kernel offers (FAMFS_MODE)."""
    return subprocess.run([str(FAMFS_CLI), *map(str, args)], capture_output=True, text=True,
                          timeout=UPSTREAM_TIMEOUT_S, env={**os.environ, "FAMFS_MODE": "fuse"})


def passed(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{' '.join(done.args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_upstream_cli_writes_through_our_mount(tmp_path: Path, upstream_identity: Path) -> None:
    """Upstream's mkdir, creat (with its pattern), cp, verify, logplay and fsck through our mount,
    as its smoke tests run them in FUSE mode; then our agent has played every entry it logged,
    our fsck finds the log clean, and the bytes are what upstream wrote."""
    image = make_image(tmp_path / "dev.img", "4g")
    shadow = tmp_path / "shadow"
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(3 * MiB + 17))
    with following(image, shadow):
        wait_for(lambda: (shadow / "root" / ".meta" / ".log").exists(), "the agent plays the log")
        with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
            mpt = mount.mountpoint
            passed(upstream("mkdir", "-p", mpt / "d1" / "d2"))
            passed(upstream("creat", "-s", "4m", "-r", "-S", "11", mpt / "d1" / "d2" / "f"))
            passed(upstream("verify", "-S", "11", "-f", mpt / "d1" / "d2" / "f"))
            passed(upstream("cp", local, mpt / "d1" / "copy"))
            assert (mpt / "d1" / "copy").read_bytes() == local.read_bytes()
            passed(upstream("logplay", "-n", mpt))
            passed(upstream("fsck", mpt))
            wait_for(lambda: agent_caught_up(image, shadow), "the agent plays what upstream's CLI logged")
        assert "Traceback" not in mount.log()
    famfsctl("fsck", image)
    famfsctl("verify", "--device", image, "-S", "11", "d1/d2/f")
    assert file_bytes(image, "d1/copy") == local.read_bytes()


def entries_image(tmp_path: Path, uuid_file: Path) -> Path:
    """Every entry type we write: the churned log of test_compaction (DELETE, RMDIR, SETATTR, a
    path used twice) plus a FENCE, RECLAIMs of the deleted files and a file made after them."""
    image = churned_image(tmp_path, uuid_file)
    with writer.session(str(image), uuid_file) as current:
        current.fence(fmt.FenceEntry(uuid.uuid4(), 1, 3, fmt.FenceReason.OPERATOR, heartbeat=9, applied=1))
        current.reclaim(sorted(current.namespace.deletions.items()))
    Master(str(image), system_uuid_file=uuid_file).create("after-reclaim", 4 * MiB).commit()
    return image


def units_logged_twice(image: Path) -> int:
    """What upstream's fsck counts (spec §4.1, §4.4): units that two FILE entries map, DELETE,
    RECLAIM and HOLD being unknown to it, and an extent's device ignored (one bitmap: an added
    device's extent counts against device 0's unit at its offset; docs/devices.md)."""
    seen: set[int] = set()
    twice = 0
    with Device(image) as device:
        for _, entry in FamfsLog(device).entries():
            if not isinstance(entry, fmt.FileEntry):
                continue
            for offset, length in ((extent.offset, extent.length) for extent in entry.all_extents()):
                for unit in range(offset // fmt.ALLOC_UNIT, (offset + length + fmt.ALLOC_UNIT - 1) // fmt.ALLOC_UNIT):
                    twice += unit in seen
                    seen.add(unit)
    return twice


def shown(root: Path) -> set[str]:
    """Every file and directory below a shadow root, as relpaths."""
    return {str(Path(dirpath, name).relative_to(root))
            for dirpath, dirnames, filenames in os.walk(root) for name in (*dirnames, *filenames)}


@pytest.mark.parametrize("compacted", [False, True], ids=["as-written", "compacted"])
def test_upstream_readers_on_our_entries(tmp_path: Path, upstream_identity: Path, compacted: bool) -> None:
    """Upstream's logplay shows what docs/format.md says it shows (the model of its reader in
    test_compaction: FILE and MKDIR entries, first wins, the rest skipped), with a host table in
    the superblock region (an agent joined); its fsck fails exactly when two FILE entries it
    knows share a unit (a RECLAIMed unit reused), as docs/format.md warns."""
    image = entries_image(tmp_path, upstream_identity)
    if compacted:
        famfsctl("compact", image)
    expected = upstream_logplay(image)
    assert expected is not None
    replay = tmp_path / "replay"
    (replay / "root").mkdir(parents=True)
    shadow = tmp_path / "shadow"
    with following(image, shadow):
        wait_for(lambda: agent_caught_up(image, shadow), "the agent plays the log", WAIT_S)
        with Mount(shadow, image, tmp_path / "mnt", "ro_namespace") as mount:
            passed(upstream("logplay", "-n", mount.mountpoint))
            passed(upstream("logplay", f"--shadow={replay}", mount.mountpoint))
            checked = upstream("fsck", mount.mountpoint)
    assert shown(replay / "root") == expected
    assert (checked.returncode != 0) == (units_logged_twice(image) > 0), checked.stdout
    famfsctl("fsck", image)


def test_upstream_readers_on_several_devices(tmp_path: Path, upstream_identity: Path) -> None:
    """docs/devices.md, "Upstream's tools on a multi-device file system", tried: upstream's logplay
    on the primary lists the files on an added device and striped across both (ADD_DAXDEV
    skipped), and its fsck, whose one bitmap ignores an extent's device, fails exactly when an
    added device's extent has the offset of a unit used on device 0."""
    primary = make_image(tmp_path / "p.img", "3g")
    added = tmp_path / "s1.img"
    famfsctl("add-device", "--device", primary, "--size", "2g", added)  # no larger than the primary
    master = tmp_path / "master.toml"
    master.write_text(f'[host]\ndevices = ["{added}"]\n')
    famfsctl("creat", "--config", master, "--device", primary, "-s", "5m", "-r", "-S", "1", "zero")
    famfsctl("creat", "--config", master, "--device", primary, "-s", "5m", "--on-device", "1", "-r", "-S", "2", "one")
    famfsctl("creat", "--config", master, "--device", primary, "-s", "64m", "-N", "2", "-B", "1", "-r", "-S", "3", "wide")
    expected = upstream_logplay(primary)
    assert expected is not None and {"zero", "one", "wide"} <= expected
    replay = tmp_path / "replay"
    (replay / "root").mkdir(parents=True)
    shadow = tmp_path / "shadow"
    with following(primary, shadow, "--config", master):
        wait_for(lambda: agent_caught_up(primary, shadow), "the agent plays the log", WAIT_S)
        with Mount(shadow, primary, tmp_path / "mnt", "ro_namespace") as mount:
            passed(upstream("logplay", f"--shadow={replay}", mount.mountpoint))
            checked = upstream("fsck", mount.mountpoint)
    assert shown(replay / "root") == expected
    assert (checked.returncode != 0) == (units_logged_twice(primary) > 0), checked.stdout
