"""The mount's self-fence (docs/reclaim.md, steps 4 and 5; docs/fusefs.md, "Self-fence").

The mount serves a file's bytes only while its agent's record in the host table says the agent
renewed within the serve window, by this host's CLOCK_BOOTTIME: a host whose agent is killed,
stopped, slow or cut off from the device stops serving by its own clock, before the master's
coordinator may give the space of files deleted meanwhile to new ones. Which record is its
agent's comes from state.json (host_slot, incarnation), read again when the slot shows another
incarnation. A record with the fenced flag, or a tree the agent dropped (state.json's
stale_incarnations), makes the handles opened under those incarnations ESTALE.

Per request: one 256-byte slice of the device mapping compared with the last one and a clock
read (0.2-0.9 µs, bench/lease_check.py); only a changed record (once per renewal) is decoded and
its CRC checked.
"""

from __future__ import annotations

import errno
import mmap
import os
import time

import structlog

from famfs import format as fmt
from famfs import hosts
from famfs.hosts import DamagedSlot, HostRecord
from famfs.shadowdir import read_state

log = structlog.get_logger("famfs-fuse-mount")

STATE_REREAD_S = 0.005  # state.json read at most this often while the slot shows another incarnation


class Lease:
    """What the agent's record allows now (trio thread only)."""

    def __init__(self, shadow_dir: str) -> None:
        self.shadow_dir = shadow_dir
        self.slot: int | None = None  # None: no record (a one-shot agent from before reclaim, a hand-made tree)
        self.incarnation: int | None = None
        self.stale: set[int] = set()  # incarnations whose handles get ESTALE
        self._raw = b""
        self._record: HostRecord | DamagedSlot | None = None
        # The fast path: while the slot's bytes are `_raw` and they allowed serving, serve
        # until `_deadline` (None: no lease, a one-shot agent's record).
        self._span: slice | None = None
        self._allowed = False
        self._deadline: int | None = None
        self._state_read = -1.0
        self._said: str | None = None  # the last refusal logged (each is logged once)
        # The last refusal is of an agent starting (its record not yet in its slot, or not yet
        # renewed): worth a short wait (FamfsOperations._leased), unlike an expired lease.
        self.starting = False
        self._load_state()

    def _load_state(self) -> None:
        self._state_read = time.monotonic()
        state = read_state(self.shadow_dir)
        if state is None:
            return
        self.slot, self.incarnation = state.host_slot, state.incarnation
        self.stale.update(state.stale_incarnations)
        self._allowed = False
        if self.slot is not None:
            start = hosts.slot_offset(self.slot)
            self._span = slice(start, start + fmt.HOST_RECORD_SIZE)

    def _current(self, view: mmap.mmap) -> HostRecord | DamagedSlot | None:
        """The agent's record: decoded only when its bytes changed since the last request."""
        assert self.slot is not None and self._span is not None
        raw = bytes(view[self._span])
        if raw != self._raw:
            found = hosts.decode(raw, self.slot)
            if isinstance(found, DamagedSlot):  # maybe a store in progress: read_slot reads again
                found = hosts.read_slot(view, self.slot)
            self._raw, self._record = raw, found
        return self._record

    def refusal(self, view: mmap.mmap, incarnation: int | None) -> int | None:
        """None if bytes may be served now for a handle opened under `incarnation` (None: no
        handle yet, an open); else the errno to answer."""
        if incarnation is not None and incarnation in self.stale:
            return errno.ESTALE
        if self._allowed and view[self._span] == self._raw:  # type: ignore[index]  # mmap: a 256-byte bytes
            deadline = self._deadline
            if deadline is None or hosts.boottime_ns() < deadline:
                return None
        self._allowed = False
        code = self._examine(view, incarnation)
        if code is None and self.slot is not None:
            record = self._record
            assert isinstance(record, HostRecord)
            self._allowed = True
            self._deadline = None if record.serve_window_ns == 0 else record.renewed_ns + record.serve_window_ns
        return code

    def _examine(self, view: mmap.mmap, incarnation: int | None) -> int | None:
        """refusal() without the fast path."""
        self.starting = False
        if self.slot is None:
            if time.monotonic() - self._state_read >= 1.0:
                self._load_state()  # an agent that joins later (its state is written after the mount starts)
            if self.slot is None:
                return None
        record = self._current(view)
        if not (isinstance(record, HostRecord) and record.incarnation == self.incarnation):
            if time.monotonic() - self._state_read >= STATE_REREAD_S:
                self._load_state()  # the agent restarted or rejoined: its state names the new record
                if incarnation is not None and incarnation in self.stale:
                    return errno.ESTALE
                record = self._current(view) if self.slot is not None else None
            if not (isinstance(record, HostRecord) and record.incarnation == self.incarnation):
                self.starting = True
                return self._refuse(errno.EIO, f"host slot {self.slot} does not hold the agent's record "
                                    f"(incarnation {self.incarnation}) now")
        if record.fenced_seen:
            self.stale.add(record.incarnation)
            return self._refuse(errno.ESTALE if incarnation == record.incarnation else errno.EIO,
                                f"the agent was fenced (incarnation {record.incarnation})")
        if record.serve_window_ns == 0:
            return None  # a one-shot play: no lease (docs/reclaim.md, step 6)
        self.starting = record.renewed_ns == 0
        if record.renewed_ns == 0 or hosts.boottime_ns() - record.renewed_ns >= record.serve_window_ns:
            return self._refuse(errno.EIO, "the agent's lease expired (no renewal within the serve window)"
                                if record.renewed_ns else "the agent has not finished its first catch-up")
        self._said = None
        return None

    def guarded(self) -> bool:
        """Whether a read must copy the bytes and check again after (a lease with a window)."""
        record = self._record
        return self.slot is not None and not (isinstance(record, HostRecord) and record.serve_window_ns == 0)

    def _refuse(self, code: int, why: str) -> int:
        if why != self._said:
            self._said = why
            log.warning("not serving bytes", errno=errno.errorcode[code], reason=why, pid=os.getpid())
        return code
