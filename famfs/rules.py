"""The rule book: what makes a log entry valid (docs/format.md, "The rule book").

One function per rule; `check()` applies them to one entry in a fixed order. Three policies use
the same rules:

- the master's writer (famfs.master.writer) refuses an operation whose entry breaks a rule, and
  writes nothing;
- fsck (famfs.master.fsck) lists every entry that breaks one;
- the follower (agent.follower) rejects such an entry, names it and the rule, and plays on.

A rule reads the entry and a `Model` of the log before it: the namespace (which paths are
directories, which are live files), the allocation units taken by accepted files (live, or
deleted and not yet reclaimed: a deleted file's space is reused only after a RECLAIM names it,
docs/reclaim.md), the deleted files awaiting reclaim, and the daxdev table. The writer and
fsck keep the whole model in memory (`Namespace`); the follower keeps its namespace in the shadow
tree itself and only the units in memory (one byte per 2 MiB unit), so its memory stays flat.

Slot-level validity (seqnum, CRC, field ranges, the relpath's form) is the format's business
(famfs.format.decode_entry, check_relpath); an entry that fails there never reaches these rules.
"""

from __future__ import annotations

import enum
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from famfs import format as fmt
from famfs.shadowdir import META_DIR

NO_ID = 0xFFFFFFFF  # (uid_t)-1 / (gid_t)-1: chown(2) reads it as "leave unchanged", stat never shows it


class Violation(fmt.FormatError):
    """An entry that breaks rule `rule` (the name of the rule's function in this module)."""

    def __init__(self, rule: Callable[..., object], reason: str) -> None:
        super().__init__(reason)
        self.rule = rule.__name__
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (rule {self.rule})"


class Kind(enum.Enum):
    DIR = "directory"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class Geometry:
    """The device facts the extent rules need, from the superblock."""

    dev_size: int
    log_len: int
    alloc_unit: int = fmt.ALLOC_UNIT
    # Derived once, not per call: the extent rules read them for every file replayed.
    data_start: int = field(init=False)  # file data starts past the superblock and the log
    units_end: int = field(init=False)  # the end of the device's last whole allocation unit

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_start", fmt.data_start(self.log_len))
        object.__setattr__(self, "units_end", self.dev_size - self.dev_size % self.alloc_unit)

    @classmethod
    def of(cls, superblock: fmt.Superblock) -> Geometry:
        return cls(superblock.dev_size, superblock.log_len, superblock.alloc_unit)


class UnitGrid(Protocol):
    unit: int  # bytes
    nunits: int  # the device's whole units


