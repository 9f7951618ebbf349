"""Metrics and health checks of the real daemons (docs/operations.md): a following famfs-agent and
a famfs-fuse-mount, each serving Prometheus metrics, scraped during real appends and reads and
parsed with prometheus_client's own parser; `famfs-agent health` and `famfs-fuse-mount health`
turning unhealthy when the agent stops, the device is replaced or the tree is wiped, and healthy
again after recovery."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from famfs import env
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master.mkfs import mkfs
from famfs.metrics import METRICS_PATH, MetricsServer, build_info
from tests import fuse_util
from tests.agent_util import AGENT, make_device
from tests.famfsctl_util import entries, famfsctl, file_bytes
from tests.fuse_util import MOUNT_CLI, Mount, play, wait_for
from tests.test_agent_follow import following

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HEALTH_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=fuse_util.WAIT_S) as reply:
        return str(reply.read().decode())


def scrape(port: int) -> Samples:
    """Every sample at /metrics, parsed by prometheus_client: (name, sorted labels) -> value."""
    text = scrape_text(port)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape_until(port: int, check: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until check(samples) holds (bounded wait); those samples."""
    def attempt() -> Samples | None:
        samples = scrape(port)
        return samples if check(samples) else None

    return wait_for(attempt, what)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over every label set that includes `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


def labels_of(samples: Samples, name: str) -> dict[str, str]:
    return next(dict(lbls) for (n, lbls) in samples if n == name)


def entries_fs_uuid(image: Path) -> str:
    with Device(image) as device:
        return str(FamfsLog(device).superblock.fs_uuid)


class VersionsOnly:
    def collect(self) -> list[object]:
        return [build_info("famfs_test")]


@pytest.mark.parametrize(("address", "bound"), [(":0", "127.0.0.1"), ("127.0.0.1:0", "127.0.0.1"),
                                                ("0.0.0.0:0", "0.0.0.0"), ("[::1]:0", "::1"), ("[::]:0", "::")])
def test_metrics_bind_to_loopback_unless_the_address_names_a_host(address: str, bound: str) -> None:
    server = MetricsServer(address, VersionsOnly())
    try:
        assert server.server.server_address[0] == bound
    finally:
        server.close()


def test_only_the_metrics_path_is_served() -> None:
    """/metrics answers; any other path (/, /favicon.ico, /metrics/x, /anything) is 404."""
    server = MetricsServer(":0", VersionsOnly())
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + METRICS_PATH, timeout=fuse_util.WAIT_S) as reply:
            assert reply.status == 200 and b"famfs_test_build_info{" in reply.read()
        for path in ("/", "/favicon.ico", "/metrics/x", "/anything", "/metricsx"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=fuse_util.WAIT_S)
            assert refused.value.code == 404, path
    finally:
        server.close()


def health(*args: str | os.PathLike[str]) -> tuple[int, dict[str, object]]:
    done = subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=HEALTH_TIMEOUT_S)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return done.returncode, json.loads(lines[0])


def agent_health(shadow: Path) -> tuple[int, dict[str, object]]:
    return health(*AGENT, "health", "--shadow", shadow, "--max-lag-s", "5")


def until(check: Callable[[], tuple[int, dict[str, object]]], healthy: bool, what: str) -> dict[str, object]:
    """Probe until it answers `healthy` (bounded); the last answer."""
    answers: list[dict[str, object]] = []

    def probe() -> bool:
        code, answer = check()
        answers.append(answer)
        assert code == (0 if answer["healthy"] else 1), answer
        return answer["healthy"] is healthy

    wait_for(probe, f"{what}: {answers[-1] if answers else None}", timeout=HEALTH_TIMEOUT_S)
    return answers[-1]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Metrics on for both daemons through famfs-agent.toml ($FAMFS_AGENT_CONFIG): (agent port, mount port)."""
    ports = free_port(), free_port()
    path = tmp_path / "famfs-agent.toml"
    path.write_text(f'[agent]\nmetrics_address = "127.0.0.1:{ports[0]}"\n'
                    f'[mount]\nmetrics_address = "127.0.0.1:{ports[1]}"\n')
    monkeypatch.setenv(env.AGENT_CONFIG, str(path))
    return ports


def test_agent_metrics_follow_the_log(tmp_path: Path, system_uuid_file: Path, config: tuple[int, int]) -> None:
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("mkdir", "--device", image, "before")
    shadow = tmp_path / "shadow"
    with following(image, shadow):
        for n in range(3):
            famfsctl("mkdir", "--device", image, f"d{n}")
            famfsctl("creat", "--device", image, "-s", "4k", f"d{n}/f")
        logged = entries(image)
        samples = scrape_until(config[0], lambda s: value(s, "famfs_agent_applied_index") == len(logged) - 1
                               and value(s, "famfs_agent_lag_entries") == 0, "the agent's metrics catch up")
        assert str(image) not in scrape_text(config[0]) and str(tmp_path) not in scrape_text(config[0])
    kinds = {"file": fmt.FileEntry, "mkdir": fmt.MkdirEntry}
    for label, kind in kinds.items():
        assert total(samples, "famfs_agent_entries_total", type=label) == sum(type(e) is kind for e in logged)
    assert total(samples, "famfs_agent_entries_total") == len(logged)
    assert total(samples, "famfs_agent_entries_total", outcome="rejected") == 0
    assert value(samples, "famfs_agent_log_next_index") == len(logged)
    assert value(samples, "famfs_agent_lag_seconds") == 0
    assert value(samples, "famfs_agent_polls_total") > 0 and value(samples, "famfs_agent_wakeups_total") > 0
    assert value(samples, "famfs_agent_rebuilds_total") == value(samples, "famfs_agent_device_errors_total") == 0
    assert set(labels_of(samples, "famfs_agent_build_info")) == {"version", "python"}
    info = labels_of(samples, "famfs_agent_filesystem_info")
    assert info == {"fs_uuid": json.loads((shadow / ".agent" / "state.json").read_text())["fs_uuid"], "role": "master"}
    with pytest.raises(OSError):  # the server went with the agent
        scrape(config[0])


def test_bad_metrics_address_is_one_line(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    done = subprocess.run([*AGENT, "--follow", "--shadow", tmp_path / "s", "--metrics-address", "nowhere", image],
                          capture_output=True, text=True, timeout=fuse_util.WAIT_S)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "metrics address: must be HOST:PORT or :PORT with a port 0-65535, not 'nowhere'" in done.stderr


def test_mount_metrics_count_requests(tmp_path: Path, system_uuid_file: Path, config: tuple[int, int]) -> None:
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("mkdir", "--device", image, "dir")
    famfsctl("creat", "--device", image, "-s", "64k", "--randomize", "--seed", "7", "dir/data")
    shadow = tmp_path / "shadow"
    client = fuse_util.client_env(tmp_path)  # its mkdir below is refused
    with following(image, shadow, "--system-uuid-file", fuse_util.client_uuid_file(tmp_path)), \
            Mount(shadow, image, tmp_path / "mnt", "timeout=0", env=client) as mount:
        port = config[1]
        before = scrape(port)
        data = (mount.mountpoint / "dir" / "data").read_bytes()
        assert data == file_bytes(image, "dir/data")
        with open(mount.mountpoint / "dir" / "data", "rb") as handle:
            assert handle.read(4096) == data[:4096]
            assert value(scrape(port), "famfs_fuse_open_files") == 1
        with pytest.raises(PermissionError):
            (mount.mountpoint / "dir" / "new").mkdir()
        assert not (mount.mountpoint / "dir" / "later").exists()  # a cached negative lookup
        famfsctl("creat", "--device", image, "-s", "4k", "dir/later")
        wait_for(lambda: (mount.mountpoint / "dir" / "later").exists(), "the new file in the mount")
        after = scrape_until(port, lambda s: value(s, "famfs_fuse_open_files") == 0, "the handle released")
        assert str(image) not in scrape_text(port) and str(tmp_path) not in scrape_text(port)
    count = "famfs_fuse_requests_total"
    sampled = "famfs_fuse_request_duration_sampled_seconds"
    assert value(after, count, operation="read") >= value(before, count, operation="read") + 2
    assert value(after, count, operation="open") >= value(before, count, operation="open") + 2
    assert value(after, count, operation="lookup") > value(before, count, operation="lookup")
    # One read in 16 timed, the first among them: the histogram holds some, never more than all.
    assert value(after, f"{sampled}_bucket", operation="read", le="+Inf") == \
        value(after, f"{sampled}_count", operation="read")
    assert 1 <= value(after, f"{sampled}_count", operation="read") <= value(after, count, operation="read")
    assert value(after, "famfs_fuse_errors_total", errno="EPERM") >= 1
    assert total(after, "famfs_fuse_notifications_total") > total(before, "famfs_fuse_notifications_total")
    assert value(after, "famfs_fuse_inodes") >= 5  # root, .meta and its two files, dir, data, later
    assert set(labels_of(after, "famfs_fuse_build_info")) == {"version", "python"}
    assert labels_of(after, "famfs_fuse_filesystem_info") == labels_of(before, "famfs_fuse_filesystem_info") == \
        {"fs_uuid": entries_fs_uuid(image)}


def test_agent_health_follows_failures_and_recovery(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("mkdir", "--device", image, "kept")
    shadow = tmp_path / "shadow"
    code, answer = agent_health(shadow)
    assert code == 1 and "no agent state" in str(answer["checks"])
    with following(image, shadow):
        answer = until(lambda: agent_health(shadow), True, "healthy while following")
        assert set(answer["checks"]) == {"state", "following", "device", "tree", "lag", "log"}  # type: ignore[arg-type]
        # The device replaced by something that holds no famfs: unhealthy until it does again.
        fuse_util.write_device(image, 0, bytes(fmt.SUPERBLOCK.size))
        answer = until(lambda: agent_health(shadow), False, "a device with no famfs")
        assert answer["checks"]["device"] != "ok"  # type: ignore[index]
        mkfs(str(image), uuid_file=system_uuid_file)
        famfsctl("mkdir", "--device", image, "again")
        until(lambda: agent_health(shadow), True, "the re-made device followed")
        assert (shadow / "root" / "again").is_dir() and not (shadow / "root" / "kept").exists()
        # The tree wiped behind a following agent's back: it repairs it (docs/agent.md, self-repair).
        for child in (shadow / "root").iterdir():
            shutil.rmtree(child)
        until(lambda: agent_health(shadow), True, "the wiped tree repaired by the following agent")
        assert (shadow / "root" / "again").is_dir()
    answer = until(lambda: agent_health(shadow), False, "the agent stopped")
    assert answer["checks"]["following"] == "the agent is not running"  # type: ignore[index]
    # Wiped while no agent runs: the probe sees it, and a restart rebuilds it.
    for child in (shadow / "root").iterdir():
        shutil.rmtree(child)
    code, answer = agent_health(shadow)
    assert code == 1 and "missing" in answer["checks"]["tree"]  # type: ignore[index]
    with following(image, shadow) as agent:
        until(lambda: agent_health(shadow), True, "the restarted agent")
    assert "rebuild" in agent.log and (shadow / "root" / "again").is_dir()  # type: ignore[attr-defined]


def test_mount_health_sees_a_replaced_device(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    play(image, shadow)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    code, answer = health(MOUNT_CLI, "health", mountpoint)
    assert code == 1 and answer["checks"] == {"mounted": f"{mountpoint} is not a famfs mount"}
    with Mount(shadow, image, mountpoint):
        code, answer = health(MOUNT_CLI, "health", mountpoint)
        assert code == 0 and answer["device"] == str(image), answer
        served = answer["fs_uuid"]
        mkfs(str(image), uuid_file=system_uuid_file, force=True)  # a new file system under the mount
        code, answer = health(MOUNT_CLI, "health", mountpoint)
        device_check = str(answer["checks"]["device"])  # type: ignore[index]
        assert code == 1 and ("now holds file system" in device_check or "serves no bytes" in device_check), answer
        # The agent plays the new file system: the mount switches to it, and health agrees.
        play(image, shadow)
        answer = until(lambda: health(MOUNT_CLI, "health", mountpoint), True, "the mount serving the re-made device")
        assert answer["fs_uuid"] != served and answer["generation"] == 2, answer
    play(image, shadow)
    with Mount(shadow, image, mountpoint):  # remounted: healthy again
        code, answer = health(MOUNT_CLI, "health", mountpoint)
        assert code == 0, answer


def test_health_is_in_the_help_and_the_mount_probe_reads_the_configured_mountpoint(
        tmp_path: Path, system_uuid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for program in (AGENT, [MOUNT_CLI]):
        done = subprocess.run([*program, "--help"], capture_output=True, text=True, timeout=HEALTH_TIMEOUT_S)
        assert done.returncode == 0 and " health" in done.stdout, done.stdout
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    play(image, shadow)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = tmp_path / "famfs-agent.toml"
    config.write_text(f'[mount]\nmountpoint = "{mountpoint}"\n')
    monkeypatch.setenv(env.AGENT_CONFIG, str(config))
    with Mount(shadow, image, mountpoint):
        code, answer = health(MOUNT_CLI, "health")
        assert code == 0 and answer["mountpoint"] == str(mountpoint), answer
