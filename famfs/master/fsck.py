"""fsck and status: read-only checks and summaries of a device.

fsck checks what upstream's fsck checks and more (docs/format.md §4.4, §9 item 12): superblock, log header
(magic, CRC and bounds, on every path), every slot (seqnum, CRC, fields, path form), and every
rule of the rule book (famfs.rules: the same rules the writer refuses and the follower rejects),
naming cross-linked files by path where upstream only counts collisions. It reports every
problem, not just the first; each entry it reports is one the follower leaves out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from famfs import format as fmt
from famfs import devices, hosts, rules
from famfs.compaction import LogLocation, read_record
from famfs.device import Device, DeviceError
from famfs.famfslog import FamfsLog
from famfs.identity import role_of
from famfs.units import format_size


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """One device of the file system as the log describes it (index, UUID, size, free bytes, the
    live files with an extent on it, the bytes deleted files still hold there) and where this host
    found it (famfs.devices.resolve: found at a path, missing, or refused, with the reason)."""

    index: int
    dev_uuid: uuid.UUID
    size: int
    free_bytes: int
    files: int = 0
    held_bytes: int = 0
    state: str = devices.FOUND
    where: str = ""  # the path it was found at, else why not

    def __str__(self) -> str:
        role = "primary" if self.index == 0 else "secondary"
        here = f"at {self.where}" if self.state == devices.FOUND else f"{self.state.upper()} on this host: {self.where}"
        return (f"device {self.index} ({role}): uuid {self.dev_uuid}, {format_size(self.size)}, "
                f"{format_size(self.free_bytes)} free, {count_files(self.files)}, "
                f"{format_size(self.held_bytes)} held by deleted files; {here}")

    def warning(self) -> str | None:
        """What an unavailable device means here: a warning, not a problem of the log."""
        if self.state == devices.FOUND:
            return None
        return (f"warning: device {self.index} ({self.dev_uuid}) is {self.state} on this host: {count_files(self.files)} "
                f"with extents on it cannot be read or written here (list its path in [host] devices: docs/devices.md)")


def count_files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


@dataclass(slots=True)
class Report:
    device: str
    superblock: fmt.Superblock | None = None
    header: fmt.LogHeader | None = None
    fatal: str | None = None  # superblock or header unusable: nothing past it was checked
    bad_entries: list[str] = field(default_factory=list)
    namespace_errors: list[str] = field(default_factory=list)
    crosslinks: list[str] = field(default_factory=list)
    shadowed: list[str] = field(default_factory=list)  # re-created after a DELETE: a warning, not a problem
    files: int = 0
    directories: int = 0
    deletes: int = 0
    file_bytes: int = 0  # sum of live file sizes
    allocated_bytes: int = 0  # superblock and log included, as upstream counts
    deleted_bytes: int = 0  # held by deleted files not yet reclaimed (docs/reclaim.md)
    reclaimed_bytes: int = 0  # of deleted files a RECLAIM freed: counted free
    free_bytes: int = 0
    hosts: list[hosts.HostRecord | hosts.DamagedSlot] = field(default_factory=list)  # the host table
    devices: list[DeviceUse] = field(default_factory=list)  # the daxdev table (docs/devices.md)
    files_elsewhere: int = 0  # live files with an extent on an added device
    past_primary: int = 0  # extents on added devices (live or held) ending past device 0's size
    fenced: set[tuple[uuid.UUID, int]] = field(default_factory=set)

    @property
    def problems(self) -> int:
        return (self.fatal is not None) + len(self.bad_entries) + len(self.namespace_errors) + len(self.crosslinks)

    @property
    def clean(self) -> bool:
        return self.problems == 0

    def host_summary(self) -> str:
        """The host table in one line: how many records in each state."""
        counts: dict[str, int] = defaultdict(int)
        for found in self.hosts:
            counts[host_state(found, self.fenced)] += 1
        return ", ".join(f"{count} {state}" for state, count in sorted(counts.items())) or "none joined"

    def render(self) -> str:
        lines = [f"device: {self.device}"]
        sb, header = self.superblock, self.header
        if sb is not None:
            lines.append(f"superblock: version {sb.version}, fs uuid {sb.fs_uuid}, device uuid {sb.dev_uuid}, "
                         f"master {sb.system_uuid}, device size {sb.dev_size}, log {sb.log_len} bytes")
        if header is not None:
            lines += [
                f"log: {header.next_index} of {header.slots} entries used, {len(self.bad_entries)} bad",
                f"namespace: {self.files} files, {self.directories} directories, {self.deletes} deleted files",
                f"space: {self.allocated_bytes} allocated (of which {self.deleted_bytes} held by deleted files), "
                f"{self.free_bytes} free, {self.file_bytes} in live files, {self.reclaimed_bytes} reclaimed from "
                f"deleted files",
                f"hosts: {self.host_summary()}",
            ]
            if len(self.devices) > 1:  # a single-device report stays as it was
                lines += [f"  {use}" for use in self.devices]
                lines += [f"  {warning}" for use in self.devices if (warning := use.warning())]
                lines.append(f"  note: upstream famfs reads device 0 only: it cannot read the {count_files(self.files_elsewhere)} "
                             f"with extents on added devices, and its fsck counts their extents against device 0's "
                             f"units (docs/devices.md)")
                if self.past_primary:
                    lines.append(f"  note: extents on added devices ending past device 0's size: {self.past_primary}; "
                                 f"upstream's fsck and allocator (one bitmap of device 0's size, no bound check) would "
                                 f"write past that bitmap on this file system (docs/devices.md)")
        problems = ([self.fatal] if self.fatal else []) + self.bad_entries + self.namespace_errors + self.crosslinks
        lines += [f"  {problem}" for problem in problems]
        lines += [f"  warning: {path!r} was deleted and made again: shadowed for upstream readers, which ignore "
                  f"DELETE and still show the first entry for this path (docs/format.md)" for path in self.shadowed]
        if self.clean:
            lines.append("fsck: clean")
        else:
            noun = "problem" if self.problems == 1 else "problems"
            lines.append(f"fsck: {self.problems} {noun}: {len(self.bad_entries)} bad entries, "
                         f"{len(self.namespace_errors)} namespace errors, {len(self.crosslinks)} cross-links"
                         + (", unreadable superblock or log header" if self.fatal else ""))
        return "\n".join(lines) + "\n"


COMPACTION_RETRIES = 5  # checks started again because a compaction moved the log meanwhile


def check(device: Device, device_paths: Sequence[str] = ()) -> Report:
    """The report on the device's log. fsck reads without the lock, as every reader does: a
    compaction that replaces the log while it reads (docs/reclaim.md) leaves it a mix of the old
    and the new log, so the check is made again, from the new log, when the log's location
    (epoch, staged copy or not) changed between its start and its end. `device_paths` ([host]
    devices): where this host's added devices may be (docs/devices.md; each found by its UUIDs)."""
    for _ in range(COMPACTION_RETRIES):
        report, location = _check_once(device)
        if location is None or _location(device, report) == location:
            report.devices = located(report.devices, report, device_paths)
            return report
    report.fatal = f"the log was compacted during each of {COMPACTION_RETRIES} checks: run fsck again"
    return report


