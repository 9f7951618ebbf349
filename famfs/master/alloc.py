"""Space allocation: the bitmap rebuilt from the log, the contiguous and interleaved allocators,
and the mapping of a file's bytes onto the device.

Upstream's algorithms (spec §4), without its bugs (spec §9 item 11): the bitmap only covers
whole allocation units inside the device, every extent is bound-checked before it is marked,
no search runs past the last unit, and a failed interleaved allocation frees exactly the strips
it took. The bitmap is never on media: every writer session rebuilds it from the log.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from famfs import format as fmt

GIB = 1 << 30
FREE = -1
METADATA = -2  # the superblock and log region


class Shuffler(Protocol):
    """Orders the buckets of an interleaved allocation (random.Random, or a model of upstream's
    glibc rand() when reproducing upstream's layout)."""

    def shuffle(self, x: list[int]) -> None: ...


class AllocError(Exception):
    """No room, or a layout request that breaks a rule; the message says which."""


@dataclass(frozen=True, slots=True)
class Collision:
    """One allocation unit claimed twice: by log entry `index`, and before it by `previous`
    (an entry index, or METADATA)."""

    unit: int
    index: int
    previous: int


class Bitmap:
    """One byte per allocation unit (0 free, 1 used), plus which log entry owns each unit.

    A byte per unit (not a bit) lets bytes.find() do the first-fit scan in C: a 64 GiB device is
    32,768 units, a 4 TiB one two million, both small next to the device.
    """

    def __init__(self, dev_size: int, log_len: int, alloc_unit: int = fmt.ALLOC_UNIT) -> None:
        self.alloc_unit = alloc_unit
        # Whole units only: upstream rounds up and can hand out the partial unit past the end.
        self.nunits = dev_size // alloc_unit
        self.used = bytearray(self.nunits)
        self.owner = [FREE] * self.nunits
        self.first_data_unit = fmt.round_up(fmt.data_start(log_len), alloc_unit) // alloc_unit
        for unit in range(min(self.first_data_unit, self.nunits)):
            self.used[unit] = 1
            self.owner[unit] = METADATA

    def units(self, extent: fmt.Extent) -> range:
        first = extent.offset // self.alloc_unit
        return range(first, fmt.round_up(extent.end, self.alloc_unit) // self.alloc_unit)

    def mark(self, extents: tuple[fmt.Extent, ...], index: int) -> list[Collision]:
        """Claim the units of `extents` for entry `index`; report units that were already taken.

        The caller has checked the extents (format.check_extents); units past the device end
        are refused here anyway rather than indexing past the bitmap.
        """
        collisions: list[Collision] = []
        for extent in extents:
            span = self.units(extent)
            if span.stop > self.nunits:
                raise AllocError(f"extent [{extent.offset:#x}, {extent.end:#x}) is past the last allocation unit")
            for unit in span:
                if self.used[unit]:
                    collisions.append(Collision(unit, index, self.owner[unit]))
                else:
                    self.used[unit] = 1
                    self.owner[unit] = index
        return collisions

    def release(self, extents: tuple[fmt.Extent, ...]) -> None:
        """Undo mark() for extents this session just allocated and will not log."""
        for extent in extents:
            for unit in self.units(extent):
                self.used[unit] = 0
                self.owner[unit] = FREE

    @property
    def used_units(self) -> int:
        return sum(self.used)

    @property
    def free_units(self) -> int:
        return self.nunits - self.used_units

    def find_free(self, count: int, start: int = 0, stop: int | None = None) -> int | None:
        """First unit of the first run of `count` free units inside [start, stop), or None."""
        stop = self.nunits if stop is None else min(stop, self.nunits)
        start = max(start, self.first_data_unit)
        if count <= 0 or stop - start < count:
            return None
        found = self.used.find(bytes(count), start, stop)
        return None if found < 0 else found


# --- allocators ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InterleaveParams:
    nbuckets: int
    nstrips: int
    chunk_size: int

    def validate(self, dev_size: int, alloc_unit: int = fmt.ALLOC_UNIT) -> None:
        """Upstream's famfs_validate_interleave_param, plus the CLI's cap of 16 strips."""
        chunk = self.chunk_size
        if chunk <= 0 or chunk & (chunk - 1) or chunk % alloc_unit:
            raise AllocError(f"chunk size {chunk:#x} must be a nonzero power of two and a multiple of {alloc_unit:#x}")
        if not 1 <= self.nbuckets <= fmt.MAX_NBUCKETS:
            raise AllocError(f"nbuckets {self.nbuckets} must be 1..{fmt.MAX_NBUCKETS}")
        if not 1 <= self.nstrips <= min(self.nbuckets, fmt.MAX_STRIPS):
            raise AllocError(f"nstrips {self.nstrips} must be 1..{min(self.nbuckets, fmt.MAX_STRIPS)} (at most nbuckets and {fmt.MAX_STRIPS})")
        if dev_size // self.nbuckets < GIB:
            raise AllocError(f"nbuckets {self.nbuckets}: buckets of a {dev_size}-byte device would be under 1 GiB")


def allocate_contiguous(bitmap: Bitmap, size: int, index: int) -> fmt.Extent:
    """First fit from the start of the data area: one extent of size rounded up to the unit.

    A size-0 file gets one unit: upstream's readers need at least one extent with a nonzero
    offset (spec §3.2), and an empty file copied in must not be lost.
    """
    count = max(1, fmt.round_up(size, bitmap.alloc_unit) // bitmap.alloc_unit)
    unit = bitmap.find_free(count)
    if unit is None:
        raise AllocError(f"no free run of {count * bitmap.alloc_unit} bytes (free: {bitmap.free_units * bitmap.alloc_unit} bytes)")
    extent = fmt.Extent(offset=unit * bitmap.alloc_unit, length=count * bitmap.alloc_unit)
    bitmap.mark((extent,), index)
    return extent


def allocate_interleaved(
    bitmap: Bitmap, size: int, params: InterleaveParams, index: int, rng: Shuffler | None = None
) -> fmt.Stripe | fmt.Extent:
    """Upstream's strided allocation (spec §4.3): `nstrips` equal strips, each from a different
    bucket visited in random order. A file smaller than one chunk falls back to contiguous."""
    au = bitmap.alloc_unit
    params.validate(bitmap.nunits * au, au)
    if size < params.chunk_size:
        return allocate_contiguous(bitmap, size, index)
    chunk_units = params.chunk_size // au
    bucket_units = bitmap.nunits // params.nbuckets
    stripe_units = params.nstrips * chunk_units
    nstripes = -(-(fmt.round_up(size, au) // au) // stripe_units)
    strip_units = nstripes * chunk_units
    order = list(range(params.nbuckets))
    (rng or random.Random()).shuffle(order)
    strips: list[fmt.Extent] = []
    for bucket in order:
        start = bucket * bucket_units
        unit = bitmap.find_free(strip_units, start, start + bucket_units)
        if unit is None:
            continue
        strip = fmt.Extent(offset=unit * au, length=strip_units * au)
        bitmap.mark((strip,), index)
        strips.append(strip)
        if len(strips) == params.nstrips:
            return fmt.Stripe(chunk_size=params.chunk_size, strips=tuple(strips))
    bitmap.release(tuple(strips))
    raise AllocError(f"only {len(strips)} of {params.nbuckets} buckets have {strip_units * au} contiguous free bytes; "
                     f"{params.nstrips} strips needed")
