"""The replay loop: play the log into the shadow tree once, or follow it live (docs/agent.md).

The cursor (file-system UUID, index, seqnum and CRC of the last entry dealt with) lives in
`<shadow>/.agent/state.json`, replaced atomically once per batch (a first play into an empty tree
builds the tree in staging/ and saves the cursor once, when the tree has moved in). Entries past
the cursor may already be in the tree after a kill; ShadowTree applies them idempotently, and a
run of DELETEs is saved as pending with the cursor before it, then unlinked, so a restart knows
which unlinks may have happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import structlog

from agent import borndead
from agent.deleted import DeletedFiles, units_of
from agent.hostrecord import Membership, RecordLost
from agent.metrics import AgentStats
from agent.shadow_writer import Rejected, ShadowError, ShadowTree
from agent.wakeup import ImageWriteWatch, Waiter
from famfs import format as fmt
from famfs import hosts, madedirs, pins, service
from famfs.compaction import RECORD_SPAN, LogLocation, read_record
from famfs.config import AgentSettings
from famfs.device import Device, DeviceError
from famfs.famfslog import FamfsLog
from famfs.identity import HostIdentity, Role, system_uuid
from famfs.progress import Progress
from famfs.shadowdir import STALE_KEPT, STATE_FILE, AgentState, boot_id, image_identity, tree_problem

log = structlog.get_logger("famfs-agent")

PROGRESS_MIN_ENTRIES = 2000  # shorter replays finish before progress is worth showing
INFLIGHT_FIRST_WAIT_S = 0.0001
RENEW_CHECK_MASK = 0xFF  # a batch looks whether a renewal is due every 256 entries (a clock read)
DEVICE_RETRY_S = 1.0  # how often a follower re-opens a device that holds no valid famfs
DEVICE_RESCAN_S = 2.0  # how often a follower looks again for added devices not found (docs/devices.md)
# How often a follower checks its tree against the cursor (and its image path against the file it
# holds): a stat and a listing per directory, ~80 ms per 100,000 files (measured on tmpfs). The
# pause after a check is at least TREE_CHECK_COST times its duration: at most ~5% of a core.
TREE_CHECK_S = 2.0
TREE_CHECK_COST = 20

EXIT_OK = 0
EXIT_REJECTED = 1  # one-shot: some entries rejected, or a corrupt entry stopped the play
EXIT_UNUSABLE = 2  # the device or the shadow directory cannot be used


class Fenced(Exception):
    """A FENCE named one of the incarnations that served this tree (docs/reclaim.md, step 5)."""


class Follower:
    """One famfs-agent run: a device, a shadow directory, once or following."""

    def __init__(self, device_path: str, shadow_dir: str, settings: AgentSettings, uuid_file: Path, *,
                 follow: bool, debug: bool = False, progress: bool = False, device_paths: Sequence[str] = ()) -> None:
        self.device_path = device_path
        self.device_paths = tuple(device_paths)  # [host] devices: where added devices may be (docs/devices.md)
        self.devices_due = 0.0  # time.monotonic() of the next search for devices not found
        self.devices_known = 1  # rows of the daxdev table at the last search
        # Other processes (famfsctl, famfs-fuse-mount) read it from state.json, from any directory:
        # absolute, but not resolved (/dev/dax0.0 stays /dev/dax0.0).
        self.state_device = os.path.abspath(device_path)
        self.settings = settings
        self.uuid_file = uuid_file
        self.following = follow
        self.progress = progress  # show the progress of a long one-shot replay (famfs/progress.py)
        self.tree = ShadowTree(shadow_dir)
        self.device: Device | None = None
        self.famfs_log: FamfsLog | None = None
        self.superblock_raw = b""
        self.record_raw = b""  # the compaction record's bytes last found naming the log in hand
        self.state: AgentState | None = None
        self.stop_signal: int | None = None
        self.stats = AgentStats()  # read by the metrics collector (agent/metrics.py)
        self.waiter: Waiter | None = None  # made by run(): signal.set_wakeup_fd needs the main thread
        self.debug = debug  # per-entry events cost time even when filtered out: skip building them
        # Reclaim (docs/reclaim.md, "A host"): this host's record, the deleted files it may still
        # pin, and what a fence or a lost record leaves for the next _start.
        self.member: Membership | None = None
        self.deleted = DeletedFiles()
        self.tree.deleted_by = self.deleted.deleted_by  # the rule book's view of deleted files is the follower's list
        self.fenced_by: fmt.FenceEntry | None = None
        self.dropped_incarnations: list[int] = []  # the tree they served is being dropped
        self.renew_due = 0.0  # time.monotonic() of the next renewal
        self.fences_seen_to = 0  # the log's slots below this hold no FENCE of this tree (_fence_ahead)
        self.born_dead: dict[int, tuple[int, str]] = {}  # of this play: FILE index -> (DELETE index, relpath)
        # The run of DELETEs in hand: checked, not yet unlinked (_unlink_run), and their paths.
        self.unlinks: list[tuple[int, fmt.DeleteEntry, fmt.FileEntry]] = []  # with the FILE each deletes
        self.unlink_paths: set[str] = set()
        # Since when (time.monotonic(), at which cursor) root/ has held shadow files no logged
        # entry names, the log standing still (_check_tree): None while it holds none.
        self._surplus_since: tuple[float, int] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.waiter = Waiter()
        made = madedirs.missing(self.tree.base)  # a start that fails takes back what it made
        code, locked = EXIT_UNUSABLE, False
        try:
            try:
                self.tree.open()
            except ShadowError as err:
                log.error("shadow_unusable", error=str(err))
                return EXIT_UNUSABLE
            locked = True
            code = self._follow() if self.following else self._once()
            return code
        finally:
            self.waiter.close()
            self.waiter = None
            if code != EXIT_OK and made and locked and self.tree.read_agent_file(STATE_FILE) is None:
                shutil.rmtree(self.tree.base, ignore_errors=True)  # made by this run, never played: all ours
            self.tree.close()
            self._drop_membership()
            madedirs.undo(made)
            if self.device is not None:
                self.device.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _sleep(self, seconds: float) -> None:
        """Every pause of the agent: ends at once on SIGTERM/SIGINT (the caller checks the flag)."""
        assert self.waiter is not None
        self.waiter.sleep(seconds)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the entry in hand is finished and the cursor saved by the loop.
        self.stop_signal = signum

    def _open_device(self) -> str | None:
        """Open (or re-open) the device; the reason it is unusable, or None."""
        self._drop_membership()  # a record is of one device: a (re)opened one is joined again
        if self.device is not None:
            self.device.close()
            self.device = self.famfs_log = None
        try:
            self.device = Device(self.device_path)
            self.famfs_log = FamfsLog(self.device)
        except (DeviceError, fmt.FormatError) as err:
            self.stats.device_errors += 1
            if self.device is not None:
                self.device.close()
                self.device = None
            return str(err)
        self.superblock_raw = self.device.read(0, fmt.SUPERBLOCK.size)
        self.record_raw = b""
        return None

    def _start(self, rebuild: str | None = None) -> None:
        """Check the cursor against the device; resume, or rebuild the tree from scratch (always,
        when `rebuild` gives a reason)."""
        assert self.famfs_log is not None
        sb = self.famfs_log.superblock
        if self.member is None:
            self._join()  # before the log is read for playing (docs/reclaim.md, step 1)
        if self.dropped_incarnations:  # also when the _start of a rejoin failed and is retried
            rebuild = rebuild or "the tree of a fenced incarnation, or one whose record was lost, is dropped"
        saved = self.tree.read_agent_file(STATE_FILE)
        state = AgentState.parse(saved)
        previous = state
        if saved is not None and state is None:
            rebuild = rebuild or f"{STATE_FILE} is unreadable"  # said in the log: not a silent rebuild
        # A compaction replaced the log since the cursor (docs/reclaim.md): the same files under
        # new log indexes. The tree is kept and reconciled with a play of the new log.
        compacted = (rebuild is None and state is not None and state.fs_uuid == str(sb.fs_uuid)
                     and state.log_epoch != self.famfs_log.location.epoch)
        reason = rebuild or (f"the log was compacted (epoch {state.log_epoch} -> {self.famfs_log.location.epoch})"
                             if compacted and state is not None else self._rebuild_reason(state))
        # A move to a new log (or a first play) stopped before its tree moved in: a kill, or the
        # log moving again (from the staging copy to its place). root/ is the tree it was moving
        # from, of this file system: reconciled with the play, not emptied under the mount.
        unfinished = not compacted and reason is None and state is not None and state.applied_index < 0
        resumed = False
        # With no entry applied yet the tree is reset too: a run killed in the middle of a reset
        # leaves exactly that cursor behind.
        if state is not None and reason is None and state.applied_index >= 0:
            try:
                self.tree.load(state.applied_index, state.applied_index + self.settings.batch_max, sb, self.device_path)
                resumed = True
            except ShadowError as err:
                reason = str(err)
            expected = state.live_files
            if expected is not None:
                expected -= len(self._pending_run(state))  # the unlinks below may have happened already
            # Not exact: after a kill, entries past the cursor may be in the tree already.
            if resumed and (damage := self.tree.damage(state.applied_index, expected, exact=lambda: False)) is not None:
                resumed, reason = False, f"the shadow tree was damaged behind the agent's back: {damage}"
            elif resumed and state.live_files is None:
                state.live_files = self.tree.count_files()  # a state from before files were counted
        if not resumed:
            if compacted or unfinished:
                log.info("log_compacted", device=self.device_path,
                         reason=reason or "a move to this log stopped before its tree moved in",
                         action="the new log played and the tree reconciled with it: unchanged files stay")
            elif saved is not None and reason is not None:
                self.stats.rebuilds += 1
                log.warning("rebuild", device=self.device_path, shadow=str(self.tree.base), reason=reason,
                            action="shadow tree emptied and the log replayed from entry 0")
            state = AgentState(device=self.state_device, fs_uuid=str(sb.fs_uuid), live_files=0,
                               log_epoch=self.famfs_log.location.epoch)
            assert self.device is not None
            state.device_dev, state.device_ino = image_identity(self.device.fd) or (None, None)
            self._host_fields(previous, state)
            self.state = state
            # First: a kill during the reset then restarts the reset, and a mount reading the
            # state stops serving the old device before the tree shows the new file system.
            self._save()
            self.tree.reset(sb, self.device_path, keep_tree=compacted or unfinished)
            if compacted or unfinished:
                # The mount checks the files it serves against the new log from now on: the owner
                # map it reads carried to the new log's indexes until the new tree is built
                # (docs/reclaim.md, "What the mount serves while a host moves").
                self.tree.carry_owners(self.famfs_log)
        assert state is not None
        self.state = state
        assert self.member is not None  # joined above: its UUID is the one in the identity file
        mine = HostIdentity(self.uuid_file, self.member.system_uuid, str(self.uuid_file))
        role = mine.role(sb)
        self.tree.write_meta(sb, master=role is Role.MASTER)
        state.device, state.role, state.boot_id = self.state_device, role.value, boot_id()
        state.system_uuid_file = os.path.abspath(self.uuid_file)  # the mount reads it from any directory
        state.system_uuid = str(mine.system_uuid) if mine.system_uuid else None
        assert self.device is not None
        state.device_dev, state.device_ino = image_identity(self.device.fd) or (None, None)
        state.pid, state.following, state.stalled_at = os.getpid(), self.following, None
        for index, relpath in self._pending_run(state):
            # A run was killed around these DELETEs' unlinks, after checking them: finish them.
            self.tree.remove(relpath)
            pending = self.famfs_log.entry(index)
            if isinstance(pending, fmt.DeleteEntry):
                self.tree.disown(self.famfs_log.entry(pending.target_index))
            self._advance(index)
            if state.live_files is not None:
                state.live_files -= 1
        state.pending_deletes = []
        if resumed:
            self._host_fields(previous, state)  # a rebuild set them before its first save
            self.deleted.rebuild(self.famfs_log, state.applied_index + 1)
        else:
            self.deleted.clear()
        state.next_index_seen = self.famfs_log.next_index()
        self._save()
        self.dropped_incarnations = []  # in state.json's stale_incarnations now
        self.fences_seen_to = 0
        log.info("start", device=self.device_path, shadow=str(self.tree.base), fs_uuid=state.fs_uuid,
                 role=state.role, mode="follow" if self.following else "once", cursor=state.applied_index,
                 log_next_index=state.next_index_seen,
                 coherence=self.device.coherence.name if self.device is not None else None)

    @staticmethod
    def _pending_run(state: AgentState) -> list[tuple[int, str]]:
        """The saved run of DELETEs whose unlinks may have happened: those from the entry after
        the cursor on (a run is consecutive entries; anything else is not this cursor's)."""
        run = []
        for index, relpath in state.pending_deletes:
            if index != state.applied_index + 1 + len(run):
                break
            run.append((int(index), str(relpath)))  # type: ignore[call-overload]
        return run

    # --- this host's record (docs/reclaim.md, "A host"; agent/hostrecord.py) ----------------

    def _join(self) -> None:
        """Step 1: a record in the host table (new incarnation, renewed 0) before any log read
        for playing. A follower's mount then self-fences by serve_window; a one-shot play's
        record has window 0 (its mount serves without a lease, docs/reclaim.md step 6)."""
        assert self.device is not None
        me = system_uuid(self.uuid_file)
        assert me is not None  # created if missing, as upstream does
        window_ns = int(self.settings.serve_window * 1e9) if self.following else 0
        member = Membership(self.device, me, window_ns)
        try:
            member.join()
        except BaseException:
            member.close()
            raise
        self.member = member
        self.renew_due = 0.0
        pins.ensure_dir(self.tree.base)  # sticky and open to all: any process that maps a file may pin it

    def _drop_membership(self) -> None:
        if self.member is not None:
            self.member.close()
            self.member = None

    def _host_fields(self, previous: AgentState | None, state: AgentState) -> None:
        """state.json's view of the record for the mount: slot, incarnation, which incarnations
        served this tree and which trees were dropped (their handles get ESTALE)."""
        assert self.member is not None
        me = self.member.incarnation
        served = list(previous.tree_incarnations) if previous is not None else []
        stale = list(previous.stale_incarnations) if previous is not None else []
        if self.dropped_incarnations:
            stale += [old for old in self.dropped_incarnations if old not in stale]
            served = []
        if me not in served:
            served.append(me)
        state.host_slot, state.incarnation = self.member.slot, me
        state.tree_incarnations, state.stale_incarnations = served[-STALE_KEPT:], stale[-STALE_KEPT:]

    def _renew(self, renewed_ns: int, shown: int | None = None) -> None:
        """Step 3's end: the pins of deleted files tested (after the DELETEs were applied), then
        the record stored with heartbeat + 1, applied, the pin floor and `renewed_ns`. `shown`:
        the entries root/ shows, when fewer than the cursor (a tree being built in staging)."""
        assert self.member is not None and self.state is not None
        floor = self.deleted.pin_floor(pins.pins_dir(self.tree.base))
        applied = self.state.applied_index + 1 if shown is None else shown
        self.member.renew(renewed_ns, applied, floor, self.state.log_epoch)

    def _renew_midway(self, shown: int | None) -> None:
        """A renewal between the batches of a long play (a compaction's new log, a burst of
        entries on a loaded host), so that a busy agent's mount keeps serving (docs/reclaim.md,
        step 3): the record says what is applied (or, in a tree built in staging, `shown`: what
        root/ shows). Never before this incarnation's first renewal (a catch-up after a join
        serves nothing, step 2), and never while a FENCE naming this tree lies between the cursor
        and the log's end: a renewal that began after a FENCE was logged must have played it."""
        if not self._serving() or self.fenced_by is not None or self.stop_signal is not None:
            return
        assert self.state is not None
        if self.state.stalled_at is not None:
            return
        renewal = self._renewal_start()
        if renewal is None or self._fence_ahead():
            return
        self._renew(renewal[1], shown)

    def _serving(self) -> bool:
        """A following agent whose incarnation has renewed once (its mount may serve)."""
        member = self.member
        return (self.following and member is not None and member.record is not None and member.record.renewed_ns != 0
                and not member.renewals_stopped)

    def _fence_ahead(self) -> bool:
        """A FENCE naming this tree between the cursor and the log's end now (its header read
        after the renewal's clock). Slots already looked at are not read again."""
        assert self.famfs_log is not None and self.state is not None
        start = max(self.state.applied_index + 1, self.fences_seen_to)
        stop = self.famfs_log.next_index()
        for _, _, entry in self.famfs_log.slots_of((fmt.EntryType.FENCE,), start, stop):
            if not isinstance(entry, fmt.FenceEntry) or self._names_me(entry):
                return True  # one that does not decode (a store in progress) counts: looked at again
        self.fences_seen_to = max(start, stop)
        return False

    def _rejoin(self, why: str) -> None:
        """Fenced, or the record lost: the tree those incarnations served is dropped (their
        handles in the mount get ESTALE), then a new incarnation joins and plays afresh."""
        assert self.state is not None and self.member is not None
        if self.fenced_by is not None:
            self.member.mark_fenced()
            log.error("fenced", incarnation=self.member.incarnation, slot=self.member.slot,
                      reason=self.fenced_by.reason.name.lower(), heartbeat_seen=self.fenced_by.heartbeat,
                      applied_seen=self.fenced_by.applied, action="tree dropped; rejoining with a fresh play")
        self.dropped_incarnations += [old for old in self.state.tree_incarnations if old not in self.dropped_incarnations]
        self.fenced_by = None
        self._drop_membership()
        self._start(why)  # a failure leaves dropped_incarnations for the _start that succeeds

    def _names_me(self, entry: fmt.FenceEntry) -> bool:
        assert self.member is not None and self.state is not None
        return entry.system_uuid == self.member.system_uuid and entry.incarnation in self.state.tree_incarnations

    def _rebuild_reason(self, state: AgentState | None) -> str | None:
        assert self.famfs_log is not None
        sb = self.famfs_log.superblock
        if state is None:
            return "no cursor"
        if state.fs_uuid != str(sb.fs_uuid):
            return f"file system re-made: UUID {state.fs_uuid} is now {sb.fs_uuid}"
        if state.boot_id != boot_id():
            return "the host rebooted since the cursor was saved (the tree may not have survived)"
        if state.applied_index < 0:
            return None  # nothing to check: _start resets the tree anyway
        next_index = self.famfs_log.next_index()
        if state.applied_index >= next_index:
            return f"the log holds {next_index} entries but the cursor is at entry {state.applied_index}"
        seqnum, crc = self._seal(state.applied_index)
        if (seqnum, crc) != (state.applied_seqnum, state.applied_crc):
            return (f"log entry {state.applied_index} no longer matches the cursor "
                    f"(seqnum {seqnum}, CRC {crc:#x}; cursor has {state.applied_seqnum}, {state.applied_crc})")
        return tree_problem(self.tree.base, state.applied_index)  # wiped or replaced behind our back

    # --- cursor -----------------------------------------------------------------------------

    def _seal(self, index: int) -> tuple[int, int]:
        assert self.famfs_log is not None
        raw = self.famfs_log.raw_entry(index)
        return fmt.entry_seal(raw)

    def _advance(self, index: int) -> None:
        assert self.state is not None
        self.state.applied_index = index
        self.state.applied_seqnum, self.state.applied_crc = self._seal(index)

    def _save(self) -> None:
        assert self.state is not None
        now = time.time()
        self.state.updated_at = now
        if self.state.applied_index + 1 >= self.state.next_index_seen and self.state.stalled_at is None:
            self.state.caught_up_at = now
        self._publish_space()
        self.tree.save_units(self.state.applied_index)
        self.tree.write_agent_file(STATE_FILE, self.state.dump())

    def _publish_space(self) -> None:
        """The space figures as of the cursor, saved with it (AgentState.total_units): the mount's
        statfs takes them instead of replaying the log while the cursor is the log's last entry."""
        assert self.state is not None and self.famfs_log is not None
        units = self.tree.units
        held = self.deleted.held_units(self.famfs_log, units) if self.state.applied_index >= 0 else None
        self.state.total_units, self.state.free_units, self.state.held_units = (
            (None, None, None) if held is None else (units.total_units, units.free_units, held))

    # --- playing ----------------------------------------------------------------------------

    def _once(self) -> int:
        problem = self._open_device()
        if problem is not None:
            log.error("device_unusable", device=self.device_path, error=problem)
            return EXIT_UNUSABLE
        try:
            self._start()
            while True:
                assert self.famfs_log is not None and self.state is not None and self.member is not None
                renewed_ns = hosts.boottime_ns()  # before the header read this play goes up to
                stop = self.famfs_log.header().next_index
                progress = None
                if self.progress and stop - self.state.applied_index - 1 >= PROGRESS_MIN_ENTRIES:
                    progress = Progress("replaying", stop, unit="entries", start=self.state.applied_index + 1)
                try:
                    self.member.check_mine()
                    self._play(stop, progress)
                except (Fenced, RecordLost) as err:
                    self._rejoin(str(err))
                    continue
                if progress is not None:
                    progress.finish()
                self._renew(renewed_ns)  # one record of what is applied and pinned: window 0, never renewed again
                break
            self._resolve_devices()
        except (fmt.FormatError, DeviceError) as err:  # DeviceError: this host's record cannot be written
            log.error("device_unusable", device=self.device_path, error=str(err))
            return EXIT_UNUSABLE
        except OSError as err:
            log.error("shadow_write_failed", shadow=str(self.tree.base), error=str(err),
                      cursor=self.state.applied_index if self.state else None)
            return EXIT_UNUSABLE
        state = self.state
        log.info("done", device=self.device_path, cursor=state.applied_index, log_next_index=stop,
                 rejected=state.rejected, stalled_at=state.stalled_at,
                 stopped_by_signal=signal.Signals(self.stop_signal).name if self.stop_signal else None)
        if self.stop_signal is not None:
            return EXIT_OK
        if state.stalled_at is not None or state.rejected:
            stalled = f"; stopped at corrupt entry {state.stalled_at}" if state.stalled_at is not None else ""
            print(f"famfs-agent: {self.device_path}: {state.rejected} log entries rejected{stalled}; "
                  f"last error: {state.last_error}", file=sys.stderr)
            return EXIT_REJECTED
        return EXIT_OK

    def _play(self, stop: int, progress: Progress | None = None) -> None:
        """Apply entries up to `stop` (exclusive) in batches, until done, stalled or signalled."""
        assert self.state is not None
        # Nothing dealt with since the reset: root/ is empty, so the tree is built whole in
        # staging/ and moved in at the end (no rename per file), the cursor saved only then.
        build = self.state.applied_index < 0 and self.state.applied_index + 1 < stop
        self.born_dead = {}
        if build:
            before = self.state.applied_index, self.state.applied_seqnum, self.state.applied_crc
            self.tree.begin_build()
        elif self.state.applied_index + 1 < stop:
            assert self.famfs_log is not None
            self.born_dead = borndead.pairs(self.famfs_log, self.state.applied_index + 1, stop)
        try:
            while (self.stop_signal is None and self.state.stalled_at is None and self.fenced_by is None
                   and self.state.applied_index + 1 < stop):
                first = self.state.applied_index + 1
                self._batch(first, min(stop, first + self.settings.batch_max), progress)
                if self.following:
                    self._renew_midway(before[0] + 1 if build else None)
        finally:
            # Also when applying failed: every entry up to the cursor is whole in the built tree,
            # unless a file could not be made: then the tree is dropped, the cursor as before.
            if build:
                try:
                    self.tree.finish_build()
                except OSError:
                    self.state.applied_index, self.state.applied_seqnum, self.state.applied_crc = before
                    raise
                self._save()
        if self.fenced_by is not None:
            raise Fenced(f"fenced by the master (log entry {self.state.applied_index}, "
                         f"reason {self.fenced_by.reason.name.lower()})")

    def _batch(self, first: int, stop: int, progress: Progress | None) -> None:
        famfs_log, state, tree = self.famfs_log, self.state, self.tree
        assert famfs_log is not None and state is not None
        started = time.perf_counter()
        counts = dict.fromkeys(("applied", "present", "duplicate", "deleted", "rejected", "born_dead"), 0)
        done = first - 1  # the last entry dealt with
        debug = self.debug
        tally = self.stats.entries
        unborn = bool(self.born_dead or state.born_dead)  # pairs are added only from born_dead: none if both are empty
        building = tree.building
        serving = self._serving()  # a renewal falling due ends the batch early (_renew_midway)
        try:
            for index, raw in zip(range(first, stop), famfs_log.raw_entries(first, stop)):
                if self.stop_signal is not None:
                    break
                if serving and not (index - first + 1) & RENEW_CHECK_MASK and time.monotonic() >= self.renew_due:
                    break
                checked: bytes | None = raw  # the bytes `entry` comes from, if read once
                try:
                    entry: fmt.Entry = fmt.decode_entry(raw, index)
                except fmt.EntryError:
                    checked = None
                    settled = self._settle(index)
                    if settled is None:
                        break
                    if isinstance(settled, fmt.EntryError):
                        tally[fmt.EntryError, "rejected"] += 1
                        self._reject(settled, counts)
                        done = index
                        continue
                    entry = settled
                try:
                    if type(entry) is fmt.DeleteEntry and not building and not (unborn and str(index) in state.born_dead):
                        if entry.relpath in self.unlink_paths:  # its check needs the run's unlinks done
                            done = self._unlink_run(done, counts)
                        self.unlinks.append((index, entry, tree.check_delete(index, entry, famfs_log)))
                        self.unlink_paths.add(entry.relpath)
                        continue
                    if self.unlinks:
                        done = self._unlink_run(done, counts)
                    if unborn and (index in self.born_dead or str(index) in state.born_dead) and (
                            skipped := self._born_dead(index, entry)) is not None:
                        outcome = skipped
                    elif type(entry) is fmt.DeleteEntry:
                        self._delete_built(index, entry)
                        outcome = "deleted"
                    elif type(entry) is fmt.ReclaimEntry or type(entry) is fmt.FenceEntry:
                        outcome = self._host_entry(index, entry)
                    else:
                        outcome = tree.apply(index, entry, famfs_log, checked).value
                        if type(entry) is fmt.HoldEntry:  # a compaction's deleted file: its own DELETE
                            self.deleted.deleted(index, index, entry.file.relpath, units_of(tree.units, entry.file))
                except Rejected as err:
                    if self.unlinks:  # the run before it is done first: the cursor then passes this entry
                        done = self._unlink_run(done, counts)
                    tally[type(entry), "rejected"] += 1
                    self._reject(err, counts)
                    done = index
                    continue
                counts[outcome] += 1
                tally[type(entry), outcome] += 1
                if outcome == "deleted":
                    state.live_files = (state.live_files or 0) - 1
                elif type(entry) is fmt.FileEntry and outcome in ("applied", "present"):
                    state.live_files = (state.live_files or 0) + 1
                done = index
                if self.fenced_by is not None:
                    break  # nothing more is applied to a fenced tree
                if debug:
                    log.debug("entry", index=index, kind=type(entry).__name__, path=getattr(entry, "relpath", None),
                              outcome=outcome)
                if progress is not None and not index & 0xFF:
                    progress.update(index + 1)
            if self.unlinks:  # the batch ends (or stops: the entries in hand are finished)
                done = self._unlink_run(done, counts)
        except BaseException:
            self.unlinks, self.unlink_paths = [], set()  # checked, none unlinked: played again from the cursor
            raise
        finally:
            # Also when applying failed (the shadow file system full, say): every entry up to
            # `done` is whole in the tree, so the cursor may say so.
            if done >= first:
                self._advance(done)
                famfs_log.forget(first, done + 1)  # flat memory whatever the log's size
            state.next_index_seen = max(state.next_index_seen, famfs_log.next_index())
            tree.forget_dirs()  # directories are resolved again, from root/, by the next batch
            if not tree.building:  # a built tree's cursor is saved once it has moved in (_play)
                self._save()
        elapsed = time.perf_counter() - started
        if done >= first:
            log.info("batch", first=first, last=done, entries=done + 1 - first,
                     rate_per_s=round((done + 1 - first) / max(elapsed, 1e-9)), **counts)

    def _born_dead(self, index: int, entry: fmt.Entry) -> str | None:
        """A born-dead file's FILE (checked, units taken, no YAML) or its DELETE (noted deleted);
        None: play the entry as usual (the name is in the tree already: a run killed before its
        cursor made it)."""
        assert self.state is not None and self.famfs_log is not None
        if type(entry) is fmt.FileEntry:
            delete_index, relpath = self.born_dead.pop(index)
            if self.tree.kind(relpath) is not None:
                return None
            self.tree.check(index, entry, self.famfs_log, relpath, model=self.tree)
            self.tree.units.claim(entry.all_extents())
            self.state.born_dead[str(delete_index)] = [index, relpath]
            return "born_dead"
        file_index, relpath = self.state.born_dead.pop(str(index))
        assert type(entry) is fmt.DeleteEntry and (entry.target_index, entry.relpath) == (file_index, relpath)
        self.deleted.deleted(int(file_index), index, str(relpath))  # type: ignore[call-overload]
        return "born_dead"

    def _host_entry(self, index: int, entry: fmt.ReclaimEntry | fmt.FenceEntry) -> str:
        """RECLAIM: the files' units are free (ShadowTree.units_freed, the owner map's hook).
        FENCE of an incarnation that served this tree: noted; the batch stops, _play raises."""
        if isinstance(entry, fmt.FenceEntry):
            if self.member is not None and self._names_me(entry):
                self.fenced_by = entry
            return "applied"
        assert self.famfs_log is not None
        # The one rule book: its RECLAIM rules ask the tree's model which DELETE deleted a file.
        self.tree.check(index, entry, self.famfs_log)
        for gone in self.deleted.reclaimed(entry):
            self.tree.units_freed(gone.file_index, self.famfs_log)
        return "applied"

    def _delete_built(self, index: int, entry: fmt.DeleteEntry) -> None:
        """A DELETE in a tree being built: no cursor is written (a kill discards the whole tree)."""
        assert self.famfs_log is not None
        self._unlink(index, entry, self.tree.check_delete(index, entry, self.famfs_log))
        self._advance(index)

    def _unlink(self, index: int, entry: fmt.DeleteEntry, victim: fmt.FileEntry) -> None:
        self.tree.remove(entry.relpath)
        self.deleted.deleted(entry.target_index, index, entry.relpath, units_of(self.tree.units, victim))
        self.tree.disown(victim)  # after the unlink: its units are then no live file's

    def _unlink_run(self, done: int, counts: dict[str, int]) -> int:
        """The run of checked DELETEs in hand, which follows entry `done`: saved as pending with
        the cursor at `done` (one state write for the run, not two per DELETE), then unlinked. A
        restart that finds them pending finishes them. The cursor moves past them in memory; the
        next save (the batch's, at the latest) writes it. The last entry dealt with."""
        assert self.state is not None
        run, self.unlinks, self.unlink_paths = self.unlinks, [], set()
        if done >= 0:
            self._advance(done)
        self.state.pending_deletes = [[index, entry.relpath] for index, entry, _ in run]
        self._save()
        for index, entry, victim in run:
            self._unlink(index, entry, victim)
        self.state.pending_deletes = []
        last = run[-1][0]
        self._advance(last)
        counts["deleted"] += len(run)
        self.stats.entries[fmt.DeleteEntry, "deleted"] += len(run)
        self.state.live_files = (self.state.live_files or 0) - len(run)
        if self.debug:
            for index, entry, _ in run:
                log.debug("entry", index=index, kind="DeleteEntry", path=entry.relpath, outcome="deleted")
        return last

    def _reject(self, err: Rejected | fmt.EntryError, counts: dict[str, int]) -> None:
        assert self.state is not None
        self.state.rejected += 1
        self.state.last_error = str(err)
        counts["rejected"] += 1
        log.error("entry_rejected", device=self.device_path, index=err.index, path=err.relpath, error=str(err))

    def _settle(self, index: int) -> fmt.Entry | fmt.EntryError | None:
        """A slot that failed to decode: its entry, a reason to reject it, or None (corrupt: stop).

        A bad seqnum or CRC may be an entry still in flight (upstream's writer orders nothing
        between the entry and the header): wait and re-read with backoff before calling it corrupt.
        """
        assert self.famfs_log is not None and self.state is not None
        deadline = time.monotonic() + self.settings.inflight_retry_ms / 1000
        wait = INFLIGHT_FIRST_WAIT_S
        while True:
            try:
                fmt.check_entry_seal(self.famfs_log.raw_entry(index), index)
            except fmt.EntryError as seal_error:
                if self.stop_signal is not None:
                    return None  # stopping: the entry is looked at again by the next run
                if time.monotonic() >= deadline:
                    self._stall(index, seal_error)
                    return None
                self._sleep(wait)
                wait = min(wait * 2, 0.05)
                continue
            try:
                return self.famfs_log.entry(index)
            except fmt.EntryError as body_error:
                return body_error

    def _stall(self, index: int, err: fmt.EntryError) -> None:
        assert self.state is not None
        if self.state.stalled_at != index:
            log.error("log_corrupt", device=self.device_path, index=index, error=str(err),
                      action="progress stops here; entries before it stay applied" +
                      ("; still polling" if self.following else ""))
        self.state.stalled_at = index
        self.state.last_error = f"corrupt: {err}"

    # --- following --------------------------------------------------------------------------

    def _follow(self) -> int:
        settings = self.settings
        waiter = self.waiter
        assert waiter is not None
        problem = self._open_device()
        announced = None
        while problem is not None and self.stop_signal is None:
            if problem != announced:
                log.error("device_unusable", device=self.device_path, error=problem, action="retrying")
                announced = problem
            self._sleep(DEVICE_RETRY_S)
            problem = self._open_device()
        if self.stop_signal is not None:
            return EXIT_OK
        try:
            try:
                self._start()
            except OSError as err:
                self._recover(err)
            assert self.device is not None
            hint = self._write_hint()
            waiter.watch(hint)
            idle_max = (settings.hint_poll_max_ms if hint else settings.poll_max_ms) / 1000
            interval = settings.poll_min_ms / 1000
            ready = False
            next_check = time.monotonic() + TREE_CHECK_S
            while self.stop_signal is None:
                self.stats.polls += 1
                self.stats.poll_interval_s = interval
                try:
                    renewal = self._renewal_start()
                    worked = self._poll()
                    self._resolve_devices()
                    if not worked and (started := time.monotonic()) >= next_check:
                        worked = self._check_tree()
                        now = time.monotonic()
                        next_check = now + max(TREE_CHECK_S, TREE_CHECK_COST * (now - started))
                    if renewal is not None and self.stop_signal is None and self.member is renewal[0]:
                        self._renew(renewal[1])  # not after a rejoin in this pass: its catch-up is still to come
                except (Fenced, RecordLost) as err:
                    try:
                        self._rejoin(str(err))
                    except OSError as failed:
                        self._recover(failed)
                    continue
                except OSError as err:
                    self._recover(err)
                    continue
                if worked:
                    interval = settings.poll_min_ms / 1000
                    # Entries are arriving: the next ones gather for poll_min_ms and are taken in one
                    # batch (one cursor write, each directory resolved once), not a poll each.
                    self._sleep(interval)
                    continue
                if not ready:  # caught up once: the tree is whole, a mount may start (systemd)
                    service.notify_ready(f"following {self.device_path}")
                    ready = True
                if waiter.wait(interval):
                    self.stats.wakeups += 1
                    interval = settings.poll_min_ms / 1000
                else:
                    interval = min(interval * 2, idle_max)
        finally:
            if self.state is not None and self.famfs_log is not None:
                self._save()
            if self.member is not None and self.stop_signal is not None:
                self.member.leave()  # step 7: a clean stop
        log.info("stop", signal=signal.Signals(self.stop_signal).name if self.stop_signal else None,
                 cursor=self.state.applied_index if self.state else None)
        return EXIT_OK

    def _resolve_devices(self) -> None:
        """Find the added devices on this host (docs/devices.md): at once when the log adds one,
        then every DEVICE_RESCAN_S while one is missing or refused (a periodic re-scan, not
        inotify: a device may come from a hot-plugged dax node, a DCD tag appearing in sysfs or an
        image file copied in, each in a directory of its own). One event per change of a device."""
        rows = self.tree.daxdevs
        if len(rows) < 2 or self.famfs_log is None:
            return
        now = time.monotonic()
        if len(rows) == self.devices_known and (now < self.devices_due or not self.tree.devices_unresolved()):
            return
        self.devices_known, self.devices_due = len(rows), now + DEVICE_RESCAN_S
        for row in self.tree.resolve_devices(self.famfs_log.superblock.fs_uuid, self.device_paths):
            event = {"found": log.info, "missing": log.warning, "refused": log.error}[row.state]
            event(f"device_{row.state}", index=row.index, dev_uuid=row.uuid, path=row.path, reason=row.reason or None)

    def _renewal_start(self) -> tuple[Membership, int] | None:
        """If a renewal is due: the membership and CLOCK_BOOTTIME now (before this pass reads the
        header), once the slot is checked to hold this incarnation still (RecordLost if not)."""
        if self.member is None or time.monotonic() < self.renew_due:
            return None
        now = hosts.boottime_ns()
        self.member.check_mine()
        self.renew_due = time.monotonic() + self.settings.heartbeat_interval
        return self.member, now

    def _check_tree(self) -> bool:
        """Between batches the tree holds exactly what the cursor says: rebuild it if it does not
        (root/ removed, files deleted behind the agent's back), re-open the device if its path
        names another image now. True if it did either."""
        assert self.device is not None and self.state is not None
        if self.device.info.kind == "file":
            try:
                on_path = os.stat(self.device_path)
                replaced = (on_path.st_dev, on_path.st_ino) != image_identity(self.device.fd)
            except FileNotFoundError:
                replaced = True
            if replaced:
                return self._reopen("the device path names another file now")
        famfs_log, applied = self.famfs_log, self.state.applied_index

        surplus_seen = False

        def surplus_is_damage() -> bool:
            # Asked only when root/ holds more files than the log has live. Read after the count
            # (an entry is appended before its YAML is written): upstream's CLI writes the shadow
            # files of what it just logged itself, so with entries logged since the last poll the
            # tree may hold them already. And it writes a new file's YAML, then fills the file
            # through the master's mount, then logs it (docs/fusefs.md, "Served ahead of the
            # log"): a surplus is damage only once it has outlasted unlogged_grace_s with the log
            # standing still (an orphan of a CLI that died). The mount never serves such a file
            # but on the master's ro_namespace mount, and there only on free units.
            nonlocal surplus_seen
            surplus_seen = True
            if famfs_log is not None and famfs_log.next_index() > applied + 1:
                self._surplus_since = None
                return False
            now = time.monotonic()
            if self._surplus_since is None or self._surplus_since[1] != applied:
                self._surplus_since = now, applied
                log.info("shadow_unlogged", shadow=str(self.tree.base), applied=applied,
                         note=f"files no logged entry names: left alone for {self.settings.unlogged_grace_s:g} s")
            return now - self._surplus_since[0] >= self.settings.unlogged_grace_s

        damage = self.tree.damage(applied, self.state.live_files, exact=surplus_is_damage)
        if not surplus_seen:
            self._surplus_since = None
        if damage is None:
            return False
        self._surplus_since = None
        log.warning("shadow_damaged", shadow=str(self.tree.base), damage=damage, action="rebuilding the tree")
        self._start(f"the shadow tree was damaged behind the agent's back: {damage}")
        return True

    def _recover(self, err: OSError) -> None:
        """Applying failed. A tree changed behind the agent's back is rebuilt; anything else
        (a full shadow file system, say) is retried from the saved cursor after a pause."""
        assert self.state is not None
        rebuild = f"the shadow tree was changed behind the agent's back ({err})" if isinstance(err, ShadowError) else None
        while self.stop_signal is None:
            self.stats.shadow_errors += 1
            log.error("shadow_write_failed", shadow=str(self.tree.base), error=str(err), cursor=self.state.applied_index,
                      action=f"{'rebuilding the tree' if rebuild else 'retrying'} in {DEVICE_RETRY_S:.0f} s")
            self.state.last_error = str(err)
            self._sleep(DEVICE_RETRY_S)
            try:
                self._start(rebuild)
                return
            except OSError as again:
                err = again

    def _write_hint(self) -> ImageWriteWatch | None:
        assert self.device is not None
        if not self.settings.wake_hint or self.device.info.kind != "file":
            return None
        try:
            return ImageWriteWatch(self.device.path)
        except OSError as err:
            log.warning("wake_hint_unavailable", device=self.device_path, error=str(err), action="polling only")
            return None

    def _poll(self) -> bool:
        """One cheap look at the device; True if work was done (poll again at once)."""
        assert self.device is not None and self.famfs_log is not None and self.state is not None
        state = self.state
        if self.device.read(0, fmt.SUPERBLOCK.size) != self.superblock_raw:
            return self._reopen("the superblock changed")
        if self._log_moved():
            return self._follow_log()
        next_index = self.famfs_log.next_index()
        if next_index < state.applied_index + 1:
            return self._reopen(f"the log's next_index fell to {next_index}, below the cursor {state.applied_index}")
        if next_index > fmt.log_capacity(self.famfs_log.superblock.log_len):
            return self._reopen(f"the log's next_index {next_index} is past its last slot")
        if state.stalled_at is not None:
            try:
                fmt.check_entry_seal(self.famfs_log.raw_entry(state.stalled_at), state.stalled_at)
            except fmt.EntryError:
                return False
            log.info("log_repaired", index=state.stalled_at)
            state.stalled_at = None
        if next_index <= state.applied_index + 1:
            state.next_index_seen = next_index
            return False
        state.next_index_seen = next_index
        self._play(next_index)
        return True

    def _log_moved(self) -> bool:
        """A compaction committed or finished since the log was opened (docs/reclaim.md): the
        log is elsewhere now (the staging copy, then the fixed offset again), or another one."""
        assert self.device is not None and self.famfs_log is not None
        offset, length = RECORD_SPAN
        view = self.device.fresh(offset, length)
        raw = view[offset:offset + length]
        if raw == self.record_raw:  # every poll: decoded only when it changed (the superblock is checked before)
            return False
        try:
            record = read_record(view)
        except fmt.FormatError:
            return False  # a torn store of the master's: looked at again next poll
        moved = LogLocation.of(record, self.famfs_log.superblock, self.device.size) != self.famfs_log.location
        if not moved:
            self.record_raw = raw
        return moved

    def _follow_log(self) -> bool:
        """A compaction moved the log: the same device, and the same record (this incarnation
        renews on: its mount serves what it holds while the agent moves, docs/reclaim.md "Hosts
        follow the epoch"); the log opened where it is now and the tree reconciled with it
        (_start). A rejoin here made every mount answer EIO until the new log was played."""
        assert self.device is not None and self.famfs_log is not None
        with contextlib.suppress(fmt.FormatError):  # caught mid-store: carried after the sleep (_start)
            moved_to = FamfsLog(self.device)
            if moved_to.location != self.famfs_log.location:
                # At once, not after the sleep: the mount checks the files it serves against the
                # new log from the compaction's commit on (docs/reclaim.md).
                self.tree.carry_owners(moved_to)
        self._sleep(self.settings.inflight_retry_ms / 1000)  # a copy just committed is done by then: one move
        if self.stop_signal is not None:
            return False
        try:
            self.famfs_log = FamfsLog(self.device)
        except fmt.FormatError:  # a compaction record or header caught mid-store: the slow way
            return self._reopen("the log was compacted")
        self.record_raw = b""
        log.info("log_moved", device=self.device_path, epoch=self.famfs_log.location.epoch)
        self._start()
        return True

    def _reopen(self, why: str) -> bool:
        """The device changed under us: wait for a writer (mkfs) to finish, then start over."""
        assert self.state is not None
        self._sleep(self.settings.inflight_retry_ms / 1000)
        if self.stop_signal is not None:
            return False
        problem = self._open_device()
        if problem is not None:
            if self.state.last_error != problem:
                log.error("device_unusable", device=self.device_path, error=problem, action="retrying")
            self.state.last_error = problem
            while problem is not None and self.stop_signal is None:
                self._sleep(DEVICE_RETRY_S)
                problem = self._open_device()
            if problem is not None:
                return False
        log.warning("device_changed", device=self.device_path, reason=why)
        self._start()
        assert self.waiter is not None
        self.waiter.watch(self._write_hint())  # the path may name another image file now
        return True
