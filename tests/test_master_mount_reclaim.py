"""A file closed on the master's mount when the only room is space still being reclaimed: its
last release waits for the reclaim coordinator (bounded by [mount] apply_wait_s), then logs it,
as famfsctl creat and famfs.Master.create wait (docs/reclaim.md). Before, a file of one
allocation unit (never checked at its writes) was dropped at its release (EIO, logged only)
whenever another writer had taken the free space first: `make churn` counted those as
allocation failures.

Real parts: a cluster of the master alone (demo/cluster.py), its agent, its FUSE mount and
`famfsctl reclaimd`; the deleted file is held by an open handle through the mount (a pin).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import famfs
from demo.cluster import Cluster, stop_process, tool, wait_until
from famfs import MasterError, hosts
from famfs import format as fmt
from famfs.device import Device
from tests.famfsctl_util import entries

AGENT_SETTINGS = {"heartbeat_interval": 0.05, "serve_window": 1.0}
MASTER_SETTINGS = {"host_lease": 2.0, "reclaim_poll": 0.05, "reclaim_wait": 30.0}
WAIT_S = 60.0  # bounds every wait; nothing is timed
NEW_BYTES = b"written through the master's mount\n" * 100
PINNED_S = 1.0  # the file waits this long at least, its space pinned: nothing is timed


def coordinator_running(image: Path) -> bool:
    with Device(image) as device:
        return hosts.coordinator_running(device.fd)


def logged(cluster: Cluster) -> list[str]:
    return [entry.relpath for entry in entries(cluster.image) if isinstance(entry, fmt.FileEntry)]


def test_a_close_needing_space_being_reclaimed_waits_for_it(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", size="64m", clients=0)
    cluster.master.add_settings("agent", AGENT_SETTINGS)
    cluster.master.add_settings("master", MASTER_SETTINGS)
    with cluster:
        master = famfs.Master(cluster.image, system_uuid_file=cluster.master.uuid_file)
        master.create("held", fmt.ALLOC_UNIT).commit()
        filled = 0
        while True:  # every other unit taken
            try:
                master.create(f"fill{filled}", fmt.ALLOC_UNIT).commit()
            except MasterError:
                break
            filled += 1
        mnt = cluster.master.view()
        held = mnt / "held"
        wait_until(held.exists, WAIT_S, "the held file in the master's mount")
        handle = os.open(held, os.O_RDONLY)  # pins it on this host once it is deleted
        coordinator = None
        try:
            master.remove("held")
            coordinator = cluster.master.spawn([tool("famfsctl"), "--config", str(cluster.master.config_file),
                                                "reclaimd", "--metrics-address", "", str(cluster.image)],
                                               cluster.master.home / "reclaimd.log")
            wait_until(lambda: coordinator_running(cluster.image), WAIT_S, "the coordinator to take its lock")
            (mnt / "new").write_bytes(NEW_BYTES)  # its close answers at once; it is logged at its release
            threading.Event().wait(PINNED_S)
            assert "new" not in logged(cluster), "logged while the only room was pinned"
            os.close(handle)
            handle = -1
            wait_until(lambda: "new" in logged(cluster), WAIT_S, "the new file logged once the space came back")
        finally:
            if handle >= 0:
                os.close(handle)
            if coordinator is not None:
                stop_process(coordinator)
        assert (mnt / "new").read_bytes() == NEW_BYTES
        assert filled > 0
