"""The devices of a file system, found by UUID on this host (docs/devices.md).

A file system over several devices logs each added device (ADD_DAXDEV: index, size, device UUID);
device 0 is the primary, whose superblock holds the log. No host assumes the master's paths: each
finds every logged device by the UUIDs in the device's own superblock, among

1. the paths in `[host] devices` of famfs-agent.toml (image files or device nodes), in order;
2. the dax devices whose CXL DCD capacity tag (sysfs `uuid` or `tag`) is a logged device UUID;
3. every /dev/dax* and /dev/pmem* node.

A candidate is taken only if its superblock is valid, carries the logged device UUID, the file
system's UUID, the secondary flag, and the device is at least the logged size. A device whose
device UUID matches but whose file-system UUID (or any other of these) does not is refused and
named: its extents are never served from it.

This module also owns the schema of the table the agent records (`.agent/daxdevs.json`).
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from famfs import format as fmt
from famfs import rules
from famfs.device import SYS_DAX, Device, DeviceError, probe
from famfs.logsetup import get_logger

log = get_logger(__name__)

DEV = Path("/dev")
FOUND, MISSING, REFUSED = "found", "missing", "refused"


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One row of the daxdev table: a logged device and where this host found it (or why not).
    `log_index` is the ADD_DAXDEV's slot (None for the primary, which the superblock names)."""

    index: int
    uuid: str
    size: int
    path: str | None
    log_index: int | None
    state: str = MISSING
    reason: str = ""


def encode_table(rows: Sequence[DeviceRow]) -> bytes:
    return json.dumps({"daxdevs": [asdict(row) for row in rows]}, indent=1).encode() + b"\n"


def decode_table(raw: bytes) -> list[DeviceRow]:
    """The table as the agent wrote it; ValueError if it is not one."""
    try:
        return [DeviceRow(**row) for row in json.loads(raw)["daxdevs"]]
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a daxdev table: {err!r}") from None


def read_superblock(path: str) -> fmt.Superblock | None:
    """The superblock at the start of `path`, or None if it holds none (or cannot be read). A
    devdax character device has no read(2): its first 2 MiB are mapped instead (its alignment)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            with mmap.mmap(fd, fmt.SUPERBLOCK_SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as head:
                raw = head[:fmt.SUPERBLOCK.size]
        else:
            raw = os.pread(fd, fmt.SUPERBLOCK.size, 0)
        return fmt.Superblock.unpack(raw)
    except (OSError, ValueError, fmt.FormatError):
        return None
    finally:
        os.close(fd)


def dcd_tags(sys_dax: Path = SYS_DAX, dev_root: Path = DEV) -> dict[uuid.UUID, str]:
    """Device node of each dax device whose sysfs shows a DCD capacity tag, by tag."""
    tags: dict[uuid.UUID, str] = {}
    try:
        names = sorted(os.listdir(sys_dax))
    except OSError:
        return tags
    for name in names:
        for leaf in ("uuid", "tag"):
            try:
                tag = uuid.UUID((sys_dax / name / leaf).read_text().strip())
            except (OSError, ValueError):
                continue
            if tag.int:
                tags.setdefault(tag, str(dev_root / name))
                break
    return tags


def candidates(configured: Sequence[str], wanted: Iterable[uuid.UUID], *, sys_dax: Path = SYS_DAX,
               dev_root: Path = DEV) -> list[str]:
    """Where to look, in the order of the module's docstring, each path once."""
    tags = dcd_tags(sys_dax, dev_root)
    tagged = [tags[dev_uuid] for dev_uuid in wanted if dev_uuid in tags]
    try:
        scanned = sorted(str(dev_root / name) for name in os.listdir(dev_root) if name.startswith(("dax", "pmem")))
    except OSError:
        scanned = []
    return list(dict.fromkeys([*configured, *tagged, *scanned]))


def check_secondary(path: str, sb: fmt.Superblock | None, row: DeviceRow, fs_uuid: uuid.UUID) -> str | None:
    """Why `path` (superblock `sb`) is not logged device `row` of file system `fs_uuid`; None if it is."""
    if sb is None:
        return f"{path}: no valid famfs superblock"
    if str(sb.dev_uuid) != row.uuid:
        return f"{path}: device UUID {sb.dev_uuid}, not {row.uuid}"
    if sb.fs_uuid != fs_uuid:
        return f"{path}: device UUID {row.uuid} matches, but it belongs to file system {sb.fs_uuid}, not {fs_uuid}"
    if not sb.secondary:
        return f"{path}: device UUID {row.uuid} matches, but its superblock is not a secondary's"
    try:
        size = probe(path).size
    except DeviceError as err:
        return str(err.strerror)
    if size < row.size:
        return f"{path}: {size} bytes, smaller than the {row.size} logged for device {row.index}"
    return None


