"""The reclaim coordinator: when a deleted file's units may be given to another file
(docs/reclaim.md, "The coordinator"; the argument that it is safe is there too).

`decide()` is the whole verdict, a pure function of the replayed log (which files are deleted
and by which DELETE, which hosts are fenced), one read of the host table, what this coordinator
has seen of each slot and when (`Observations`, on its own monotonic clock) and the settings.
`Coordinator` is the thin loop around it: every poll it plays the log's new entries, then reads
the table, then decides, then appends the verdict's FENCEs and RECLAIMs through the writer, under
the device lock (the rule book checks them as every append). The log is read *before* the
table: a DELETE in the model was logged before the table read, so a host missing from that
read joins after it and finds the DELETE in its first play.

One coordinator per host at a time: an open-file-description lock on one byte of the device
(`famfs.hosts.COORDINATOR_LOCK_OFFSET`), independent of the writers' flock on the same device.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar


from famfs import format as fmt
from famfs import hosts, logsetup, rules
from famfs.compaction import RECORD_SPAN, LogLocation, read_record
from famfs.config import MasterSettings
from famfs.device import Device
from famfs.famfslog import FamfsLog, LogFullError
from famfs.hosts import DamagedSlot, HostRecord, HostState
from famfs.identity import require_master
from famfs.master import writer
from famfs.master.compact import CompactionError
from famfs.units import format_size

log = logsetup.get_logger("famfs-reclaimd")

START_READS = 5  # reads of a log that moved while it was read, at start, before giving up
MAX_FILES_PER_POLL = 32 * fmt.RECLAIM_MAX_TARGETS  # the device lock is held for at most 32 appends a poll
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
NS = 1e9

T = TypeVar("T")


class CoordinatorError(Exception):
    """The coordinator cannot run (another one holds the lock, the log is not ours any more)."""


# --- what the coordinator has seen of each slot ----------------------------------------------


@dataclass(slots=True)
class Seen:
    """One slot as this coordinator has watched it; times are its own monotonic clock."""

    identity: tuple[uuid.UUID, int] | None  # None: a damaged slot
    first_seen: float  # this identity (or this damage) first read
    heartbeat: int = 0
    heartbeat_changed: float = 0.0  # the heartbeat last read different (first_seen at first)
    left_since: float | None = None  # first read with state left
    damage_crc: int | None = None  # a damaged slot: the CRC-32 of its 256 bytes as read
    last: HostRecord | None = None  # the record as last read
    vanished_at: float | None = None  # the slot read empty since then (a record erased)


@dataclass(slots=True)
class Observations:
    """Per slot, the identity, when it was first seen and when its heartbeat last moved."""

    started: float  # the coordinator knows nothing before this: no verdict for one lease
    slots: dict[int, Seen] = field(default_factory=dict)

    def observe(self, table: Iterable[HostRecord | DamagedSlot], now: float,
                damage_crcs: Mapping[int, int] | None = None) -> None:
        """Fold one read of the table in. A slot that was occupied and reads empty keeps a
        tombstone (`vanished_at`): an erased record's host may still serve until its lease ends."""
        present: set[int] = set()
        for found in table:
            present.add(found.slot)
            seen = self.slots.get(found.slot)
            if isinstance(found, DamagedSlot):
                crc = (damage_crcs or {}).get(found.slot, 0)
                if seen is None or seen.identity is not None or seen.damage_crc != crc or seen.vanished_at is not None:
                    self.slots[found.slot] = Seen(None, now, heartbeat_changed=now, damage_crc=crc)
                continue
            if seen is None or seen.identity != found.identity or seen.vanished_at is not None:
                seen = self.slots[found.slot] = Seen(found.identity, now, found.heartbeat, now)
            elif seen.heartbeat != found.heartbeat:
                seen.heartbeat, seen.heartbeat_changed = found.heartbeat, now
            seen.last = found
            if found.state is HostState.LEFT:
                seen.left_since = now if seen.left_since is None else seen.left_since
            else:
                seen.left_since = None
        for slot in set(self.slots) - present:
            gone = self.slots[slot]
            if gone.vanished_at is None:
                gone.vanished_at = now


# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    lease_s: float
    auto_fence: bool = False
    log_epoch: int = 0  # the log's epoch (0 until compaction exists)

    @classmethod
    def of(cls, settings: MasterSettings) -> Policy:
        return cls(lease_s=settings.host_lease, auto_fence=settings.auto_fence)

    def lease(self, record: HostRecord) -> float:
        """max(L, 2 x the record's serve window): the host's mount stops serving by half of it."""
        return max(self.lease_s, 2 * record.serve_window_ns / NS)


@dataclass(frozen=True, slots=True)
class LogView:
    """What the verdict reads of the replayed log."""

    deletions: Mapping[int, int]  # FILE index -> DELETE index, of every deleted file not yet reclaimed
    fenced: Mapping[tuple[uuid.UUID, int], int]  # fenced incarnations
    fenced_damage: Mapping[tuple[int, int], int]  # (slot, CRC of its bytes) fenced as damaged
    next_index: int = 0

    @classmethod
    def of(cls, namespace: rules.Namespace, next_index: int) -> LogView:
        return cls(namespace.deletions, namespace.fenced, namespace.fenced_damage, next_index)


@dataclass(frozen=True, slots=True)
class Hold:
    """Why some deleted files wait: `who` (a host or a slot) and `why`; `files` the FILE
    indexes it holds (every one, for a reason that holds them all)."""

    who: str
    why: str
    files: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    reclaim: list[tuple[int, int]]  # (FILE, DELETE) pairs every host is past
    fence: list[HostRecord]  # silent for a lease, auto_fence on, self-fencing
    silent: list[HostRecord]
    admitted: list[HostRecord]  # every record trusted now
    holds: list[Hold]


def host_name(record: HostRecord) -> str:
    return f"{record.hostname or '?'} ({record.system_uuid}, slot {record.slot})"


def _ignored(record: HostRecord, seen: Seen, view: LogView, now: float, policy: Policy) -> bool:
    """Fenced, or seen left for a lease (its mount has self-fenced since)."""
    if record.identity in view.fenced:
        return True
    return seen.left_since is not None and now - seen.left_since >= policy.lease(record)


def _gone_for_good(seen: Seen, view: LogView, now: float, policy: Policy) -> bool:
    """An erased slot no longer holds anything: its record was fenced or long-left when erased,
    or a lease has passed since (the host's mount, finding its slot not its own, stopped serving
    by then: docs/reclaim.md, case 3)."""
    assert seen.vanished_at is not None
    record = seen.last
    if record is None:  # a damaged slot erased: nothing trusted it; its lease is the base one
        return now - seen.vanished_at >= policy.lease_s
    if _ignored(record, seen, view, seen.vanished_at, policy):
        return True
    return now - seen.vanished_at >= policy.lease(record)


