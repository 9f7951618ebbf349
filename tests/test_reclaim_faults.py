"""Reclaim and compaction under faults (issue 19; docs/reclaim.md, "What each crash leaves"):
kill -9 of a client's agent, of a client's mount, of the master's writer and of the reclaim
coordinator, each while a deleted file is being reclaimed and while the log is compacted; a client
SIGSTOPped past its lease, then continued; deleted files held open or mapped.

One cluster for the module (demo/cluster.py): a master that runs famfsctl, famfs.Master and the
coordinator only, and two clients, each an agent and a mount, with short leases. The device is
small and every test fills it, so a new file can only take the units of a deleted one: reuse is
certain, and visible. Every file holds the bytes of its path and a serial of its own
(demo/churn_data.py), and every byte read is checked against the file it was opened as.

What each test shows: no wrong byte ever (a read answers the file's own bytes or an error), the
killed party restarted and the cluster converged (each host's record past the log's end, on the
log's epoch), reclaim proceeding (bounded waits), fsck clean. Each test leaves the cluster whole
and empty (`healed`). "Not reclaimed while held" is shown without sleeping: a canary file deleted
after the held one is reclaimed, so the coordinator has judged the held one and kept it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy
import pytest

import famfs
from demo import churn_data
from demo.cluster import Cluster, HarnessError, Host, add_settings, log_tail, stop_process, tool, wait_until
from famfs import format as fmt
from famfs import hosts
from famfs.compaction import CompactionState, read_record
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import writer
from tests.agent_util import agent_state, current
from tests.fuse_util import WAIT_S, bounded

AU = fmt.ALLOC_UNIT
SIZE = "64m"  # 27 data units: full in a moment, so reuse is certain
AGENT_SETTINGS = {"heartbeat_interval": 0.05, "serve_window": 1.0}
LEASE_S = 2.0  # the coordinator's lease: twice the serve window
MASTER_SETTINGS = {"host_lease": LEASE_S, "reclaim_poll": 0.05, "reclaim_wait": 30.0, "compact_below": 0.0}
CONVERGE_S = 30.0  # bounded waits for the cluster (a lease or two, on a loaded 2-core machine): never timed
HELD_ERRNOS = {errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.ENOENT}  # what a read may answer instead of bytes


@dataclass(frozen=True)
class Made:
    """A file the test made: what its bytes must be, and where they live."""

    relpath: str
    serial: int
    extents: tuple[fmt.Extent, ...]

    @property
    def size(self) -> int:
        return sum(extent.length for extent in self.extents)


class Rig:
    """The cluster, its coordinator and the test's view of the log."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.image = cluster.image
        self.master = cluster.master
        self.clients = cluster.clients
        self.coordinator: subprocess.Popen[str] | None = None
        self.overrides: dict[str, object] = {}  # the running coordinator's settings, beyond the module's
        self.serials = iter(range(1, 1 << 30))
        self.writer: famfs.Master | None = None

    # --- processes ------------------------------------------------------------------------

    def config(self, name: str, **overrides: object) -> Path:
        """A config file for the master's programs: the module's settings changed by `overrides`."""
        config = self.master.home / f"{name}.toml"
        config.write_text(f'[host]\nsystem_uuid_file = "{self.master.uuid_file}"\n')
        add_settings(config, "master", {**MASTER_SETTINGS, **overrides})
        return config

    def start_coordinator(self, **overrides: object) -> None:
        """`famfsctl reclaimd` on the master, with the module's settings changed by `overrides`."""
        config = self.config("reclaimd", **overrides)
        self.overrides = dict(overrides)
        argv = [tool("famfsctl"), "--config", str(config), "reclaimd", "--metrics-address", "", str(self.image)]
        self.coordinator = self.master.spawn(argv, self.reclaimd_log)
        wait_until(lambda: self.coordinator_running() or self.coordinator.poll() is not None, CONVERGE_S,
                   "the coordinator to take its lock")
        assert self.coordinator.poll() is None, self.reclaimd_log.read_text()

    @property
    def reclaimd_log(self) -> Path:
        return self.master.home / "reclaimd.log"

    def coordinator_running(self) -> bool:
        with Device(self.image) as device:
            return hosts.coordinator_running(device.fd)

    def kill_coordinator(self) -> None:
        if self.coordinator is not None:
            self.coordinator.kill()
            self.coordinator.wait()
            self.coordinator = None

    def stop_coordinator(self) -> None:
        if self.coordinator is not None:
            assert stop_process(self.coordinator) == 0, self.reclaimd_log.read_text()
            self.coordinator = None

    # --- the master's writes --------------------------------------------------------------

    def api(self) -> famfs.Master:
        if self.writer is None:
            self.writer = famfs.Master(self.image, system_uuid_file=self.master.uuid_file)
        return self.writer

    def make(self, relpath: str, units: int = 1) -> Made:
        """A file of `units` allocation units holding (relpath, a new serial)'s bytes."""
        serial = next(self.serials)
        new = self.api().create(relpath, units * AU)
        churn_data.fill(new.buffer, relpath, serial)
        new.commit()
        return Made(relpath, serial, new.entry.all_extents())

    def fill(self, leave: int = 0) -> list[Made]:
        """1-unit files until only `leave` units are free."""
        made = []
        while self.namespace().units.free_units > leave:
            made.append(self.make(f"fill-{next(self.serials)}"))
        return made

    def remove(self, *relpaths: str) -> int:
        """Remove files; the index of the last DELETE."""
        self.api().remove(*relpaths)
        with Device(self.image) as device:
            return FamfsLog(device).header().next_index - 1

    # --- the log, as every reader replays it ----------------------------------------------

    def namespace(self) -> writer.rules.Namespace:
        with Device(self.image) as device:
            return writer.load(FamfsLog(device))

    def held(self, made: Made) -> bool:
        """Whether `made`'s units are still held by it, deleted: not reclaimed, not reused."""
        namespace = self.namespace()
        return any(entry.all_extents() == made.extents for entry in namespace.deleted.values())

    def reused_by_live(self, made: Made) -> list[str]:
        """Live files (other than `made` itself) whose units overlap `made`'s."""
        units = {unit for extent in made.extents for unit in range(extent.offset // AU, (extent.offset + extent.length) // AU)}
        found = []
        for relpath, (_, entry) in self.namespace().files.items():
            if relpath == made.relpath:
                continue
            theirs = {unit for extent in entry.all_extents()
                      for unit in range(extent.offset // AU, (extent.offset + extent.length) // AU)}
            if theirs & units:
                found.append(relpath)
        return found

    def wait_reclaimed(self, made: Made, what: str) -> None:
        try:
            wait_until(lambda: not self.held(made), CONVERGE_S, f"{what}: {made.relpath} reclaimed", interval=0.02)
        except HarnessError as err:
            raise AssertionError(f"{err}\n{self.explain()}") from None

    def explain(self) -> str:
        """The host table and the coordinator's last words: why nothing is reclaimed."""
        listed = self.master.famfsctl("host", "list", str(self.image), check=False)  # (ctl would put --device first)
        running = "running" if self.coordinator is not None and self.coordinator.poll() is None else "not running"
        agents = "\n".join(f"{client.name} agent log:\n{log_tail(client.agent_log, 15)}" for client in self.clients)
        return f"{listed.stdout}{listed.stderr}coordinator ({running}) log:\n{log_tail(self.reclaimd_log, 40)}\n{agents}"

    def assert_kept(self, made: Made) -> None:
        assert self.held(made), f"{made.relpath}: reclaimed while held"
        assert self.reused_by_live(made) == [], f"{made.relpath}'s units given to another file while held"

    def canaries(self, count: int) -> list[Made]:
        """Files to delete later as canaries: made before the files a test holds, because a
        host's pin floor (the smallest pinned FILE index) holds every deleted file made after it."""
        return [self.make(f"canary-{next(self.serials)}") for _ in range(count)]

    def held_pair(self, name: str, opener: Host, mapper: Host) -> tuple[list[Made], Made, Made, int, famfs.MappedFile]:
        """Two canaries, then two files held: one open (read whole) on `opener`, one mapped on
        `mapper`, with the device full after them: (canaries, opened, mapped, handle, mapping)."""
        canaries = self.canaries(2)
        opened, mapped = self.make(f"{name}-open", 2), self.make(f"{name}-mapped", 2)
        self.fill()
        return canaries, opened, mapped, open_on(opener, opened), map_on(mapper, mapped)

    def judged_and_kept(self, held: Made, canary: Made) -> None:
        """The coordinator judged `held` and kept it: `canary` (made before it, held by no one)
        is deleted after it and reclaimed, so every host is past `held`'s DELETE too. Then the
        device is full again."""
        self.remove(canary.relpath)
        self.wait_reclaimed(canary, "the canary")
        self.assert_kept(held)
        self.fill()  # the canary's unit taken again: the device stays full

    def fsck_clean(self) -> None:
        report = self.cluster.ctl("fsck", check=False)
        assert report.returncode == 0 and report.stdout.endswith("fsck: clean\n"), report.stdout + report.stderr

    def epoch(self) -> int:
        with Device(self.image) as device:
            return FamfsLog(device).location.epoch

    def converged(self) -> bool:
        """Every client's current record is past the log's end, on the log's epoch, and serving."""
        with Device(self.image) as device:
            famfs_log = FamfsLog(device)
            end, epoch = famfs_log.header().next_index, famfs_log.location.epoch
        for client in self.clients:
            record = current(self.image, client.shadow)
            if record is None or record.applied < end or record.log_epoch != epoch or not record.renewed_ns:
                return False
        return True

    def wait_converged(self, what: str) -> None:
        wait_until(self.converged, CONVERGE_S, f"{what}: every client on the log's end", interval=0.02)


# --- reading through a client, checking every byte -------------------------------------------


def wrong(data: bytes, made: Made) -> int:
    return churn_data.wrong_bytes(numpy.frombuffer(data, dtype=numpy.uint8), made.relpath, made.serial)


def whole(fd: int, offset: int, size: int) -> bytes:
    parts = []
    end = offset + size
    while offset < end:
        part = os.pread(fd, end - offset, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


@functools.lru_cache(maxsize=8)
def content(made: Made) -> bytes:
    """Every byte `made` holds."""
    return b"".join(bytes(piece) for _, piece in churn_data.chunks(made.relpath, made.serial, made.size))


def read_range(fd: int, made: Made, offset: int = 0, length: int | None = None) -> int:
    """0 if the handle reads `made`'s bytes at [offset, offset + length) (default: all of it),
    else the errno it answers; a wrong byte fails the test. Unbounded: see read_fd."""
    want = content(made)[offset:None if length is None else offset + length]
    try:
        data = whole(fd, offset, len(want))
    except OSError as err:
        return err.errno or -1
    assert data == want, f"{made.relpath}: wrong bytes at {offset} through a handle opened on it"
    return 0


def read_fd(fd: int, made: Made, offset: int = 0, length: int | None = None) -> int:
    """read_range, bounded; an errno other than those of a file no longer served fails."""
    found = bounded(lambda: read_range(fd, made, offset, length), f"read {made.relpath}")
    assert found in HELD_ERRNOS | {0}, f"{made.relpath}: {os.strerror(found)}"
    return found


def read_path(host: Host, made: Made) -> int:
    """0 if `host`'s mount serves `made`'s bytes at its path, else the errno (a wrong byte fails)."""
    def attempt() -> int:
        try:
            fd = os.open(host.view(made.relpath), os.O_RDONLY)
        except OSError as err:
            return err.errno or -1
        try:
            return read_fd(fd, made)
        finally:
            os.close(fd)
    return bounded(attempt, f"{host.name}: open {made.relpath}")


def serves(host: Host, made: Made) -> None:
    """`host`'s mount serves `made` (bounded: a host that just rejoined serves within a moment)."""
    wait_until(lambda: read_path(host, made) == 0, CONVERGE_S, f"{host.name} to serve {made.relpath}", interval=0.05)


def mapped_right(mapped: famfs.MappedFile, made: Made) -> None:
    assert wrong(bytes(mapped.buffer), made) == 0, f"{made.relpath}: wrong bytes in a famfs.open mapping"


def open_handle(host: Host, made: Made) -> int:
    """A handle on `made` through `host`'s mount (a loaded machine may see the lease lapse for a
    moment: EIO, then served again)."""
    found: list[int] = []

    def opened() -> bool:
        try:
            found.append(bounded(lambda: os.open(host.view(made.relpath), os.O_RDONLY), f"open {made.relpath}"))
        except OSError as err:
            assert err.errno == errno.EIO, err
        return bool(found)
    wait_until(opened, CONVERGE_S, f"{host.name} to open {made.relpath}", interval=0.05)
    return found[0]


def open_on(host: Host, made: Made) -> int:
    """open_handle, once it has read every byte of `made`."""
    fd = open_handle(host, made)
    reads(fd, made)
    return fd


def reads(fd: int, made: Made) -> None:
    """The handle reads `made`'s bytes (again: a lapse of the lease on a loaded machine is EIO)."""
    wait_until(lambda: read_fd(fd, made) == 0, CONVERGE_S, f"a handle to read {made.relpath}", interval=0.05)


def map_on(host: Host, made: Made) -> famfs.MappedFile:
    """`made` mapped by famfs.open through `host`'s mount (again after an EIO: see open_handle)."""
    found: list[famfs.MappedFile] = []

    def mapped() -> bool:
        try:
            found.append(bounded(lambda: famfs.open(host.view(made.relpath)), f"famfs.open {made.relpath}"))
        except OSError as err:
            assert err.errno == errno.EIO, err
        return bool(found)
    wait_until(mapped, CONVERGE_S, f"{host.name} to map {made.relpath}", interval=0.05)
    mapped_right(found[0], made)
    return found[0]


def incarnation(host: Host) -> int:
    value = agent_state(host.shadow)["incarnation"]
    assert isinstance(value, int)
    return value


def rejoined(rig: Rig, host: Host, before: int) -> None:
    """`host`'s agent serves with an incarnation other than `before`."""
    def check() -> bool:
        record = current(rig.image, host.shadow)
        return record is not None and record.incarnation != before and record.renewed_ns != 0
    wait_until(check, CONVERGE_S, f"{host.name} to serve as a new incarnation", interval=0.02)


class Background:
    """A call in a daemon thread (one that may wait in the kernel on a stopped mount)."""

    def __init__(self, call: Callable[[], int]) -> None:
        self.outcome: list[int] = []
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], int]) -> None:
        try:
            self.outcome.append(call())
        except BaseException as err:  # handed to result()
            self.failure.append(err)

    def result(self) -> int:
        self.thread.join(CONVERGE_S)
        assert not self.thread.is_alive(), "no answer within the wait"
        if self.failure:
            raise self.failure[0]
        return self.outcome[0]


def silent_said(rig: Rig, incarnation: int) -> bool:
    """Whether the coordinator logged host_silent for that incarnation."""
    return any("host_silent" in line and f"incarnation={incarnation}" in line
               for line in rig.reclaimd_log.read_text().splitlines())


def logged(rig: Rig, kind: type) -> list[fmt.Entry]:
    with Device(rig.image) as device:
        return [entry for _, entry in FamfsLog(device).entries() if isinstance(entry, kind)]


# --- the cluster, and each test leaving it whole -------------------------------------------


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    cluster = Cluster(parent=tmp_path_factory.mktemp("faults"), size=SIZE, clients=2, serve_master=False)
    for host in cluster.hosts:
        host.add_settings("agent", AGENT_SETTINGS)
    cluster.master.add_settings("master", MASTER_SETTINGS)
    with cluster:
        made = Rig(cluster)
        try:
            made.start_coordinator()
            yield made
        finally:
            made.writer = None
            if made.coordinator is not None:
                stop_process(made.coordinator)


@pytest.fixture
def healed(rig: Rig) -> Iterator[Rig]:
    """The rig for one test; after it, whatever it killed restarted, every file removed, every
    deleted file reclaimed, every client converged, fsck clean."""
    yield rig
    for client in rig.clients:
        for process in (client.agent, client.mount):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
        if client.agent is None or client.agent.poll() is not None:
            client.stop_agent()
            client.start_agent()
        if not client.is_mounted():
            client.stop_mount()
            client.start_mount()
    if rig.coordinator is not None and (rig.coordinator.poll() is not None or rig.overrides):
        rig.kill_coordinator()
    if rig.coordinator is None:
        rig.start_coordinator()
    live = list(rig.namespace().files)
    if live:
        rig.remove(*live)
    try:
        wait_until(lambda: not rig.namespace().deleted, CONVERGE_S, "every deleted file reclaimed", interval=0.05)
    except HarnessError as err:
        raise AssertionError(f"{err}\n{rig.explain()}") from None
    rig.wait_converged("after the test")
    rig.fsck_clean()


# --- the tests ------------------------------------------------------------------------------


def test_a_deleted_file_held_open_or_mapped_is_never_reused_until_released(healed: Rig) -> None:
    """A deleted file open on one client and another mapped (famfs.open) on the other: the
    coordinator judges both and keeps both, a creat that needs their space says who pins it, and
    each is reclaimed only after its release, its units then given to a new file."""
    rig = healed
    one, two = rig.clients
    canaries, opened, mapped_file, handle, mapping = rig.held_pair("held", one, two)
    try:
        rig.remove(opened.relpath, mapped_file.relpath)
        rig.judged_and_kept(opened, canaries[0])
        rig.assert_kept(mapped_file)
        impatient = rig.config("impatient", reclaim_wait=0)
        refused = rig.master.famfsctl("--config", str(impatient), "creat", "--device", str(rig.image), "-s", "4m",
                                      "wants-space", check=False)
        assert refused.returncode == 1 and "8 MiB is held by deleted files" in refused.stderr, refused.stderr
        assert refused.stderr.count(" pins ") == 2, refused.stderr  # each client names what it pins
        reads(handle, opened)
        mapped_right(mapping, mapped_file)
    finally:
        os.close(handle)
    rig.wait_reclaimed(opened, "closed")
    new = rig.make("reused-open", 2)
    assert rig.reused_by_live(opened) == [new.relpath]
    serves(one, new)
    serves(two, new)
    rig.judged_and_kept(mapped_file, canaries[1])
    mapped_right(mapping, mapped_file)
    mapping.close()
    rig.wait_reclaimed(mapped_file, "unmapped")
    newer = rig.make("reused-mapped", 2)
    assert rig.reused_by_live(mapped_file) == [newer.relpath]
    serves(two, newer)


def test_kill_9_of_a_client_mount_during_reclaim(healed: Rig) -> None:
    """The mount's pins die with it: a handle through it is dead (ENOTCONN) and its file is
    reclaimed; a famfs.open mapping made through it maps the device itself, so it keeps its file
    pinned on its own until it is unmapped."""
    rig = healed
    one, two = rig.clients
    canaries, opened, mapped_file, handle, mapping = rig.held_pair("mount", two, two)
    try:
        rig.remove(opened.relpath, mapped_file.relpath)
        rig.judged_and_kept(opened, canaries[0])
        two.stop_mount(kill=True)
        assert read_fd(handle, opened) in (0, errno.ENOTCONN)  # 0: pages cached while it was served
        rig.wait_reclaimed(opened, "its mount killed")
        new = rig.make("mount-new", 2)
        assert rig.reused_by_live(opened) == [new.relpath]
        assert read_fd(handle, opened) in (0, errno.ENOTCONN)  # never the new file's bytes
        rig.judged_and_kept(mapped_file, canaries[1])
        mapped_right(mapping, mapped_file)
        two.start_mount()
        serves(two, new)
        serves(one, new)
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN from the dead mount's flush; the fd is gone all the same
            os.close(handle)
    mapping.close()
    rig.wait_reclaimed(mapped_file, "unmapped")


def test_kill_9_of_a_client_agent_during_reclaim(healed: Rig) -> None:
    """The agent killed while its host holds a deleted file open, and before it played another
    file's DELETE: its record stands still, the coordinator keeps both (a silent record covers only
    what it said last) and the mount stops serving by its own clock. A new agent (a new
    incarnation, the same slot) plays the DELETE: the file nobody holds is reclaimed once the new
    incarnation is admitted, the held one only once it is closed, and the old handle reads its own
    bytes again meanwhile."""
    rig = healed
    one, two = rig.clients
    unplayed, opened = rig.make("agent-unplayed", 2), rig.make("agent-open", 2)  # held last: the pin floor
    rig.fill()
    handle = open_on(one, opened)
    try:
        before = incarnation(one)
        assert one.agent is not None
        one.agent.send_signal(signal.SIGSTOP)
        rig.remove(unplayed.relpath, opened.relpath)
        one.stop_agent(kill=True)
        wait_until(lambda: silent_said(rig, before), CONVERGE_S, "the coordinator to find the killed agent silent")
        rig.assert_kept(unplayed)
        rig.assert_kept(opened)
        assert read_fd(handle, opened) in (0, errno.EIO)  # 0: its cached pages; EIO: self-fenced
        one.start_agent()
        rejoined(rig, one, before)
        rig.wait_reclaimed(unplayed, "the new agent played its DELETE")
        new = rig.make("agent-new", 2)
        assert rig.reused_by_live(unplayed) == [new.relpath]
        serves(one, new)
        serves(two, new)
        rig.assert_kept(opened)
        reads(handle, opened)  # served again, by the new incarnation
    finally:
        os.close(handle)
    rig.wait_reclaimed(opened, "closed")


def test_a_client_stopped_past_its_lease_is_fenced_and_never_serves_reused_memory(healed: Rig) -> None:
    """A client (agent and mount) SIGSTOPped while it holds a deleted file open, a read of memory
    not in its page cache waiting in the kernel. With auto_fence the coordinator fences it after a
    lease, reclaims the file and a new file takes its units. SIGCONT (the agent first, the
    adversarial order): the waiting read and every read of the old handle answer an error, never
    the new file's bytes; the host rejoins as a new incarnation and serves the new file."""
    rig = healed
    one, two = rig.clients
    rig.kill_coordinator()
    rig.start_coordinator(auto_fence=True)
    opened = rig.make("stopped-open", 2)
    rig.fill()
    far = 3 * AU // 2  # past what the first page's read and its read-ahead cached
    handle = open_handle(one, opened)
    try:
        wait_until(lambda: read_fd(handle, opened, 0, 4096) == 0, CONVERGE_S, "the first page read")
        before = incarnation(one)
        stopped = [process for process in (one.agent, one.mount) if process is not None]
        for process in stopped:
            process.send_signal(signal.SIGSTOP)
        try:
            rig.remove(opened.relpath)
            waiting = Background(lambda: read_range(handle, opened, far, 1 << 20))
            wait_until(lambda: any(entry.incarnation == before for entry in logged(rig, fmt.FenceEntry)),
                       CONVERGE_S, "the stopped client fenced")
            rig.wait_reclaimed(opened, "its host fenced")
            new = rig.make("stopped-new", 2)
            assert rig.reused_by_live(opened) == [new.relpath]
        finally:
            for process in stopped:
                process.send_signal(signal.SIGCONT)
        assert waiting.result() in HELD_ERRNOS  # an error: the bytes there are the new file's now
        rejoined(rig, one, before)
        assert read_fd(handle, opened, far, 1 << 20) in (errno.ESTALE, errno.EIO)
        assert read_path(one, opened) == errno.ENOENT
        serves(one, new)
        serves(two, new)
    finally:
        os.close(handle)


def test_kill_9_of_the_coordinator_during_reclaim(healed: Rig) -> None:
    """The coordinator killed at random instants while it logs RECLAIMs of files being removed one
    by one: nothing half-done (fsck clean after each kill), a new coordinator waits a lease and
    goes on, every file reclaimed once, and a file a client holds open never."""
    rig = healed
    one, _ = rig.clients
    batches = [[rig.make(f"coord-{batch}-{n}") for n in range(5)] for batch in range(2)]
    held = rig.make("coord-held")  # made last: the pin floor holds nothing made before it
    rig.fill()
    rng = random.Random(19)
    handle = open_on(one, held)
    try:
        rig.remove(held.relpath)
        for batch in batches:
            removing = threading.Thread(target=lambda batch=batch: [rig.remove(made.relpath) for made in batch])
            removing.start()
            rig.wait_reclaimed(batch[0], "the first of the batch")
            threading.Event().wait(rng.uniform(0, 0.2))
            rig.kill_coordinator()
            removing.join(CONVERGE_S)
            rig.fsck_clean()
            rig.start_coordinator()
        for made in (made for batch in batches for made in batch):
            rig.wait_reclaimed(made, "after the kills")
        rig.assert_kept(held)
        reads(handle, held)
        reclaimed = [pair[0] for entry in logged(rig, fmt.ReclaimEntry) for pair in entry.targets]  # type: ignore[attr-defined]
        assert len(reclaimed) == len(set(reclaimed))
    finally:
        os.close(handle)
    rig.wait_reclaimed(held, "closed")


CHURN = """
import sys
import famfs
from demo import churn_data
master = famfs.Master(sys.argv[1], system_uuid_file=sys.argv[2])
live = []
for n in range(int(sys.argv[3]), 1 << 30):
    new = master.create(f"churn-{n}", 1 << 21)
    churn_data.fill(new.buffer, f"churn-{n}", n)
    new.commit()
    live.append(f"churn-{n}")
    if len(live) > 3:
        master.remove(live.pop(0))
"""


def test_kill_9_of_the_masters_writer_during_reclaim(healed: Rig) -> None:
    """famfsctl creat waiting for space a client still pins, killed; a famfs.Master process that
    creates, fills and removes files while the coordinator reclaims what it removed, killed at a
    random instant: nothing half-logged (fsck clean), every file it committed has its bytes on
    both clients, a file it had not committed takes no space, and reclaim goes on."""
    rig = healed
    one, two = rig.clients
    held = rig.make("writer-held", 2)
    rig.fill()
    handle = open_on(one, held)
    try:
        rig.remove(held.relpath)
        waiting = rig.master.spawn([tool("famfsctl"), "creat", "--device", str(rig.image), "-s", "4m", "writer-waits"],
                                   rig.master.home / "creat.log")
        threading.Event().wait(1.0)  # famfsctl's start, then its wait for the coordinator (reclaim_wait)
        assert waiting.poll() is None, (rig.master.home / "creat.log").read_text()
        waiting.kill()
        waiting.wait()
        rig.fsck_clean()
        assert "writer-waits" not in rig.namespace().files
        rig.assert_kept(held)
        reads(handle, held)
    finally:
        os.close(handle)
    rig.wait_reclaimed(held, "closed")
    rig.cluster.ctl("creat", "-s", "4m", "writer-after")  # the space the killed creat waited for
    assert rig.reused_by_live(held) == ["writer-after"]

    rig.remove(*[relpath for relpath in rig.namespace().files if relpath.startswith("fill-")][:6])
    reclaims = len(logged(rig, fmt.ReclaimEntry))
    churn = rig.master.spawn([sys.executable, "-c", CHURN, str(rig.image), str(rig.master.uuid_file), "1"],
                             rig.master.home / "churn.log", extra_env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    wait_until(lambda: len(logged(rig, fmt.ReclaimEntry)) >= reclaims + 3 or churn.poll() is not None, CONVERGE_S,
               "the churn's removed files reclaimed")
    threading.Event().wait(random.Random(7).uniform(0, 0.5))
    churn.kill()
    assert churn.wait() == -signal.SIGKILL, (rig.master.home / "churn.log").read_text()
    rig.fsck_clean()
    churned = [Made(relpath, int(relpath.split("-")[1]), entry.all_extents())
               for relpath, (_, entry) in rig.namespace().files.items() if relpath.startswith("churn-")]
    assert churned
    for made in churned:
        serves(one, made)
        serves(two, made)


def roll_forward(rig: Rig) -> None:
    """A master session, which finishes a committed compaction before anything else."""
    with writer.session(str(rig.image), rig.master.uuid_file):
        pass


def compact_killing_the_master(rig: Rig, rng: random.Random) -> None:
    """`famfsctl compact` killed at random instants until one got past its commit; a master
    session finishes it."""
    epoch, files = rig.epoch(), set(rig.namespace().files)
    for _ in range(4):
        compacting = rig.master.spawn([tool("famfsctl"), "compact", str(rig.image)], rig.master.home / "compact.log")
        threading.Event().wait(rng.uniform(0.1, 0.8))  # the interpreter's start is most of it
        compacting.kill()
        compacting.wait()
        assert set(rig.namespace().files) == files  # the old namespace or the new one: the same files
        if rig.epoch() > epoch:
            break
    roll_forward(rig)
    if rig.epoch() == epoch:  # every kill came before the commit
        rig.cluster.ctl("compact")


def compact_killing_an_agent(rig: Rig, rng: random.Random) -> None:
    """The compaction done behind a stopped agent, which is killed at a random instant of its move
    to the new log, then started again."""
    one = rig.clients[0]
    assert one.agent is not None
    before = incarnation(one)
    one.agent.send_signal(signal.SIGSTOP)
    try:
        rig.cluster.ctl("compact")
    finally:
        one.agent.send_signal(signal.SIGCONT)
    threading.Event().wait(rng.uniform(0, 0.3))
    one.stop_agent(kill=True)
    one.start_agent()
    rejoined(rig, one, before)


def compact_killing_a_mount(rig: Rig, rng: random.Random) -> None:
    two = rig.clients[1]
    two.stop_mount(kill=True)
    rig.cluster.ctl("compact")
    two.start_mount()


def compact_killing_the_coordinator(rig: Rig, rng: random.Random) -> None:
    """The coordinator compacts a log running low at its first poll: killed at random instants
    until one got past the commit; a master session finishes it."""
    epoch = rig.epoch()
    with writer.session(str(rig.image), rig.master.uuid_file) as current:  # history: the log runs low
        owner = writer.Ownership(0o755, 0, 0)
        while current.log.header().next_index < fmt.log_capacity(fmt.DEFAULT_LOG_LEN) // 8:
            current.mkdir("compact-history", owner)
            current.rmdir("compact-history")
    rig.kill_coordinator()
    for _ in range(4):
        rig.start_coordinator(compact_below=0.9)
        threading.Event().wait(rng.uniform(0, 0.3))
        rig.kill_coordinator()
        if rig.epoch() > epoch:
            break
    roll_forward(rig)
    if rig.epoch() == epoch:
        rig.start_coordinator(compact_below=0.9)
        wait_until(lambda: rig.epoch() > epoch, CONVERGE_S, "the coordinator's compaction")
        rig.kill_coordinator()
    rig.start_coordinator()  # the module's own, for the reclaims after


COMPACTION_FAULTS = {"master": compact_killing_the_master, "agent": compact_killing_an_agent,
                     "mount": compact_killing_a_mount, "coordinator": compact_killing_the_coordinator}


@pytest.mark.parametrize("killed", list(COMPACTION_FAULTS))
def test_kill_9_during_compaction(healed: Rig, killed: str) -> None:
    """A compaction with a client holding a live file open and a deleted one (carried into the new
    log as a HOLD), and the other mapping the live one, while the master's compaction, a client's
    agent, a client's mount or the coordinator compacting on its own is killed: every host moves
    to the one new log, no handle or mapping reads a wrong byte, the held file stays held until it
    is closed and is then reclaimed (a RECLAIM naming its HOLD) and its units reused."""
    rig = healed
    one, two = rig.clients
    gone = [rig.make(f"compact-gone-{n}") for n in range(4)]  # history the compaction drops
    kept, held = rig.make("compact-kept", 2), rig.make("compact-held", 2)
    rig.fill()
    kept_handle, held_handle = open_on(one, kept), open_on(one, held)
    kept_map = map_on(two, kept)
    try:
        rig.remove(*(made.relpath for made in gone), held.relpath)
        for made in gone:
            rig.wait_reclaimed(made, "before the compaction")
        rig.fill(leave=1)  # the compaction's staging copy needs a unit
        epoch = rig.epoch()
        COMPACTION_FAULTS[killed](rig, random.Random(killed))
        assert rig.epoch() == epoch + 1
        with Device(rig.image) as device:
            assert read_record(device.map).state is CompactionState.DONE
        rig.wait_converged("after the compaction")
        assert [entry.file.relpath for entry in logged(rig, fmt.HoldEntry)] == [held.relpath]  # type: ignore[attr-defined]
        rig.assert_kept(held)
        reads(kept_handle, kept)
        reads(held_handle, held)
        mapped_right(kept_map, kept)
        serves(one, kept)
        serves(two, kept)
    finally:
        os.close(kept_handle)
        os.close(held_handle)
    rig.wait_reclaimed(held, "closed after the compaction")
    new = rig.make("compact-new", 2)
    assert rig.reused_by_live(held) == [new.relpath]
    serves(one, new)
    serves(two, new)
    mapped_right(kept_map, kept)
    kept_map.close()
