"""Checks that a cluster has converged: shadow trees agree, mounts show the master's data."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from demo.churn import RANDOMIZED_PREFIX
from demo.cluster import Cluster, HarnessError, Host, tool
from demo.trees import Snapshot, differences, sha256_of, snapshot

CONVERGE_TIMEOUT_S = 60.0
SKIPPED_BY_DIFF = (f"{RANDOMIZED_PREFIX}*", ".meta")  # randomized files have no local copy; .meta is famfs's own


def fresh_play(cluster: Cluster) -> Snapshot:
    """The tree a one-shot `famfs-agent` play of the whole log gives, as a client would see it."""
    shadow = cluster.shadows / "fresh-play"
    shutil.rmtree(shadow, ignore_errors=True)
    cluster.one_shot_play(shadow)
    return snapshot(shadow / "root")


def moving_snapshot(root: Path) -> Snapshot | None:
    """snapshot() of a tree a following agent may be changing; None if a name it removed between
    the walk's listing and its lstat cut the walk short (the caller looks again)."""
    try:
        return snapshot(root)
    except FileNotFoundError:
        return None


def wait_shadows_equal(hosts: Sequence[Host], reference: Snapshot, timeout: float = CONVERGE_TIMEOUT_S) -> None:
    """Every host's shadow tree byte-identical to `reference` (polls: followers may still be applying)."""
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    while pending:
        current = {host.name: moving_snapshot(host.shadow_root) for host in pending}
        pending = [host for host in pending if current[host.name] != reference]
        if pending and time.monotonic() > deadline:
            report = {host.name: "still changing" if current[host.name] is None else
                      differences(current[host.name], reference, (host.name, "fresh play")) for host in pending}
            raise HarnessError(f"shadow trees still differ after {timeout:.0f} s: {report}")
        if pending:
            time.sleep(0.2)


def diff_mount(host: Host, expected: Path) -> str:
    """`diff -r` between local data and the whole tree through `host`'s mount; its output."""
    excludes = [arg for pattern in SKIPPED_BY_DIFF for arg in ("-x", pattern)]
    result = host.run_inside(["diff", "-r", *excludes, str(expected), str(host.mountpoint)], check=False)
    return result.stdout + result.stderr


def wait_mount_matches(host: Host, expected: Path, timeout: float = CONVERGE_TIMEOUT_S) -> None:
    """Poll `diff -r` until it comes out empty: the mount may be a few entries behind."""
    deadline = time.monotonic() + timeout
    while output := diff_mount(host, expected):
        if time.monotonic() > deadline:
            raise HarnessError(f"{host.name}: diff -r {expected} against its mount after {timeout:.0f} s:\n{output[:3000]}")
        time.sleep(0.2)


def verify_randomized(host: Host, seeds: Mapping[str, int]) -> None:
    """`famfsctl verify` of each randomized file, run on `host` against a path in its mount."""
    for relpath, seed in seeds.items():
        host.run_inside([tool("famfsctl"), "verify", "-S", str(seed), str(host.mountpoint / relpath)])


def checksums_through(host: Host, relpaths: Sequence[str]) -> dict[str, str]:
    return {relpath: sha256_of(host.view(relpath)) for relpath in relpaths}


def agent_status(host: Host) -> str:
    """`famfs-agent status --shadow DIR` for this host's shadow."""
    result = subprocess.run([tool("famfs-agent"), "status", "--shadow", str(host.shadow)], capture_output=True,
                            text=True, env=host.env, timeout=60)
    if result.returncode != 0:
        raise HarnessError(f"{host.name}: famfs-agent status exited {result.returncode}: {result.stderr}")
    return result.stdout