def extent_units(unit: int, nunits: int, extent: fmt.Extent) -> tuple[int, int]:
    """The units [start, stop) `extent` touches on a device of `nunits` whole units of `unit`
    bytes (the rule, once: the owner maps' unit_bounds and Units' maps both use it). A tuple, not
    a range, and no min(): it runs for every extent replayed."""
    stop = -(-(extent.offset + extent.length) // unit)
    return extent.offset // unit, stop if stop < nunits else nunits  # noqa: FURB136 (min() is the slower)


def unit_bounds(grid: UnitGrid, extent: fmt.Extent) -> tuple[int, int]:
    """The units [start, stop) `extent` touches, inside the grid's whole units. A method of the
    owner map's classes (famfs.ownership), bound as a class attribute."""
    return extent_units(grid.unit, grid.nunits, extent)


class Units:
    """Which allocation units accepted FILE entries hold: one byte per unit (0 free, 1 taken),
    so bytes.find() does both the overlap test and the first-fit search in C. 2 MiB units: a
    4 TiB device is two million bytes. The superblock and log count as taken.

    One map per device of the file system, by devindex (docs/devices.md): `taken` and `nunits`
    are the primary's (device 0); add_device() adds a map for each ADD_DAXDEV accepted. Every
    device reserves the same metadata area (superblock region and log length) at its start."""

    def __init__(self, geometry: Geometry) -> None:
        self.unit = geometry.alloc_unit
        # Whole units only: upstream rounds up and can hand out the partial unit past the end.
        self.nunits = geometry.dev_size // self.unit
        self.first_data_unit = min(fmt.round_up(geometry.data_start, self.unit) // self.unit, self.nunits)
        self.taken = bytearray(self.nunits)
        self.taken[: self.first_data_unit] = b"\1" * self.first_data_unit
        self.geometries: list[Geometry] = [geometry]
        self.maps: list[bytearray] = [self.taken]

    def add_device(self, geometry: Geometry) -> None:
        """The units of the next device (an ADD_DAXDEV's), its metadata area taken."""
        self.geometries.append(geometry)
        nunits = geometry.dev_size // self.unit
        self.maps.append(bytearray(nunits))
        reserved = self.reserved_units(len(self.maps) - 1)
        self.maps[-1][:reserved] = b"\1" * reserved

    def span(self, extent: fmt.Extent) -> range:
        """The units of `extent` on its own device (index them in maps[extent.devindex])."""
        return range(*self._bounds(extent)[1:])

    def _bounds(self, extent: fmt.Extent) -> tuple[bytearray, int, int]:
        """The map of the extent's device and the units [start, stop) it touches there, inside
        the device's whole units."""
        taken = self.maps[extent.devindex]
        start, stop = extent_units(self.unit, len(taken), extent)
        return taken, start, stop

    def first_taken(self, extents: Sequence[fmt.Extent]) -> tuple[int, int] | None:
        """(devindex, unit) of the first unit of `extents` that is already taken, or None."""
        for extent in extents:
            taken, start, stop = self._bounds(extent)
            found = taken.find(1, start, stop)
            if found >= 0:
                return extent.devindex, found
        return None

    def claim(self, extents: Sequence[fmt.Extent]) -> None:
        for extent in extents:
            taken, start, stop = self._bounds(extent)
            taken[start:stop] = b"\1" * (stop - start)

    def release(self, extents: Sequence[fmt.Extent]) -> None:
        """Undo claim() of space that was never logged (a writer's abandoned reservation), of a
        file famfs-fuse-mount no longer serves (its model is of live files, not of the log), or
        of the files a RECLAIM names (their units are free from that entry on)."""
        for extent in extents:
            taken, start, stop = self._bounds(extent)
            taken[start:stop] = bytes(stop - start)

    def find_free(self, count: int, start: int = 0, stop: int | None = None, device: int = 0) -> int | None:
        """First unit of the first run of `count` free units inside [start, stop) of `device`, or None."""
        taken = self.maps[device]
        stop = len(taken) if stop is None else min(stop, len(taken))
        start = max(start, self.first_data_unit if device == 0 else self.reserved_units(device))
        if count <= 0 or stop - start < count:
            return None
        found = taken.find(bytes(count), start, stop)
        return None if found < 0 else found

    def device_units(self, device: int) -> int:
        return len(self.maps[device])

    def reserved_units(self, device: int) -> int:
        """The units of `device` before its data area (superblock region, and the log on device 0)."""
        return min(fmt.round_up(self.geometries[device].data_start, self.unit) // self.unit, len(self.maps[device]))

    def device_free_units(self, device: int) -> int:
        return self.maps[device].count(0)

    @property
    def total_units(self) -> int:
        """Units of every device (nunits is the primary's alone)."""
        return sum(len(taken) for taken in self.maps)

    @property
    def used_units(self) -> int:
        return self.total_units - self.free_units

    @property
    def free_units(self) -> int:
        return sum(taken.count(0) for taken in self.maps)

    def image(self) -> bytes:
        """Every device's map, in devindex order (the agent's saved units)."""
        return b"".join(self.maps)

    def load_image(self, raw: bytes) -> bool:
        """Take back image() of the same devices; False (nothing changed) if the sizes differ."""
        if len(raw) != self.total_units:
            return False
        at = 0
        for taken in self.maps:
            taken[:] = raw[at:at + len(taken)]
            at += len(taken)
        return True


class Model(Protocol):
    """What the rules read of the log before the entry being checked."""

    units: Units

    def kind(self, relpath: str) -> Kind | None:
        """DIR or FILE if a live directory or file has that path, else None ("" is the root)."""

    def holds(self, relpath: str, index: int, entry: fmt.FileEntry) -> bool:
        """Whether the live file at `relpath` is the one FILE entry `index` (= `entry`) made."""

    def daxdev_uuids(self) -> Sequence[uuid.UUID]:
        """The daxdev table in index order; device 0 is the superblock's."""

    def dir_index(self, relpath: str) -> int | None:
        """The index of the MKDIR entry that made the live directory `relpath`, else None."""

    def dir_empty(self, relpath: str) -> bool:
        """Whether the live directory `relpath` holds no live file or directory."""

    def deleted_by(self, file_index: int) -> int | None:
        """The index of the accepted DELETE of FILE entry `file_index`, if that file was deleted
        and no RECLAIM has named it yet; else None (never a file, live, or already reclaimed)."""


EntryAt = Callable[[int], fmt.Entry]  # decode an earlier slot (raises fmt.EntryError)


# --- the rules ------------------------------------------------------------------------------


def name_not_reserved(relpath: str) -> None:
    """`.meta` at the root holds the superblock and log files every mount shows (upstream's)."""
    if relpath == META_DIR or relpath.startswith(META_DIR + "/"):
        raise Violation(name_not_reserved, f"{META_DIR} is reserved for the file system's metadata files")


def owner_valid(uid: int, gid: int) -> None:
    """(uid_t)-1 is not an owner: chown(2) reads it as "leave unchanged", so no host can apply it."""
    if NO_ID in (uid, gid):
        raise Violation(owner_valid, f"owner {uid}:{gid}: {NO_ID} is not a valid uid or gid")


def parent_is_directory(model: Model, relpath: str) -> None:
    parent = relpath.rpartition("/")[0]
    if model.kind(parent) is not Kind.DIR:
        raise Violation(parent_is_directory, f"parent directory {parent!r} does not exist")


def path_free(model: Model, relpath: str) -> None:
    """No two live names alike: upstream's readers keep the first entry for a path."""
    kind = model.kind(relpath)
    if kind is not None:
        raise Violation(path_free, f"a {kind.value} of that name exists")


def extents_on_logged_device(entry: fmt.FileEntry, ndevices: int) -> None:
    """Device 0 is the primary; device N > 0 exists from the ADD_DAXDEV that logged index N on."""
    for n, extent in enumerate(entry.all_extents()):
        if extent.devindex >= ndevices:
            raise Violation(extents_on_logged_device, f"extent {n}: devindex {extent.devindex}, but only devices "
                                                      f"0..{ndevices - 1} are logged")


def extents_not_empty(entry: fmt.FileEntry) -> None:
    for n, extent in enumerate(entry.all_extents()):
        if extent.length == 0:
            raise Violation(extents_not_empty, f"extent {n}: zero length")


def extents_aligned(entry: fmt.FileEntry, geometry: Geometry) -> None:
    for n, extent in enumerate(entry.all_extents()):
        if extent.offset % geometry.alloc_unit:
            raise Violation(extents_aligned, f"extent {n}: offset {extent.offset:#x} not aligned to {geometry.alloc_unit:#x}")


def extents_past_log(entry: fmt.FileEntry, devices: Sequence[Geometry]) -> None:
    """File data never lands on the superblock or the log (docs/format.md §9 item 6), nor on an
    added device's superblock region. Devices past `devices`: as extents_inside_device."""
    for n, extent in enumerate(entry.all_extents()):
        if extent.devindex >= len(devices):
            continue
        geometry = devices[extent.devindex]
        if extent.offset < geometry.data_start:
            raise Violation(extents_past_log, f"extent {n}: offset {extent.offset:#x} overlaps the superblock/log "
                                              f"(data starts at {geometry.data_start:#x})")


def extents_inside_device(entry: fmt.FileEntry, devices: Sequence[Geometry]) -> None:
    """Inside its device's whole allocation units (upstream never checks, and its allocator can
    hand out the partial unit past the last whole one: docs/format.md §9 item 11). Extents on a
    device past `devices` are check_extents' business (see there)."""
    for n, extent in enumerate(entry.all_extents()):
        if extent.devindex >= len(devices):
            continue
        geometry = devices[extent.devindex]
        if (stop := extent.end) <= geometry.units_end:
            continue
        if stop > geometry.dev_size:
            raise Violation(extents_inside_device, f"extent {n}: [{extent.offset:#x}, {stop:#x}) "
                                                   f"past the device end {geometry.dev_size:#x}")
        raise Violation(extents_inside_device, f"extent {n}: [{extent.offset:#x}, {stop:#x}) "
                                               f"past the last whole allocation unit (ends at {geometry.units_end:#x})")


def extents_disjoint(entry: fmt.FileEntry) -> None:
    """The extents of one file do not overlap each other."""
    extents = entry.all_extents()
    if len(extents) < 2:
        return  # most files: nothing to compare (and this runs for every entry replayed)
    ordered = sorted(extents, key=lambda e: (e.devindex, e.offset))
    for before, after in itertools.pairwise(ordered):
        if after.devindex == before.devindex and after.offset < before.end:
            raise Violation(extents_disjoint, f"extents overlap at {after.offset:#x}")


def stripes_well_formed(entry: fmt.FileEntry) -> None:
    """Strips are equal, whole multiples of a power-of-two chunk (docs/format.md §4.3's mapping needs it)."""
    for stripe in entry.stripes:
        chunk = stripe.chunk_size
        if chunk == 0 or chunk & (chunk - 1):
            raise Violation(stripes_well_formed, f"chunk size {chunk:#x} is not a power of two")
        if len({strip.length for strip in stripe.strips}) != 1 or stripe.strips[0].length % chunk:
            raise Violation(stripes_well_formed, "strips are not equal whole multiples of the chunk size")


def size_fits(entry: fmt.FileEntry) -> None:
    if entry.size > entry.capacity():
        raise Violation(size_fits, f"size {entry.size} exceeds the {entry.capacity()} bytes of its extents")


def space_unclaimed(model: Model, entry: fmt.FileEntry) -> None:
    """No unit of the file is held by an earlier file, live or deleted and not yet reclaimed (a
    deleted file's units are reused only after a RECLAIM: docs/reclaim.md says why that is safe)."""
    found = model.units.first_taken(entry.all_extents())
    if found is not None:
        device, unit = found
        where = f" of device {device}" if device else ""
        raise Violation(space_unclaimed, f"allocation unit at {unit * model.units.unit:#x}{where} is already held by another file")


def _target_earlier(rule: Callable[..., object], word: str, index: int, target_index: int) -> None:
    """DELETE's and SETATTR's rule that the entry they name comes before them."""
    if not 0 <= target_index < index:
        raise Violation(rule, f"{word} names entry {target_index}, not an earlier entry")


def _target_of_path(rule: Callable[..., object], word: str, entry: fmt.DeleteEntry | fmt.SetattrEntry,
                    entry_at: EntryAt, kinds: type | tuple[type, ...], kinds_name: str) -> fmt.Entry:
    """DELETE's and SETATTR's rule that the slot they name holds an entry of `kinds` for this very
    path; returns it."""
    try:
        target = entry_at(entry.target_index)
    except fmt.EntryError as err:
        raise Violation(rule, f"{word} target is not a valid entry ({err})") from None
    if not isinstance(target, kinds):
        raise Violation(rule, f"{word} target entry {entry.target_index} is a {type(target).__name__}, not {kinds_name}")
    if target.relpath != entry.relpath:  # type: ignore[union-attr]  (FILE and MKDIR have one)
        raise Violation(rule, f"{word} target entry {entry.target_index} is {target.relpath!r}, not this path")  # type: ignore[union-attr]
    return target


def delete_target_earlier(index: int, entry: fmt.DeleteEntry) -> None:
    _target_earlier(delete_target_earlier, "DELETE", index, entry.target_index)


def delete_target_is_that_file(entry: fmt.DeleteEntry, entry_at: EntryAt) -> fmt.FileEntry:
    """The target slot holds a FILE entry for this very path; returns it."""
    victim = _target_of_path(delete_target_is_that_file, "DELETE", entry, entry_at, fmt.FileEntry, "a FILE entry")
    assert isinstance(victim, fmt.FileEntry)
    return victim


def delete_target_live(model: Model, entry: fmt.DeleteEntry, victim: fmt.FileEntry) -> None:
    if model.kind(entry.relpath) is not Kind.FILE:
        raise Violation(delete_target_live, "DELETE of a file that does not exist")
    if not model.holds(entry.relpath, entry.target_index, victim):
        raise Violation(delete_target_live, f"DELETE target entry {entry.target_index} is not the live file at this path")


def rmdir_target_is_that_directory(index: int, entry: fmt.RmdirEntry, model: Model) -> None:
    """RMDIR names the MKDIR entry that made the live directory at its path (an earlier entry)."""
    made_by = model.dir_index(entry.relpath)
    if made_by is None or made_by < 0:  # the root (-1) is no entry's and is never removed
        raise Violation(rmdir_target_is_that_directory, "RMDIR of a directory that does not exist")
    if entry.target_index != made_by or not entry.target_index < index:
        raise Violation(rmdir_target_is_that_directory, f"RMDIR target entry {entry.target_index} is not the MKDIR "
                                                        f"of the live directory at this path (entry {made_by})")


def rmdir_directory_empty(model: Model, entry: fmt.RmdirEntry) -> None:
    """Only an empty directory goes: a file or directory below it would lose its parent."""
    if not model.dir_empty(entry.relpath):
        raise Violation(rmdir_directory_empty, "RMDIR of a directory that is not empty")


def setattr_target_earlier(index: int, entry: fmt.SetattrEntry) -> None:
    _target_earlier(setattr_target_earlier, "SETATTR", index, entry.target_index)


def setattr_target_is_that_entry(entry: fmt.SetattrEntry, entry_at: EntryAt) -> fmt.FileEntry | fmt.MkdirEntry:
    """The target slot holds the FILE or MKDIR entry of this very path; returns it."""
    target = _target_of_path(setattr_target_is_that_entry, "SETATTR", entry, entry_at, (fmt.FileEntry, fmt.MkdirEntry),
                             "a FILE or MKDIR entry")
    assert isinstance(target, fmt.FileEntry | fmt.MkdirEntry)
    return target


def setattr_target_live(model: Model, entry: fmt.SetattrEntry, target: fmt.FileEntry | fmt.MkdirEntry) -> None:
    """The target made the live file or directory at the path now (not an earlier one of that name)."""
    if isinstance(target, fmt.FileEntry):
        if model.kind(entry.relpath) is not Kind.FILE or not model.holds(entry.relpath, entry.target_index, target):
            raise Violation(setattr_target_live, f"SETATTR target entry {entry.target_index} is not the live file "
                                                 f"at this path")
    elif model.dir_index(entry.relpath) != entry.target_index:
        raise Violation(setattr_target_live, f"SETATTR target entry {entry.target_index} is not the MKDIR of the live "
                                             f"directory at this path")


def reclaim_targets_distinct(entry: fmt.ReclaimEntry) -> None:
    """No file named twice: its units would be freed twice, the second time maybe another file's."""
    files = [file_index for file_index, _ in entry.targets]
    if len(set(files)) != len(files):
        raise Violation(reclaim_targets_distinct, "RECLAIM names a file more than once")


def reclaim_targets_earlier(index: int, entry: fmt.ReclaimEntry) -> None:
    """Each pair is (FILE, DELETE), the FILE before its DELETE, both before the RECLAIM; or a
    HOLD named twice (a deleted file a compaction carried over is its own DELETE:
    reclaim_target_deleted tells the two apart)."""
    for file_index, delete_index in entry.targets:
        if not 0 <= file_index <= delete_index < index:
            raise Violation(reclaim_targets_earlier, f"RECLAIM pair ({file_index}, {delete_index}) is not a FILE entry "
                                                     f"and a later DELETE (or a HOLD twice), both before entry {index}")


def reclaim_target_deleted(model: Model, entry: fmt.ReclaimEntry) -> None:
    """Each pair names a deleted file and the DELETE that deleted it, not yet reclaimed. The
    model knows which DELETE was accepted: a rejected DELETE naming the same FILE never deleted
    it, and a file reclaimed once may already hold another file's data."""
    for file_index, delete_index in entry.targets:
        by = model.deleted_by(file_index)
        if by is None:
            raise Violation(reclaim_target_deleted, f"RECLAIM names entry {file_index}, which is not a deleted file "
                                                    f"awaiting reclaim (live, not a file, or already reclaimed)")
        if by != delete_index:
            raise Violation(reclaim_target_deleted, f"RECLAIM names DELETE {delete_index} for entry {file_index}, "
                                                    f"which DELETE {by} deleted")


def fence_names_a_host(entry: fmt.FenceEntry) -> None:
    """A slot of the host table, and an incarnation (incarnations are nonzero); incarnation 0 with
    the nil UUID names a damaged slot (reason 3: its record cannot be read, docs/reclaim.md)."""
    if not 0 <= entry.slot < fmt.HOST_SLOTS:
        raise Violation(fence_names_a_host, f"FENCE of slot {entry.slot}, outside 0..{fmt.HOST_SLOTS - 1}")
    damaged = entry.incarnation == 0
    if damaged and (entry.system_uuid.int != 0 or entry.reason is not fmt.FenceReason.RECORD_LOST):
        raise Violation(fence_names_a_host, "FENCE of incarnation 0 must be a damaged slot's (nil UUID, reason 3)")
    if not damaged and entry.system_uuid.int == 0:
        raise Violation(fence_names_a_host, "FENCE of a host with the nil system UUID")


def daxdev_dense(model: Model, entry: fmt.AddDaxdevEntry) -> None:
    expected = len(model.daxdev_uuids())
    if entry.dev_index != expected:
        raise Violation(daxdev_dense, f"daxdev index {entry.dev_index} is not the next one ({expected})")


def daxdev_sized(entry: fmt.AddDaxdevEntry) -> None:
    if entry.dev_size == 0:
        raise Violation(daxdev_sized, f"daxdev {entry.dev_index} has size 0")


def daxdev_unique(model: Model, entry: fmt.AddDaxdevEntry) -> None:
    if entry.dev_uuid in model.daxdev_uuids():
        raise Violation(daxdev_unique, f"daxdev UUID {entry.dev_uuid} is already in the table")


def daxdev_holds_data(entry: fmt.AddDaxdevEntry, geometry: Geometry) -> None:
    """An added device holds at least one allocation unit past its superblock region (docs/devices.md)."""
    if entry.dev_size < fmt.SECONDARY_DATA_START + geometry.alloc_unit:
        raise Violation(daxdev_holds_data, f"daxdev {entry.dev_index}: {entry.dev_size} bytes cannot hold one allocation "
                                           f"unit past the superblock region ({fmt.SECONDARY_DATA_START:#x})")


def device_geometry(dev_size: int, primary: Geometry) -> Geometry:
    """An added device's geometry: its own size, no log (data past the superblock region), the
    primary's unit."""
    return Geometry(dev_size, 0, primary.alloc_unit)


# --- applying them --------------------------------------------------------------------------


def check_extents(entry: fmt.FileEntry, geometry: Geometry, *, metadata: bool = False,
                  devices: Sequence[Geometry] | None = None) -> None:
    """The geometry rules of one file on its own (no other file consulted). `metadata`: the
    `.meta` files, which map the superblock and the log themselves (only that bound is lifted).
    `devices`: every logged device's geometry by devindex (the rule book's check). Without it
    only the primary's bounds are checked: a reader of a shadow file (the mount, famfs.open)
    then compares the whole entry with the log's, which these rules passed (ShadowCheck)."""
    if devices is None:
        devices = (geometry,)
    else:
        extents_on_logged_device(entry, len(devices))
    extents_not_empty(entry)
    extents_aligned(entry, geometry)
    if not metadata:
        extents_past_log(entry, devices)
    extents_inside_device(entry, devices)
    extents_disjoint(entry)
    stripes_well_formed(entry)
    size_fits(entry)


def check_new_name(model: Model, relpath: str, uid: int, gid: int) -> None:
    """The rules of a new FILE or MKDIR name (the writer asks before it allocates anything)."""
    name_not_reserved(relpath)
    owner_valid(uid, gid)
    parent_is_directory(model, relpath)
    path_free(model, relpath)


def check(index: int, entry: fmt.Entry, model: Model, geometry: Geometry, entry_at: EntryAt) -> None:
    """Every rule for entry `index` against the log before it; the first broken one raises
    Violation. Rules that need only memory come before the ones that may touch the disk."""
    match entry:
        case fmt.FileEntry():
            check_extents(entry, geometry, devices=model.units.geometries)
            space_unclaimed(model, entry)
            check_new_name(model, entry.relpath, entry.uid, entry.gid)
        case fmt.MkdirEntry():
            check_new_name(model, entry.relpath, entry.uid, entry.gid)
        case fmt.DeleteEntry():
            delete_target_earlier(index, entry)
            victim = delete_target_is_that_file(entry, entry_at)
            delete_target_live(model, entry, victim)
        case fmt.RmdirEntry():
            rmdir_target_is_that_directory(index, entry, model)
            rmdir_directory_empty(model, entry)
        case fmt.SetattrEntry():
            owner_valid(entry.uid, entry.gid)
            setattr_target_earlier(index, entry)
            target = setattr_target_is_that_entry(entry, entry_at)
            setattr_target_live(model, entry, target)
        case fmt.AddDaxdevEntry():
            daxdev_dense(model, entry)
            daxdev_sized(entry)
            daxdev_unique(model, entry)
            daxdev_holds_data(entry, geometry)
        case fmt.HoldEntry():  # a deleted file carried by a compaction: its units, no name
            check_extents(entry.file, geometry, devices=model.units.geometries)
            space_unclaimed(model, entry.file)
        case fmt.ReclaimEntry():
            reclaim_targets_distinct(entry)
            reclaim_targets_earlier(index, entry)
            reclaim_target_deleted(model, entry)
        case fmt.FenceEntry():
            # A repeated FENCE of one incarnation is valid and changes nothing (the first one
            # already did): no state to check, and a FENCE never gives anything back.
            fence_names_a_host(entry)
        case _:
            raise TypeError(f"not a log entry: {entry!r}")


FenceKey = tuple[uuid.UUID, int]  # (system UUID, incarnation); (nil, 0) with a slot for a damaged slot


# --- the whole model in memory (the writer and fsck) -----------------------------------------


@dataclass(slots=True)
class Namespace:
    """The tree the log describes, by relpath ("" is the root), with its units and daxdevs."""

    units: Units
    daxdevs: list[uuid.UUID]
    dirs: dict[str, int] = field(default_factory=lambda: {"": -1})  # relpath -> MKDIR index
    dir_attrs: dict[str, fmt.MkdirEntry] = field(default_factory=dict)  # relpath -> its MKDIR as a SETATTR changed it
    files: dict[str, tuple[int, fmt.FileEntry]] = field(default_factory=dict)  # relpath -> (FILE index, entry as of SETATTRs)
    deleted: dict[int, fmt.FileEntry] = field(default_factory=dict)  # FILE index -> entry, space kept until reclaimed
    deleted_paths: set[str] = field(default_factory=set)
    deletions: dict[int, int] = field(default_factory=dict)  # FILE index -> its DELETE's index, while in `deleted`
    reclaimed: dict[int, fmt.FileEntry] = field(default_factory=dict)  # FILE index -> entry, space free again
    fenced: dict[FenceKey, int] = field(default_factory=dict)  # fenced host incarnation -> index of its first FENCE
    fenced_damage: dict[tuple[int, int], int] = field(default_factory=dict)  # (slot, CRC of its bytes) -> FENCE index

    @classmethod
    def empty(cls, superblock: fmt.Superblock) -> Namespace:
        return cls(units=Units(Geometry.of(superblock)), daxdevs=[superblock.dev_uuid])

    def kind(self, relpath: str) -> Kind | None:
        if relpath in self.dirs:
            return Kind.DIR
        if relpath in self.files:
            return Kind.FILE
        return None

    def holds(self, relpath: str, index: int, entry: fmt.FileEntry) -> bool:
        live = self.files.get(relpath)
        return live is not None and live[0] == index

    def daxdev_uuids(self) -> Sequence[uuid.UUID]:
        return self.daxdevs

    def dir_index(self, relpath: str) -> int | None:
        return self.dirs.get(relpath)

    def dir_empty(self, relpath: str) -> bool:
        prefix = relpath + "/"
        return not any(path.startswith(prefix) for path in itertools.chain(self.dirs, self.files))

    def deleted_by(self, file_index: int) -> int | None:
        return self.deletions.get(file_index)

    def record(self, index: int, entry: fmt.Entry) -> None:
        """Add an entry that passed check() (or was just appended after passing it)."""
        match entry:
            case fmt.MkdirEntry():
                self.dirs[entry.relpath] = index
            case fmt.FileEntry():
                self.files[entry.relpath] = (index, entry)
                self.units.claim(entry.all_extents())
            case fmt.DeleteEntry():
                _, victim = self.files.pop(entry.relpath)
                self.deleted[entry.target_index] = victim
                self.deletions[entry.target_index] = index
                self.deleted_paths.add(entry.relpath)
            case fmt.RmdirEntry():
                del self.dirs[entry.relpath]
                self.dir_attrs.pop(entry.relpath, None)
            case fmt.SetattrEntry():
                live = self.files.get(entry.relpath)
                if live is not None and live[0] == entry.target_index:
                    self.files[entry.relpath] = (live[0], live[1]._replace(mode=entry.mode, uid=entry.uid, gid=entry.gid))
                else:
                    self.dir_attrs[entry.relpath] = fmt.MkdirEntry(entry.relpath, entry.mode, entry.uid, entry.gid)
            case fmt.AddDaxdevEntry():
                self.daxdevs.append(entry.dev_uuid)
                self.units.add_device(device_geometry(entry.dev_size, self.units.geometries[0]))
            case fmt.HoldEntry():  # deleted before a compaction: reclaimed by a RECLAIM naming (index, index)
                self.units.claim(entry.file.all_extents())
                self.deleted[index] = entry.file
                self.deletions[index] = index
            case fmt.ReclaimEntry():
                for file_index, _ in entry.targets:
                    victim = self.deleted.pop(file_index)
                    del self.deletions[file_index]
                    self.reclaimed[file_index] = victim
                    self.units.release(victim.all_extents())
            case fmt.FenceEntry():
                if entry.incarnation == 0:
                    self.fenced_damage.setdefault((entry.slot, entry.heartbeat), index)
                else:
                    self.fenced.setdefault((entry.system_uuid, entry.incarnation), index)

    def forget_dir(self, relpath: str) -> None:
        """Undo record() of a MKDIR that was not appended after all (a refused `mkdir -p`)."""
        del self.dirs[relpath]

    def shadowed_for_upstream(self, relpath: str) -> bool:
        """A path whose file was deleted: upstream's readers ignore DELETE and keep the first
        entry for a path, so they go on serving the old file at this name (docs/format.md)."""
        return relpath in self.deleted_paths

    def holder(self, unit: int, device: int = 0) -> int | None:
        """The FILE entry (live, or deleted and not reclaimed) holding `unit` of `device`; None for the
        superblock/log. Slow (a scan): for naming cross-links only."""
        for index, entry in itertools.chain(self.files.values(), self.deleted.items()):
            if any(extent.devindex == device and unit in self.units.span(extent) for extent in entry.all_extents()):
                return index
        return None


@dataclass(frozen=True, slots=True)
class Problem:
    """One logged slot that is not a valid entry (`bad_entry`) or breaks a rule (`violation`)."""

    index: int
    bad_entry: fmt.EntryError | None = None
    violation: Violation | None = None
    entry: fmt.Entry | None = None


class LogReader(Protocol):
    superblock: fmt.Superblock

    def entry(self, index: int) -> fmt.Entry: ...

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, fmt.Entry | fmt.EntryError]]: ...


def replay(famfs_log: LogReader, problem: Callable[[Problem], None], *, namespace: Namespace | None = None,
           start: int = 0, stop: int | None = None) -> Namespace:
    """The namespace of every logged entry, calling `problem` for each slot that is bad or breaks
    a rule (that entry is then left out, as the follower leaves it out). The one walk of the log
    behind the writer (which stops at the first problem) and fsck (which lists them all). With
    `namespace` (the log's entries before `start` played), the entries from `start` on are
    played into it; up to `stop` if given (a reader without the device lock reads the count
    once and plays exactly that many), else to the log's end."""
    sb = famfs_log.superblock
    geometry = Geometry.of(sb)
    namespace = Namespace.empty(sb) if namespace is None else namespace
    for index, entry in famfs_log.entries(start, stop):
        if isinstance(entry, fmt.EntryError):
            problem(Problem(index, bad_entry=entry))
            continue
        try:
            check(index, entry, namespace, geometry, famfs_log.entry)
        except Violation as err:
            problem(Problem(index, violation=err, entry=entry))
            continue
        namespace.record(index, entry)
    return namespace