def _location(device: Device, report: Report) -> LogLocation | None:
    assert report.superblock is not None
    try:
        return LogLocation.of(read_record(device.map), report.superblock, device.size)
    except fmt.FormatError:
        return None  # a compaction record caught mid-store: not the location the check read


def _check_once(device: Device) -> tuple[Report, LogLocation | None]:
    """The report, and the log's location it read (None: no log was read)."""
    report = Report(device=device.path)
    try:
        famfs_log = FamfsLog(device)
    except (fmt.FormatError, DeviceError) as err:
        report.fatal = str(err.strerror if isinstance(err, DeviceError) else err)
        with contextlib.suppress(fmt.FormatError, DeviceError):  # a good superblock is still worth showing
            report.superblock = fmt.Superblock.unpack(device.read(0, fmt.SUPERBLOCK.size))
        return report, None
    sb = famfs_log.superblock
    report.superblock = sb
    report.header = famfs_log.header()
    # The entries left out for sharing units, as the replay read them: not read again afterwards
    # (a compaction may have replaced the log meanwhile; the location check then retries).
    crosslinked: list[tuple[int, fmt.FileEntry]] = []

    def note(found: rules.Problem) -> None:
        if found.bad_entry is not None:
            report.bad_entries.append(describe_bad_entry(famfs_log, found.bad_entry))
        elif found.violation is not None and found.violation.rule == rules.space_unclaimed.__name__:
            held = found.entry.file if isinstance(found.entry, fmt.HoldEntry) else found.entry
            assert isinstance(held, fmt.FileEntry)  # the rule is checked on a FILE's or a HOLD's mapping
            crosslinked.append((found.index, held))
        elif found.violation is not None:
            relpath = getattr(found.entry, "relpath", None)
            report.namespace_errors.append(str(fmt.EntryError(found.index, str(found.violation), relpath)))

    namespace = rules.replay(famfs_log, note)
    for index, entry in crosslinked:
        shared: dict[int | None, int] = defaultdict(int)  # holder entry -> units in common
        for extent in entry.all_extents():
            for unit in namespace.units.span(extent):
                if namespace.units.maps[extent.devindex][unit]:
                    shared[namespace.holder(unit, extent.devindex)] += 1
        for holder, units in sorted(shared.items(), key=lambda item: -1 if item[0] is None else item[0]):
            other = "the superblock/log" if holder is None else f"{logged_relpath(famfs_log, holder)!r} (entry {holder})"
            report.crosslinks.append(f"cross-linked: {entry.relpath!r} (entry {index}) and {other} "
                                     f"share {units * sb.alloc_unit} bytes; entry {index} is left out (rule "
                                     f"{rules.space_unclaimed.__name__})")
    report.shadowed = sorted(path for path in namespace.deleted_paths if namespace.kind(path) is not None)
    report.files = len(namespace.files)
    report.directories = len(namespace.dirs) - 1  # the root is not logged
    report.deletes = len(namespace.deleted)
    report.file_bytes = sum(entry.size for _, entry in namespace.files.values())
    report.deleted_bytes = sum(entry.capacity() for entry in namespace.deleted.values())
    report.reclaimed_bytes = sum(entry.capacity() for entry in namespace.reclaimed.values())
    report.hosts = list(hosts.read_table(device.fresh(*hosts.TABLE_SPAN)))
    report.fenced = set(namespace.fenced)
    report.devices = device_uses(namespace, device.path, sb)
    primary_size = namespace.units.geometries[0].dev_size
    report.past_primary = sum(extent.devindex > 0 and extent.offset + extent.length > primary_size
                              for entry in [*(e for _, e in namespace.files.values()), *namespace.deleted.values()]
                              for extent in entry.all_extents())
    report.files_elsewhere = sum(any(extent.devindex for extent in entry.all_extents())
                                 for _, entry in namespace.files.values())
    report.allocated_bytes = namespace.units.used_units * sb.alloc_unit
    report.free_bytes = namespace.units.free_units * sb.alloc_unit
    return report, famfs_log.location


