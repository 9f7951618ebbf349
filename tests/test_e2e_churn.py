"""End to end: the master churns (mkdir / creat / cp / rm, thousands of entries) while two clients
follow; every client converges to exactly what a fresh play of the log gives, and serves the
master's data through its mount. Real CLIs, a real sparse image, real FUSE mounts."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.checks import (
    agent_status,
    checksums_through,
    fresh_play,
    verify_randomized,
    wait_mount_matches,
    wait_shadows_equal,
)
from demo.churn import Churn
from demo.cluster import Cluster

DEVICE_SIZE = "16g"  # sparse: every file takes >= one 2 MiB unit, and rm does not free space
RANDOMIZED_CHECKED_PER_CLIENT = 6
NOTHING_REJECTED = re.compile(r"^rejected:\s+0$", re.MULTILINE)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "cluster", size=DEVICE_SIZE) as running:
        yield running
        # Inside the `with`: a test that passes must also leave nothing behind.
    assert running.leftovers() == []


def assert_converged(cluster: Cluster, churn: Churn) -> None:
    """Shadow trees identical to a fresh one-shot play; mounts equal to the source data."""
    reference = fresh_play(cluster)
    assert len(reference) > len(churn.copied)  # the play produced the tree, not an empty one
    wait_shadows_equal(cluster.clients, reference)
    for client in cluster.clients:
        assert NOTHING_REJECTED.search(agent_status(client)), agent_status(client)
    for client in cluster.clients:
        wait_mount_matches(client, churn.expected)
        verify_randomized(client, dict(list(churn.randomized.items())[:RANDOMIZED_CHECKED_PER_CLIENT]))
    randomized = sorted(churn.randomized)
    per_host = [checksums_through(host, randomized) for host in cluster.hosts]
    assert all(sums == per_host[0] for sums in per_host)


def test_two_clients_follow_churn_and_converge(cluster: Cluster, tmp_path: Path) -> None:
    churn = Churn(cluster, tmp_path / "expected", random.Random(1))
    appended = churn.run(3000)
    assert appended >= 3000
    assert churn.copied and churn.randomized and len(churn.dirs) > 10
    assert_converged(cluster, churn)


def test_client_agent_killed_mid_churn_catches_up(cluster: Cluster, tmp_path: Path) -> None:
    churn = Churn(cluster, tmp_path / "expected", random.Random(2))
    client = cluster.clients[0]
    kill_at, restart_at = 8, 20

    def crash_and_restart(current: Churn) -> None:
        # Right after a step's famfsctl returns, the agent is typically still applying its entries.
        if current.steps == kill_at:
            client.stop_agent(kill=True)
        elif current.steps == restart_at:
            client.start_agent()

    churn.run(1500, between_steps=crash_and_restart)
    assert churn.steps > restart_at
    assert_converged(cluster, churn)


def test_client_mount_restarted_mid_churn_shows_current_tree(cluster: Cluster, tmp_path: Path) -> None:
    churn = Churn(cluster, tmp_path / "expected", random.Random(3))
    client = cluster.clients[1]
    stop_at, restart_at = 6, 16
    stopped_statuses: list[int | None] = []

    def remount(current: Churn) -> None:
        if current.steps == stop_at:
            stopped_statuses.append(client.stop_mount())
        elif current.steps == restart_at:
            client.start_mount()
            wait_mount_matches(client, churn.expected)  # at once, while the churn goes on

    churn.run(1500, between_steps=remount)
    assert churn.steps > restart_at
    assert stopped_statuses == [0]  # SIGTERM ends the mount cleanly
    assert_converged(cluster, churn)
