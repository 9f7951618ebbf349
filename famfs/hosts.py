"""The host table: every host's record in the shared device (docs/reclaim.md).

Each record is written by its own host only (one store of 256 bytes, CRC last) and read by anyone.
The layout is famfs.format's HOST_RECORD; this module encodes, decodes, reads the whole table and
picks a host's slot. Nothing here decides anything: the coordinator (famfs.master) and the agent
apply the protocol.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import functools
import hashlib
import os
import struct
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from famfs import format as fmt

# The reclaim coordinator's host-local lock (docs/reclaim.md): an open-file-description lock on
# one byte of the device no one stores to, independent of the writers' flock on the same device
# and gone when the process dies.
COORDINATOR_LOCK_OFFSET = fmt.HOST_TABLE_OFFSET - 1
FLOCK = struct.Struct("hhqqi4x")  # struct flock (x86_64/aarch64): type, whence, start, len, pid
NO_PIN = (1 << 64) - 1  # pin floor when nothing deleted is pinned
FLAG_FENCED = 1  # the agent played a FENCE of this incarnation
CRC_RETRIES = 3  # a bad CRC may be a store in progress: read again this many times


class HostState(enum.IntEnum):
    ACTIVE = 1
    LEFT = 2  # a clean stop


@dataclass(frozen=True, slots=True)
class HostRecord:
    slot: int
    system_uuid: uuid.UUID
    incarnation: int
    state: HostState = HostState.ACTIVE
    heartbeat: int = 0
    log_epoch: int = 0
    applied: int = 0  # every entry with index < applied is played
    pin_floor: int = NO_PIN  # smallest FILE index of a deleted file still pinned here
    renewed_ns: int = 0  # CLOCK_BOOTTIME of the last renewal's start: for this host's own mount only
    serve_window_ns: int = 0  # 0: this host does not self-fence (a one-shot play)
    pid: int = 0
    flags: int = 0
    hostname: str = ""

    @property
    def fenced_seen(self) -> bool:
        return bool(self.flags & FLAG_FENCED)

    @property
    def identity(self) -> tuple[uuid.UUID, int]:
        return self.system_uuid, self.incarnation

    def renewed(self, *, applied: int, pin_floor: int, renewed_ns: int, log_epoch: int | None = None) -> HostRecord:
        """The record after one more renewal."""
        return replace(self, heartbeat=self.heartbeat + 1, applied=applied, pin_floor=pin_floor,
                       renewed_ns=renewed_ns, log_epoch=self.log_epoch if log_epoch is None else log_epoch)


@dataclass(frozen=True, slots=True)
class DamagedSlot:
    """A slot whose record stays unreadable (bad magic, version, slot or CRC): maybe a host we
    cannot name, so it blocks reclaim until an operator fences it."""

    slot: int
    reason: str


def encode(record: HostRecord) -> bytes:
    raw = bytearray(fmt.HOST_RECORD.pack(
        fmt.HOST_MAGIC, fmt.HOST_RECORD_VERSION, record.state, record.slot, record.system_uuid.bytes,
        record.incarnation, record.heartbeat, record.log_epoch, record.applied, record.pin_floor,
        record.renewed_ns, record.serve_window_ns, record.pid, record.flags,
        record.hostname.encode()[:63], 0,
    ))
    raw[fmt.HOST_RECORD_CRC_SPAN:] = fmt.crc32(raw[:fmt.HOST_RECORD_CRC_SPAN]).to_bytes(8, "little")
    return bytes(raw)


def decode(raw: bytes, slot: int) -> HostRecord | DamagedSlot | None:
    """The record in `raw` (slot `slot`); None for an empty (all-zero) slot."""
    if not any(raw):
        return None
    (magic, version, state, stored_slot, host, incarnation, heartbeat, epoch, applied, pin_floor, renewed,
     window, pid, flags, hostname, crc) = fmt.HOST_RECORD.unpack(raw)
    if crc != fmt.crc32(raw[:fmt.HOST_RECORD_CRC_SPAN]):
        return DamagedSlot(slot, "bad CRC")
    if magic != fmt.HOST_MAGIC or version != fmt.HOST_RECORD_VERSION:
        return DamagedSlot(slot, f"bad magic or version {version}")
    if stored_slot != slot:
        return DamagedSlot(slot, f"a record of slot {stored_slot}")
    try:
        host_state = HostState(state)
    except ValueError:
        return DamagedSlot(slot, f"unknown state {state}")
    return HostRecord(slot=slot, system_uuid=uuid.UUID(bytes=host), incarnation=incarnation, state=host_state,
                      heartbeat=heartbeat, log_epoch=epoch, applied=applied, pin_floor=pin_floor,
                      renewed_ns=renewed, serve_window_ns=window, pid=pid, flags=flags,
                      hostname=hostname.split(b"\0", 1)[0].decode(errors="replace"))


TABLE_SPAN = (fmt.HOST_TABLE_OFFSET, fmt.HOST_SLOTS * fmt.HOST_RECORD_SIZE)  # (offset, length) of the whole table


def slot_offset(slot: int) -> int:
    if not 0 <= slot < fmt.HOST_SLOTS:
        raise ValueError(f"host slot {slot} outside 0..{fmt.HOST_SLOTS - 1}")
    return fmt.HOST_TABLE_OFFSET + slot * fmt.HOST_RECORD_SIZE


def read_slot(view: bytes | memoryview, slot: int) -> HostRecord | DamagedSlot | None:
    """One slot of a mapped device (`view` covers the device from offset 0), read again while its
    CRC is bad (a store in progress on another host)."""
    start = slot_offset(slot)
    found: HostRecord | DamagedSlot | None = None
    for _ in range(CRC_RETRIES):
        found = decode(bytes(view[start:start + fmt.HOST_RECORD_SIZE]), slot)
        if not isinstance(found, DamagedSlot):
            return found
    return found


PAGE = 4096  # the zero test's first step: a page of 16 slots


def occupied_slots(table: bytes) -> list[int]:
    """The slots of the table's bytes that are not all zero, in order: a count of zero bytes per
    page, then per slot of a page that has others (C loops; a zero test per slot in Python took
    11 ms of a host's start-up)."""
    slots: list[int] = []
    size = fmt.HOST_RECORD_SIZE
    for page in range(0, len(table), PAGE):
        if table.count(0, page, page + PAGE) == PAGE:
            continue
        slots += [start // size for start in range(page, page + PAGE, size) if table.count(0, start, start + size) != size]
    return slots


def read_table(view: bytes | memoryview) -> Iterator[HostRecord | DamagedSlot]:
    """Every occupied slot, in slot order, from one copy of the 1 MiB table."""
    table = bytes(view[fmt.HOST_TABLE_OFFSET:fmt.HOST_TABLE_OFFSET + fmt.HOST_SLOTS * fmt.HOST_RECORD_SIZE])
    for slot in occupied_slots(table):
        start = slot * fmt.HOST_RECORD_SIZE
        raw = table[start:start + fmt.HOST_RECORD_SIZE]
        found = decode(raw, slot)
        if isinstance(found, DamagedSlot):
            found = read_slot(view, slot)
        if found is not None:
            yield found


def home_slot(system_uuid: uuid.UUID) -> int:
    """Where a host starts looking for its slot: stable across its restarts."""
    return int.from_bytes(hashlib.sha256(system_uuid.bytes).digest()[:4], "little") % fmt.HOST_SLOTS


def choose_slot(view: bytes | memoryview, system_uuid: uuid.UUID) -> int:
    """The slot this host already has, if any (an earlier incarnation's record is replaced, never
    left behind to block reclaim); else, from its home slot on, the first empty slot. One read
    of the table."""
    taken: set[int] = set()
    for found in read_table(view):
        if isinstance(found, HostRecord) and found.system_uuid == system_uuid:
            return found.slot
        taken.add(found.slot)
    start = home_slot(system_uuid)
    for step in range(fmt.HOST_SLOTS):
        slot = (start + step) % fmt.HOST_SLOTS
        if slot not in taken:
            return slot
    raise OSError(f"the host table is full ({fmt.HOST_SLOTS} slots): fence and clear hosts that are gone")


def new_incarnation() -> int:
    """Random, nonzero, 63 bits (prints as a positive number everywhere)."""
    return int.from_bytes(os.urandom(8), "little") >> 1 or 1


# The clock a host's renewals and its mount's self-fence use: it counts suspend. A partial, not
# a function: the mount reads it on every read it serves, and a partial has no Python frame.
boottime_ns: Callable[[], int] = functools.partial(time.clock_gettime_ns, time.CLOCK_BOOTTIME)


def this_hostname() -> str:
    return socket.gethostname()


def _coordinator_flock(kind: int) -> bytes:
    return FLOCK.pack(kind, os.SEEK_SET, COORDINATOR_LOCK_OFFSET, 1, 0)


def take_coordinator_lock(fd: int) -> bool:
    """The coordinator's lock for this process (released when `fd` is closed or the process
    dies); False if another process of this host holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _coordinator_flock(fcntl.F_WRLCK))
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def coordinator_running(fd: int) -> bool:
    """Whether a reclaim coordinator of this host holds its lock (any open of the device will do)."""
    found = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _coordinator_flock(fcntl.F_WRLCK))
    return FLOCK.unpack(found)[0] != fcntl.F_UNLCK