def device_uses(namespace: rules.Namespace, path: str, sb: fmt.Superblock) -> list[DeviceUse]:
    """Each device as the log describes it: its space and its files (where this host finds an
    added device is located()'s)."""
    files: dict[int, int] = defaultdict(int)
    for _, entry in namespace.files.values():
        for devindex in {extent.devindex for extent in entry.all_extents()}:
            files[devindex] += 1
    held: dict[int, int] = defaultdict(int)
    for entry in namespace.deleted.values():
        for extent in entry.all_extents():
            held[extent.devindex] += extent.length
    return [DeviceUse(row.index, uuid.UUID(row.uuid), row.size,
                      namespace.units.device_free_units(row.index) * sb.alloc_unit, files[row.index], held[row.index],
                      devices.FOUND if row.index == 0 else devices.MISSING, path if row.index == 0 else "")
            for row in devices.namespace_rows(namespace)]


def located(uses: list[DeviceUse], report: Report, device_paths: Sequence[str]) -> list[DeviceUse]:
    """`uses` with where this host finds each added device (famfs.devices.resolve): found at a
    path, missing or refused with the reason. Only resolved when there are added devices: a
    single-device check looks nowhere else."""
    if len(uses) < 2 or report.superblock is None:
        return uses
    rows = [devices.DeviceRow(use.index, str(use.dev_uuid), use.size, use.where or None, None) for use in uses]
    found = devices.resolve(report.superblock.fs_uuid, rows, device_paths)
    return [uses[0], *(dataclasses.replace(use, state=row.state, where=row.path or row.reason)
                       for use, row in zip(uses[1:], found[1:], strict=True))]