def held(record: HostRecord, deletions: Mapping[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The deleted files (FILE indexes) a host holds, as (behind, pinned): those whose DELETE it
    has not applied yet, and of the others those at or above its pin floor (open or mapped there)."""
    behind = tuple(i for i, d in deletions.items() if d >= record.applied)
    pinned = tuple(i for i, d in deletions.items() if d < record.applied and i >= record.pin_floor)
    return behind, pinned


def decide(view: LogView, table: Sequence[HostRecord | DamagedSlot], observations: Observations, now: float,
           policy: Policy) -> Verdict:
    """The verdict of one poll (docs/reclaim.md, "The coordinator"). `table` is the read folded
    into `observations` at `now`; `view` was replayed before that read."""
    everything = tuple(sorted(view.deletions))
    holds: list[Hold] = []
    silent: list[HostRecord] = []
    fence: list[HostRecord] = []
    admitted: list[HostRecord] = []
    blocked: set[int] = set()
    if now - observations.started < policy.lease_s:
        holds.append(Hold("the coordinator", f"started {now - observations.started:.1f} s ago: it waits one lease "
                          f"({policy.lease_s:g} s) before its first verdict", everything))
    for found in table:
        seen = observations.slots[found.slot]
        if isinstance(found, DamagedSlot):
            if (found.slot, seen.damage_crc) not in view.fenced_damage:
                holds.append(Hold(f"slot {found.slot}", f"damaged ({found.reason}): fence it with famfsctl host fence "
                                  f"--slot {found.slot} if no host uses it", everything))
            continue
        if _ignored(found, seen, view, now, policy):
            continue
        lease = policy.lease(found)
        who = host_name(found)
        if now - seen.first_seen < lease:
            holds.append(Hold(who, f"not yet admitted ({now - seen.first_seen:.1f} of {lease:g} s seen)", everything))
            continue
        admitted.append(found)
        if found.state is HostState.ACTIVE and now - seen.heartbeat_changed >= lease:
            silent.append(found)
            if policy.auto_fence and found.serve_window_ns > 0:
                fence.append(found)
        if found.log_epoch != policy.log_epoch:
            holds.append(Hold(who, f"follows log epoch {found.log_epoch}, not {policy.log_epoch}", everything))
            continue
        behind, pinned = held(found, view.deletions)
        if behind:
            holds.append(Hold(who, f"has applied {found.applied} entries, not yet the DELETE of "
                              f"{len(behind)} file{'s' if len(behind) != 1 else ''}", behind))
        if pinned:
            holds.append(Hold(who, f"pins deleted files (pin floor: entry {found.pin_floor})", pinned))
    for slot, seen in observations.slots.items():
        if seen.vanished_at is not None and not _gone_for_good(seen, view, now, policy):
            holds.append(Hold(f"slot {slot}", f"its record was erased {now - seen.vanished_at:.1f} s ago: its host may "
                              "serve until its lease ends", everything))
    for hold in holds:
        blocked.update(hold.files)
    reclaim = [(i, view.deletions[i]) for i in everything if i not in blocked]
    return Verdict(reclaim=reclaim, fence=fence, silent=silent, admitted=admitted, holds=holds)


# --- the host-local lock ----------------------------------------------------------------------


def take_lock(fd: int, device_path: str) -> None:
    """The coordinator's lock on this host (famfs.hosts: released when `fd` is closed, or the
    process dies)."""
    if not hosts.take_coordinator_lock(fd):
        raise CoordinatorError(f"{device_path}: another reclaim coordinator runs on this host")


# --- the loop ---------------------------------------------------------------------------------


def damage_crcs(view: bytes | memoryview, table: Iterable[HostRecord | DamagedSlot]) -> dict[int, int]:
    """The CRC-32 of each damaged slot's 256 bytes: a FENCE of a damaged slot names the damage
    it saw (its heartbeat field), so other bytes in that slot later are a new damage."""
    return {found.slot: fmt.crc32(bytes(view[hosts.slot_offset(found.slot):
                                             hosts.slot_offset(found.slot) + fmt.HOST_RECORD_SIZE]))
            for found in table if isinstance(found, DamagedSlot)}


@dataclass(slots=True)
class Figures:
    """The coordinator's counters (the metrics collector reads them)."""

    reclaimable_bytes: int = 0
    reclaimed_bytes: int = 0
    reclaimed_files: int = 0
    fences: int = 0
    compactions: int = 0
    compaction_seconds: float = 0.0  # all of them, summed
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    hosts: list[HostRecord] = field(default_factory=list)
    next_index: int = 0

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        for n, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[n] += 1
                return
        self.latency_buckets[-1] += 1


class Coordinator:
    """The loop of docs/reclaim.md around decide(). run() until `stop` is set."""

    def __init__(self, device_path: str, uuid_file: os.PathLike[str] | str, settings: MasterSettings, *,
                 clock: Callable[[], float] = time.monotonic, stop: threading.Event | None = None) -> None:
        self.device_path = device_path
        self.uuid_file = uuid_file
        self.settings = settings
        self.policy = Policy.of(settings)
        self.clock = clock
        self.stop = stop or threading.Event()
        self.figures = Figures()
        self.device = Device(device_path, writable=True)
        try:
            self.log = FamfsLog(self.device)
            require_master(self.log.superblock, self.uuid_file)
            take_lock(self.device.fd, device_path)
        except BaseException:
            self.device.close()
            raise
        self.observations = Observations(started=clock())
        self.policy = replace(self.policy, log_epoch=self.log.location.epoch)
        self.namespace = rules.Namespace.empty(self.log.superblock)
        self.played = 0
        self.stale = True  # the model is not (yet) a whole play of the log where it is now
        self.deletes_seen: dict[int, float] = {}
        self.announced: set[tuple[int, tuple[uuid.UUID, int]]] = set()  # (slot, identity) admitted and said so
        self.silent_said: set[tuple[uuid.UUID, int, int]] = set()  # (host, incarnation, heartbeat) said silent
        try:
            if not any(self._replaced() for _ in range(START_READS)):
                raise CoordinatorError(f"{device_path}: the log moved (compactions) at each of {START_READS} "
                                       "reads; start the coordinator again")
        except BaseException:
            self.device.close()
            raise
        log.info("reclaimd_started", device=device_path, lease_s=self.policy.lease_s, auto_fence=self.policy.auto_fence,
                 poll_s=settings.reclaim_poll, deleted_files=len(self.namespace.deleted))

    def close(self) -> None:
        self.device.close()

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(self.settings.reclaim_poll)
        log.info("reclaimd_stopped", device=self.device_path, reclaimed_files=self.figures.reclaimed_files)

    def _replay(self) -> bool:
        """Play the log's new entries into the model; all of it again if it is not the log we
        played (another file system made on the device, or a compaction). The coordinator reads
        without the device lock, so a compaction may commit in the middle of a read: the log's
        location is read before and after, and a read it moved under is thrown away (the model
        is played whole from the new log, at once or at the next poll). False: no model of the
        log as it is now, so no verdict this poll."""
        sb = fmt.Superblock.unpack(self.device.read(0, fmt.SUPERBLOCK.size))
        if sb.fs_uuid != self.log.superblock.fs_uuid:
            raise CoordinatorError(f"{self.device_path}: another file system was made on the device "
                                   f"(uuid {sb.fs_uuid}); start the coordinator again")
        where = self._location()
        if self.stale or where != self.log.location:
            return self._replaced()
        try:
            count = self.log.header().next_index
            if count > self.played:
                self.stale = True  # played into in place: whole again only once the read is known good
                self.namespace = writer.load(self.log, self.namespace, self.played, count)
        except (fmt.FormatError, writer.MasterError):
            if self._location() == where:
                raise
            return self._replaced()  # a cleared header, a slot being copied over: the log moved
        if self._location() != where:
            return self._replaced()
        if count < self.played:
            raise CoordinatorError(f"{self.device_path}: the log shrank from {self.played} to {count} entries")
        self.played, self.stale = max(count, self.played), False
        return True

    def _location(self) -> LogLocation | None:
        """Where the log is now; None while the compaction record reads torn (a store in progress)."""
        try:
            return LogLocation.of(read_record(self.device.fresh(*RECORD_SPAN)), self.log.superblock, self.device.size)
        except fmt.FormatError:
            return None

    def _replaced(self) -> bool:
        """The model played whole from the log where it is now (a compaction replaced it); False
        if the log moved again while it was read (read again at the next poll)."""
        where = self._location()
        if where is None:
            return False
        try:
            famfs_log = FamfsLog(self.device)
            count = famfs_log.header().next_index  # the count first: exactly that many are played
            namespace = writer.load(famfs_log, stop=count)
        except (fmt.FormatError, writer.MasterError):
            if self._location() == where:
                raise
            return False
        if famfs_log.location != where or self._location() != where:
            return False
        self._adopt(famfs_log, namespace, count)
        return True

    def _adopt(self, famfs_log: FamfsLog, namespace: rules.Namespace, played: int) -> None:
        """A compaction replaced the log (docs/reclaim.md): its indexes are new, so the model is
        the new log's, and a record counts only once its host follows the new epoch. The
        latency of files deleted before it is counted from now."""
        moved = famfs_log.location.epoch != self.policy.log_epoch
        self.log, self.namespace, self.played, self.stale = famfs_log, namespace, played, False
        self.policy = replace(self.policy, log_epoch=self.log.location.epoch)
        if moved:
            self.deletes_seen.clear()
            log.info("log_epoch_changed", device=self.device_path, epoch=self.policy.log_epoch, entries=self.played)

    def _session(self) -> writer.Session:
        """A writer Session on this coordinator's model (replayed anew if the log moved: the
        caller holds the device lock)."""
        seal = fmt.entry_seal(self.log.raw_entry(self.played - 1)) if self.played else None
        known = writer.Replayed(self.namespace, self.log.superblock.fs_uuid, self.log.location.epoch, self.played, seal)
        return writer.Session(self.log, known=known)

    def poll(self) -> Verdict:
        """One round: play the log, read the table, decide, append what was decided."""
        if not self._replay():
            everything = tuple(sorted(self.namespace.deletions))
            return Verdict([], [], [], [], [Hold("the log", "moved by a compaction while it was read", everything)])
        now = self.clock()
        for file_index in self.namespace.deletions:
            self.deletes_seen.setdefault(file_index, now)
        table = list(hosts.read_table(self.device.fresh(*hosts.TABLE_SPAN)))
        self.observations.observe(table, now, damage_crcs(self.device.map, table))
        verdict = decide(LogView.of(self.namespace, self.played), table, self.observations, now, self.policy)
        self._announce(verdict)
        if verdict.fence:
            self._append(lambda session: [self._fence(session, record) for record in verdict.fence])
        elif verdict.reclaim:
            self._append(lambda session: self._reclaim(session, verdict.reclaim[:MAX_FILES_PER_POLL], now))
        if self._log_low():
            self._append(self._compact)
        self._figures(table)
        return verdict

    def _log_low(self) -> bool:
        """Free log slots under `compact_below` of the log, and a compaction would give back a
        good part of it (else it would run at every poll for nothing: a live namespace that
        itself fills the log needs a bigger log, said by the writer's "log full")."""
        if self.settings.compact_below <= 0:
            return False
        header = self.log.header()
        if header.slots - header.next_index >= self.settings.compact_below * header.slots:
            return False
        namespace = self.namespace
        kept = len(namespace.dirs) - 1 + len(namespace.files) + len(namespace.deleted) + len(namespace.daxdevs)
        return kept + len(namespace.fenced) < header.next_index - max(64, header.slots // 20)

    def _compact(self, session: writer.Session) -> None:
        done = session.compact()
        self.figures.compactions += 1
        self.figures.compaction_seconds += done.seconds
        self._adopt(session.log, session.namespace, session.log.header().next_index)  # replayed under the lock

    def _announce(self, verdict: Verdict) -> None:
        for record in verdict.admitted:
            key = (record.slot, record.identity)
            if key not in self.announced:
                self.announced.add(key)
                log.info("host_admitted", slot=record.slot, host=str(record.system_uuid), hostname=record.hostname,
                         incarnation=record.incarnation, applied=record.applied)
        for record in verdict.silent:
            said = (record.system_uuid, record.incarnation, record.heartbeat)
            if said not in self.silent_said:
                self.silent_said.add(said)
                log.warning("host_silent", slot=record.slot, host=str(record.system_uuid), hostname=record.hostname,
                            incarnation=record.incarnation, heartbeat=record.heartbeat, applied=record.applied,
                            serve_window_s=record.serve_window_ns / NS,
                            action="fence" if record in verdict.fence else
                            ("never fenced automatically: it does not self-fence (serve window 0)"
                             if record.serve_window_ns == 0 else "wait (auto_fence is off: famfsctl host fence)"))

    def _append(self, work: Callable[[writer.Session], object]) -> None:
        with self.device.exclusive():
            if self._location() != self.log.location:
                return  # a compaction since this poll's read: the verdict named the old log's indexes
            session = self._session()
            try:
                work(session)
            except (writer.MasterError, LogFullError, CompactionError) as err:
                log.error("append_refused", device=self.device_path, error=str(err))
            finally:
                self.namespace = session.namespace
                self.played = self.log.header().next_index

    def _fence(self, session: writer.Session, record: HostRecord) -> None:
        entry = fmt.FenceEntry(system_uuid=record.system_uuid, incarnation=record.incarnation, slot=record.slot,
                               reason=fmt.FenceReason.LEASE_EXPIRED, heartbeat=record.heartbeat,
                               applied=record.applied)
        if session.fence(entry) is not None:
            self.figures.fences += 1

    def _reclaim(self, session: writer.Session, pairs: list[tuple[int, int]], decided: float) -> None:
        freed = session.reclaimed_bytes
        session.reclaim(pairs)
        done = self.clock()
        self.figures.reclaimed_bytes += session.reclaimed_bytes - freed
        for file_index, _ in pairs:
            self.figures.reclaimed_files += 1
            self.figures.observe_latency(done - self.deletes_seen.pop(file_index, decided))

    def _figures(self, table: Sequence[HostRecord | DamagedSlot]) -> None:
        self.figures.reclaimable_bytes = sum(entry.capacity() for entry in self.namespace.deleted.values())
        self.figures.hosts = [found for found in table if isinstance(found, HostRecord)]
        self.figures.next_index = self.played


# --- waiting for space, and saying who holds it -----------------------------------------------


def explain(device_path: str, err: writer.SpaceHeld) -> str:
    """Which hosts hold the deleted files' space, from one read of the host table (no timing:
    that is the coordinator's), and whether a coordinator runs here at all."""
    deletions = {i: d for i, d, _ in err.deletions}
    sizes = {i: size for i, _, size in err.deletions}
    lines = [f"{format_size(err.held)} is held by deleted files, {format_size(err.free)} free, "
             f"{format_size(err.needed)} needed"]
    with Device(device_path) as device:
        running = hosts.coordinator_running(device.fd)
        table = list(hosts.read_table(device.fresh(*hosts.TABLE_SPAN)))
    for found in table:
        if isinstance(found, DamagedSlot):
            lines.append(f"slot {found.slot} is damaged ({found.reason}): it holds every deleted file until "
                         f"fenced (famfsctl host fence --slot {found.slot})")
            continue
        if found.state is HostState.LEFT:
            continue
        behind, pinned = held(found, deletions)
        if behind:
            lines.append(f"{host_name(found)} has not applied the DELETE of {len(behind)} of them "
                         f"({format_size(sum(sizes[i] for i in behind))}; applied {found.applied} entries)")
        if pinned:
            lines.append(f"{host_name(found)} pins {len(pinned)} of them ({format_size(sum(sizes[i] for i in pinned))}: "
                         f"a file open or mapped there)")
    if not running:
        lines.append("no reclaim coordinator runs on this host: start one (famfsctl reclaimd DEVICE, or its "
                     "systemd unit famfs-reclaimd.service)")
    return "\n".join(lines)


def wait_for_space(device_path: str, attempt: Callable[[], T], wait_s: float, poll_s: float = 0.2, *,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> T:
    """attempt() (which must hold the device lock only inside itself), again while it finds the
    space held by deleted files, a coordinator runs and `wait_s` has not passed; then the
    refusal, saying who holds the space."""
    deadline = clock() + wait_s
    waited = False
    while True:
        try:
            return attempt()
        except writer.SpaceHeld as err:
            with Device(device_path) as device:
                running = hosts.coordinator_running(device.fd)
            if not (err.may_fit and running and clock() < deadline):
                note = f" (waited {wait_s:g} s for the reclaim coordinator)" if waited else ""
                raise writer.MasterError(f"{err}{note}\n{explain(device_path, err)}", err) from None
            if not waited:
                log.info("waiting_for_reclaim", device=device_path, needed=err.needed, free=err.free, held=err.held,
                         wait_s=wait_s)
            waited = True
            sleep(poll_s)
