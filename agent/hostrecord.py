"""This host's record in the device's host table: join, renew, leave, fenced (docs/reclaim.md,
"A host"; the layout and the table's reading are famfs.hosts').

The agent maps the device read-only; the record is the one thing it writes there, through a
descriptor of its own: pwrite(2) on an image file (the page cache every process of this host
maps), a writable mapping of the superblock region on a devdax or pmem device. Nothing else of
the device is ever writable in the agent.
"""

from __future__ import annotations

import mmap
import os
import uuid
from dataclasses import replace

import structlog

from famfs import format as fmt
from famfs import hosts
from famfs.device import Device, DeviceError, map_alignment
from famfs.hosts import HostRecord, HostState

log = structlog.get_logger("famfs-agent")


class RecordLost(Exception):
    """The slot holds another identity now: this host's record was overwritten (docs/reclaim.md,
    "Why no host sees reused memory", case 3)."""


class RecordWriter:
    """Stores 256-byte records in the host table of one device, and nothing else."""

    def __init__(self, device: Device) -> None:
        self.device = device  # its coherence: a record is written back before store() returns
        self.kind = device.info.kind
        try:
            self.fd = os.open(device.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise DeviceError(err.errno, f"{device.path}: cannot open for writing this host's record in the host "
                              f"table: {err.strerror}") from None
        self.region: mmap.mmap | None = None
        self.base = 0  # the device offset `region` starts at
        if self.kind != "file":
            # The host table only, where the device maps in pieces that small (pmem: pages);
            # devdax maps in 2 MiB pieces: the superblock region, of which only the table is written.
            whole_table = map_alignment(device.info) <= fmt.HOST_TABLE_OFFSET
            self.base = fmt.HOST_TABLE_OFFSET if whole_table else 0
            try:
                self.region = mmap.mmap(self.fd, fmt.SUPERBLOCK_SIZE - self.base, mmap.MAP_SHARED,
                                        access=mmap.ACCESS_WRITE, offset=self.base)
            except OSError as err:
                os.close(self.fd)
                raise DeviceError(err.errno, f"{device.path}: cannot map the host table for writing: {err.strerror}") from None

    def store(self, record: HostRecord) -> None:
        raw = hosts.encode(record)
        offset = hosts.slot_offset(record.slot)
        if self.region is None:
            os.pwrite(self.fd, raw, offset)
        else:
            self.region[offset - self.base:offset - self.base + len(raw)] = raw
        self.device.flush(offset, len(raw))

    def close(self) -> None:
        if self.region is not None:
            self.region.close()
        os.close(self.fd)


class Membership:
    """One incarnation of this host in one device's table: joined once, renewed, left or fenced."""

    def __init__(self, device: Device, system_uuid: uuid.UUID, serve_window_ns: int) -> None:
        self.device = device
        self.system_uuid = system_uuid
        self.serve_window_ns = serve_window_ns
        self.writer = RecordWriter(device)
        self.record: HostRecord | None = None
        self.renewals_stopped = False  # lost or fenced: the mount stops serving within the window

    @property
    def slot(self) -> int:
        assert self.record is not None
        return self.record.slot

    @property
    def incarnation(self) -> int:
        assert self.record is not None
        return self.record.incarnation

    def join(self) -> HostRecord:
        """Step 1: the slot this host had (or the first free one from its home slot), a new
        incarnation, nothing applied, renewed 0 (its mount serves nothing yet)."""
        slot = hosts.choose_slot(self.device.fresh(*hosts.TABLE_SPAN), self.system_uuid)
        self.record = HostRecord(slot=slot, system_uuid=self.system_uuid, incarnation=hosts.new_incarnation(),
                                 serve_window_ns=self.serve_window_ns, pid=os.getpid(),
                                 hostname=hosts.this_hostname())
        self.writer.store(self.record)
        self.renewals_stopped = False
        log.info("host_joined", slot=slot, incarnation=self.record.incarnation, system_uuid=str(self.system_uuid),
                 serve_window_s=self.serve_window_ns / 1e9)
        return self.record

    def check_mine(self) -> None:
        """Raise RecordLost unless the slot still holds this incarnation's record."""
        assert self.record is not None
        found = hosts.read_slot(self.device.fresh(hosts.slot_offset(self.record.slot), fmt.HOST_RECORD_SIZE), self.record.slot)
        if not isinstance(found, HostRecord) or found.identity != self.record.identity:
            self.renewals_stopped = True
            holder = found.identity if isinstance(found, HostRecord) else found
            same_host = isinstance(found, HostRecord) and found.system_uuid == self.system_uuid
            log.error("host_record_lost", slot=self.record.slot, incarnation=self.record.incarnation,
                      found=str(holder), action="renewals stopped; rejoining with a new incarnation and a fresh play",
                      why="another famfs-agent with this host's system UUID joined this device: run one agent per "
                          "host and device (or give each its own [host] system_uuid_file)" if same_host else
                          "another host's claim overwrote this slot")
            raise RecordLost(f"host slot {self.record.slot} holds {holder}")

    def renew(self, renewed_ns: int, applied: int, pin_floor: int, log_epoch: int) -> None:
        """Step 3's store: heartbeat + 1, what is applied and pinned (in log `log_epoch`), and when
        this pass began. `renewed` never goes back: a pass that renewed midway (between the
        batches of a long play) ends with a renewal begun before those."""
        assert self.record is not None
        if self.renewals_stopped:
            return
        renewed_ns = max(renewed_ns, self.record.renewed_ns)
        self.record = self.record.renewed(applied=applied, pin_floor=pin_floor, renewed_ns=renewed_ns,
                                          log_epoch=log_epoch)
        self.writer.store(self.record)

    def mark_fenced(self) -> None:
        """Step 5: the agent played a FENCE of this incarnation. The record says so (its mount
        stops at once) and is never renewed again."""
        assert self.record is not None
        self.renewals_stopped = True
        self.record = replace(self.record, flags=self.record.flags | hosts.FLAG_FENCED)
        self.writer.store(self.record)

    def leave(self) -> None:
        """Step 7: a clean stop. Not after a loss or a fence: the slot may be another's now."""
        if self.record is None or self.renewals_stopped:
            return
        self.record = replace(self.record, state=HostState.LEFT)
        self.writer.store(self.record)
        log.info("host_left", slot=self.record.slot, incarnation=self.record.incarnation)

    def close(self) -> None:
        self.writer.close()



def table_report(view: bytes | memoryview, next_index: int, slot: int | None, incarnation: int | None) -> list[dict[str, object]]:
    """The host table as `famfs-agent status` shows it: one row per occupied slot, this host's
    record (`slot`, `incarnation` from state.json) marked. The heartbeat's age is not shown: a
    record's `renewed` is another host's clock; the master's coordinator times heartbeats."""
    rows: list[dict[str, object]] = []
    for found in hosts.read_table(view):
        if isinstance(found, hosts.DamagedSlot):
            rows.append({"slot": found.slot, "damaged": found.reason, "this_host": False})
            continue
        rows.append({
            "slot": found.slot, "system_uuid": str(found.system_uuid), "hostname": found.hostname,
            "incarnation": found.incarnation, "state": found.state.name.lower(), "fenced": found.fenced_seen,
            "heartbeat": found.heartbeat, "applied": found.applied, "lag_entries": max(next_index - found.applied, 0),
            "pin_floor": None if found.pin_floor == hosts.NO_PIN else found.pin_floor,
            "serve_window_s": found.serve_window_ns / 1e9, "pid": found.pid,
            "this_host": found.slot == slot and found.incarnation == incarnation,
        })
    return rows


def table_lines(rows: list[dict[str, object]]) -> list[str]:
    """The rows as text: a header and one line per slot, `*` marking this host."""
    lines = [f"  {'slot':>5} {'system uuid':36} {'hostname':16} {'state':8} {'applied':>8} {'lag':>6} {'pin floor':>9}"]
    for row in rows:
        mark = "*" if row["this_host"] else " "
        if "damaged" in row:
            lines.append(f"{mark} {row['slot']:>5} damaged: {row['damaged']}")
            continue
        state = "fenced" if row["fenced"] else str(row["state"])
        floor = "-" if row["pin_floor"] is None else str(row["pin_floor"])
        lines.append(f"{mark} {row['slot']:>5} {row['system_uuid']:36} {str(row['hostname'])[:16]:16} {state:8} "
                     f"{row['applied']:>8} {row['lag_entries']:>6} {floor:>9}")
    return lines


def settings_problem(serve_window: float, heartbeat_interval: float) -> str | None:
    """Why a following agent cannot keep its mount serving with these settings, or None: a
    renewal every heartbeat_interval must land well inside the window (two of them, at least)."""
    if serve_window <= 2 * heartbeat_interval:
        return (f"[agent] serve_window ({serve_window:g} s) must be more than twice heartbeat_interval "
                f"({heartbeat_interval:g} s): the mount would stop serving between renewals")
    return None