def host_state(found: hosts.HostRecord | hosts.DamagedSlot, fenced: set[tuple[uuid.UUID, int]]) -> str:
    """active, left, fenced (a FENCE names its incarnation) or damaged."""
    if isinstance(found, hosts.DamagedSlot):
        return "damaged"
    if found.identity in fenced:
        return "fenced"
    return found.state.name.lower()


def logged_relpath(famfs_log: FamfsLog, index: int) -> str:
    """The relpath of FILE (or HOLD) entry `index`, which replay() has already read and accepted;
    a description instead if the slot no longer reads so: a compaction replaced the log since
    (check() then finds the log's location changed and checks again)."""
    try:
        entry = famfs_log.entry(index)
    except (fmt.EntryError, fmt.FormatError) as err:
        return f"(log entry {index}, unreadable now: {err})"
    held = entry.file if isinstance(entry, fmt.HoldEntry) else entry
    return held.relpath if isinstance(held, fmt.FileEntry) else f"(log entry {index}, not a file now)"


def describe_bad_entry(famfs_log: FamfsLog, error: fmt.EntryError) -> str:
    """The error, with the slot's relpath even when the slot failed its CRC (then unverified)."""
    if error.relpath is not None:
        return str(error)
    relpath = fmt.raw_relpath(famfs_log.raw_entry(error.index))
    if relpath is None:
        return str(error)
    return f"{error} (unverified path {relpath.decode(errors='backslashreplace')!r})"


def status(device: Device, uuid_file: Path, device_paths: Sequence[str] = ()) -> tuple[str, bool]:
    """What an operator asks first: whose file system, how full, and what this host may do.
    Also whether the device holds a usable famfs at all."""
    report = check(device, device_paths)
    if report.superblock is None or report.header is None:
        return f"device: {device.path}\nstatus: not a usable famfs: {report.fatal}\n", False
    sb, header = report.superblock, report.header
    text = "\n".join([
        f"device: {device.path} ({device.info.kind}, {format_size(device.size)})",
        f"file system uuid: {sb.fs_uuid}",
        f"device uuid: {sb.dev_uuid}",
        f"master system uuid: {sb.system_uuid}",
        f"this host: {role_of(sb, uuid_file).value}",
        f"device size: {format_size(sb.dev_size)} ({sb.dev_size} bytes)",
        f"log: {format_size(sb.log_len)}, {header.next_index} of {header.slots} slots used, "
        f"{header.slots - header.next_index} free",
        f"space: {format_size(report.allocated_bytes)} used, {format_size(report.free_bytes)} free, "
        f"{format_size(report.deleted_bytes)} held by deleted files (reclaimable), "
        f"{format_size(report.reclaimed_bytes)} reclaimed",
        f"hosts: {report.host_summary()}; reclaim coordinator on this host: "
        f"{'running' if hosts.coordinator_running(device.fd) else 'not running'}",
        f"files: {report.files}, directories: {report.directories}",
        *(f"  {use}" for use in report.devices if len(report.devices) > 1),
        *(f"  {warning}" for use in report.devices if (warning := use.warning())),
        f"fsck: {'clean' if report.clean else f'{report.problems} problems (run famfsctl fsck)'}",
    ]) + "\n"
    return text, True
