"""One identity per host: famfs-fuse-mount takes its system UUID from its agent's state.json, refuses
to start (exit 2, one line) when given another on purpose, and writes the log only when that
identity is the superblock's master. (The README's client recipe, run as written, is in
tests/test_readme.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from famfs import env
from famfs.shadowdir import read_state
from tests.agent_util import following
from tests.famfsctl_util import digest, entries, famfsctl
from tests.fuse_util import MOUNT_CLI, WAIT_S, Mount, client_uuid_file, empty_shadow, play

NO_IDENTITY = {key: value for key, value in os.environ.items() if key != env.SYSTEM_UUID_FILE}


@pytest.fixture
def master(tmp_path: Path) -> Path:
    """The master host's identity file (it runs mkfs)."""
    return tmp_path / "master-host" / "system_uuid"


@pytest.fixture
def device(tmp_path: Path, master: Path) -> Path:
    image = tmp_path / "dev.img"
    famfsctl("mkfs", "--size", "1g", "--system-uuid-file", master, image)
    famfsctl("mkdir", "--system-uuid-file", master, "--device", image, "dir")
    return image


def refused(shadow: Path, mountpoint: Path, *args: str, environ: dict[str, str] | None = None) -> str:
    """Run the mount, which must refuse at once: exit 2, one line on stderr, nothing mounted."""
    mountpoint.mkdir(exist_ok=True)
    done = subprocess.run([MOUNT_CLI, "--foreground", "--shadow", str(shadow), *args, str(mountpoint)],
                          capture_output=True, text=True, timeout=WAIT_S, env=environ or NO_IDENTITY)
    assert done.returncode == 2, done.stderr
    assert not os.path.ismount(mountpoint)
    assert len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr


def test_the_agent_records_its_identity(tmp_path: Path, device: Path, master: Path) -> None:
    client = client_uuid_file(tmp_path)
    play(device, tmp_path / "client", "--system-uuid-file", client)  # no such file: made, as upstream does
    play(device, tmp_path / "master", "--system-uuid-file", master)
    as_client, as_master = read_state(tmp_path / "client"), read_state(tmp_path / "master")
    assert as_client is not None and as_master is not None
    # The agent needs an identity for its host record (docs/reclaim.md): it makes the file if missing.
    assert (as_client.role, as_client.system_uuid_file) == ("client", str(client))
    assert as_client.system_uuid == client.read_text().strip("\0\n")
    assert (as_master.role, as_master.system_uuid_file) == ("master", str(master))
    assert as_master.system_uuid == master.read_text().strip("\0\n")


def test_a_mount_given_another_identity_than_its_agents_refuses_to_start(
        tmp_path: Path, device: Path, master: Path) -> None:
    """The agent is a client; the master's identity given by flag, environment or config file is
    refused, and so is a client identity other than the agent's."""
    client = client_uuid_file(tmp_path)
    client.parent.mkdir()
    client.write_text("0a1d1bd2-7d5c-4a55-9a3c-6c7ae2a14c7e\n")
    shadow = tmp_path / "shadow"
    play(device, shadow, "--system-uuid-file", client)
    mnt = tmp_path / "mnt"
    by_flag = refused(shadow, mnt, "--system-uuid-file", str(master))
    assert by_flag.startswith("famfs-fuse-mount: this host has two identities: the agent runs as "
                              f"0a1d1bd2-7d5c-4a55-9a3c-6c7ae2a14c7e from {client}")
    assert f"this program was given {master.read_text().strip()} from {master}" in by_flag
    refused(shadow, mnt, environ={**NO_IDENTITY, env.SYSTEM_UUID_FILE: str(master)})
    config = tmp_path / "famfs-agent.toml"
    config.write_text(f'[host]\nsystem_uuid_file = "{master}"\n')
    refused(shadow, mnt, "--config", str(config))
    assert "(" + str(tmp_path / "nothing") + " does not exist)" in refused(
        shadow, mnt, "--system-uuid-file", str(tmp_path / "nothing"))
    log = digest(device)
    with Mount(shadow, device, mnt, env={**NO_IDENTITY, env.SYSTEM_UUID_FILE: str(client)}) as mount:  # agrees
        with pytest.raises(PermissionError):
            (mount.mountpoint / "dir" / "new").mkdir()
    assert "namespace='read-only here'" in mount.log()
    assert digest(device) == log


def test_the_mount_takes_its_agents_identity(tmp_path: Path, device: Path, master: Path) -> None:
    """Given no identity, the mount is what its agent is, whatever the default file says: the
    master's agent gives a writing mount, and nothing else does."""
    shadow = tmp_path / "shadow"
    with following(device, shadow, "--system-uuid-file", master), \
            Mount(shadow, device, tmp_path / "mnt", env=NO_IDENTITY) as mount:
        (mount.mountpoint / "dir" / "made").mkdir()
    assert "namespace='written here (master)'" in mount.log()
    assert f"identity_from='the agent ({shadow}/.agent/state.json)'" in mount.log()
    assert [entry.relpath for entry in entries(device)][-1] == "dir/made"


def test_without_an_agent_the_given_identity_decides(tmp_path: Path, device: Path, master: Path) -> None:
    """A shadow tree no agent recorded an identity in: the flag names the host."""
    shadow = empty_shadow(tmp_path / "shadow")
    (shadow / "root" / ".meta").mkdir()
    with Mount(shadow, device, tmp_path / "mnt", env={**NO_IDENTITY, env.SYSTEM_UUID_FILE: str(master)}) as mount:
        pass
    assert "namespace='written here (master)'" in mount.log() and f"identity_from='{master}'" in mount.log()
    elsewhere = {**NO_IDENTITY, env.SYSTEM_UUID_FILE: str(tmp_path / "x")}
    with Mount(shadow, device, tmp_path / "mnt2", env=elsewhere) as mount:
        pass
    assert "namespace='read-only here'" in mount.log()


def test_a_read_only_mount_is_never_the_writer(tmp_path: Path, device: Path, master: Path) -> None:
    shadow = tmp_path / "shadow"
    play(device, shadow, "--system-uuid-file", master)
    with Mount(shadow, device, tmp_path / "mnt", "ro", env=NO_IDENTITY) as mount:
        with pytest.raises(OSError):
            (mount.mountpoint / "dir" / "new").mkdir()
    assert "namespace='read-only here'" in mount.log()