def resolve(fs_uuid: uuid.UUID, rows: Sequence[DeviceRow], configured: Sequence[str], *,
            sys_dax: Path = SYS_DAX, dev_root: Path = DEV) -> list[DeviceRow]:
    """Each added device (rows[1:]) located on this host: FOUND with its path, REFUSED with the
    reason (a candidate carrying its device UUID failed check_secondary), or MISSING. Row 0,
    the primary, is kept as given."""
    wanted = {row.uuid: row for row in rows[1:]}
    found: dict[str, DeviceRow] = {}
    refused: dict[str, str] = {}
    for path in candidates(configured, (uuid.UUID(key) for key in wanted), sys_dax=sys_dax, dev_root=dev_root):
        sb = read_superblock(path)
        row = wanted.get(str(sb.dev_uuid)) if sb is not None else None
        if row is None or row.uuid in found:
            continue
        why = check_secondary(path, sb, row, fs_uuid)
        if why is None:
            found[row.uuid] = DeviceRow(row.index, row.uuid, row.size, path, row.log_index, FOUND)
        else:
            refused.setdefault(row.uuid, why)
    resolved = [rows[0]] if rows else []
    for row in rows[1:]:
        if row.uuid in found:
            resolved.append(found[row.uuid])
        elif row.uuid in refused:
            resolved.append(DeviceRow(row.index, row.uuid, row.size, None, row.log_index, REFUSED, refused[row.uuid]))
        else:
            resolved.append(DeviceRow(row.index, row.uuid, row.size, None, row.log_index, MISSING,
                                      "no candidate path holds its superblock"))
    return resolved


def where_to_look(configured: Sequence[str], table_path: str) -> list[str]:
    """The paths a process beside an agent (the master's mount, writing) gives resolve(): its
    own [host] devices, then those this host's agent found (its daxdev table at `table_path`;
    none if it cannot be read). The table says where to look, never what to trust: resolve()
    checks each superblock again."""
    try:
        with open(table_path, "rb") as table:
            found = [row.path for row in decode_table(table.read())[1:] if row.state == FOUND and row.path]
    except (OSError, ValueError):
        found = []
    return list(dict.fromkeys([*configured, *found]))


def namespace_rows(namespace: rules.Namespace) -> list[DeviceRow]:
    """The table's rows as a replayed namespace knows them (no paths: resolve() finds them)."""
    return [DeviceRow(n, str(dev_uuid), namespace.units.geometries[n].dev_size, None, None)
            for n, dev_uuid in enumerate(namespace.daxdevs)]


def logged_rows(primary: fmt.Superblock, primary_path: str,
                added: Iterable[tuple[int, fmt.AddDaxdevEntry]]) -> list[DeviceRow]:
    """The table's rows before resolution: the primary found at its path, the added ones missing."""
    rows = [DeviceRow(0, str(primary.dev_uuid), primary.dev_size, primary_path, None, FOUND)]
    rows += [DeviceRow(entry.dev_index, str(entry.dev_uuid), entry.dev_size, None, index) for index, entry in added]
    return rows


class AddedDevices:
    """The added devices of one file system, opened on first use as a daxdev table names them,
    each checked again here (check_secondary) before a byte of it is served. The table is the
    agent's file (`table_path`, read again whenever it changes: a device the agent finds later is
    served from then on) or rows given (famfs.open without an agent). A device that cannot be
    used is logged once, naming its UUID, and answered None."""

    def __init__(self, fs_uuid: uuid.UUID, *, table_path: str | None = None, rows: Sequence[DeviceRow] = (),
                 writable: bool = False) -> None:
        self.fs_uuid = fs_uuid
        self.table_path = table_path
        self.writable = writable
        self.rows = list(rows)
        self.opened: dict[int, Device] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._warned: set[tuple[int, str]] = set()

    def _table(self) -> list[DeviceRow]:
        if self.table_path is None:
            return self.rows
        try:
            st = os.stat(self.table_path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.table_path, "rb") as table:
                    self.rows, self._stamp = decode_table(table.read()), stamp
        except (OSError, ValueError) as err:
            log.warning("daxdev_table_unreadable", path=self.table_path, error=str(err))
        return self.rows

    def size(self, index: int) -> int | None:
        """The logged size of added device `index`, None if the table does not have it."""
        rows = self._table()
        return rows[index].size if 0 < index < len(rows) else None

    def device(self, index: int) -> Device | None:
        """Added device `index`, open; None (logged once per reason) if this host cannot serve it."""
        if index in self.opened:
            return self.opened[index]
        rows = self._table()
        row = rows[index] if 0 < index < len(rows) else None
        if row is None:
            why, dev_uuid = "not in this host's daxdev table (its ADD_DAXDEV not played yet)", None
        elif row.path is None:
            why, dev_uuid = f"{row.state} on this host: {row.reason}", row.uuid
        else:
            why, dev_uuid = check_secondary(row.path, read_superblock(row.path), row, self.fs_uuid), row.uuid
            if why is None:
                try:
                    self.opened[index] = Device(row.path, writable=self.writable)
                    log.info("device_opened", index=index, dev_uuid=row.uuid, path=row.path)
                    return self.opened[index]
                except DeviceError as err:
                    why = str(err.strerror)
        if (index, why) not in self._warned:
            self._warned.add((index, why))
            log.warning("device_unavailable", index=index, dev_uuid=dev_uuid, reason=why,
                        effect="its files answer EIO; every other file is served")
        return None

    def close(self) -> None:
        """Close every device opened (BufferError, as Device.close, while a slice is still held)."""
        for index, opened in list(self.opened.items()):
            opened.close()
            del self.opened[index]
