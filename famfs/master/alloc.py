"""Space allocation: the simple (contiguous, else in pieces) and interleaved allocators over the
rule book's units.

Upstream's algorithms (docs/format.md §4), without its bugs (docs/format.md §9 item 11): only whole allocation units
inside the device are handed out, no search runs past the last unit, and nothing is marked taken
here: the writer checks the allocated entry against the rule book and claims its units only once
the entry is appended. The units are never on media: every writer session replays the log.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from famfs import format as fmt
from famfs.rules import Units
from famfs.units import describe_size

GIB = 1 << 30


class Shuffler(Protocol):
    """Orders the buckets of an interleaved allocation (random.Random, or a model of upstream's
    glibc rand() when reproducing upstream's layout)."""

    def shuffle(self, x: list[int]) -> None: ...


class AllocError(Exception):
    """No room, or a layout request that breaks a rule; the message says which."""


# --- allocators ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InterleaveParams:
    nbuckets: int
    nstrips: int
    chunk_size: int

    def validate(self, dev_size: int, alloc_unit: int = fmt.ALLOC_UNIT, ndevices: int = 1) -> None:
        """Upstream's famfs_validate_interleave_param, plus the CLI's cap of 16 strips. Over
        `ndevices` devices (the smallest `dev_size`) each has nbuckets buckets."""
        chunk = self.chunk_size
        if chunk <= 0 or chunk & (chunk - 1) or chunk % alloc_unit:
            raise AllocError(f"chunk size {chunk:#x} must be a nonzero power of two and a multiple of {alloc_unit:#x}")
        if not 1 <= self.nbuckets <= fmt.MAX_NBUCKETS:
            raise AllocError(f"nbuckets {self.nbuckets} must be 1..{fmt.MAX_NBUCKETS}")
        most = min(self.nbuckets * ndevices, fmt.MAX_STRIPS)
        if not 1 <= self.nstrips <= most:
            raise AllocError(f"nstrips {self.nstrips} must be 1..{most} (at most nbuckets per device and {fmt.MAX_STRIPS})")
        if dev_size // self.nbuckets < GIB:
            raise AllocError(f"nbuckets {self.nbuckets}: buckets of a {dev_size}-byte device would be under 1 GiB")


def _where(devices: Sequence[int]) -> str:
    """The devices an allocation may use, for its error (nothing for the primary alone)."""
    if tuple(devices) == (0,):
        return ""
    return f" on device{'s' if len(devices) > 1 else ''} {', '.join(map(str, devices))}"


def _count(units: Units, size: int) -> int:
    """The units a simple file of `size` bytes takes. A size-0 file gets one: upstream's readers
    need at least one extent with a nonzero offset (docs/format.md §3.2), and an empty file copied
    in must not be lost."""
    return max(1, fmt.round_up(size, units.unit) // units.unit)


def allocate_contiguous(units: Units, size: int, devices: Sequence[int] = (0,)) -> fmt.Extent:
    """First fit from the start of the data area of the first of `devices` (in their order) with
    a free run: one extent of size rounded up to the unit (docs/devices.md: the device with room)."""
    count = _count(units, size)
    for device in devices:
        unit = units.find_free(count, device=device)
        if unit is not None:
            return fmt.Extent(offset=unit * units.unit, length=count * units.unit, devindex=device)
    free = sum(units.device_free_units(device) for device in devices)
    raise AllocError(f"no free run of {describe_size(count * units.unit)}{_where(devices)} "
                     f"(free: {describe_size(free * units.unit)})")


class _Run(NamedTuple):
    """A free run: `length` units from unit `start` of `device`, the `rank`-th of the allowed devices."""

    rank: int
    device: int
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class _DeviceRuns:
    """The free runs of one allowed device's data area: run i is lengths[i] units from unit
    starts[i], in address order; a length 0 is no run (two taken units side by side)."""

    rank: int
    device: int
    starts: list[int]
    lengths: list[int]

    @classmethod
    def of(cls, units: Units, rank: int, device: int) -> _DeviceRuns:
        # bytes.split in C, not a regex match a run: a device in 2 MiB pieces has a million runs.
        first = units.first_data_unit if device == 0 else units.reserved_units(device)
        lengths = list(map(len, bytes(units.maps[device][first:]).split(b"\1")))
        starts = list(itertools.accumulate([length + 1 for length in lengths], initial=first))
        return cls(rank, device, starts, lengths)

    def run(self, i: int) -> _Run:
        return _Run(self.rank, self.device, self.starts[i], self.lengths[i])

    def largest(self, n: int) -> list[_Run]:
        """Its `n` largest runs (of equal ones, the lower address first)."""
        return [self.run(i) for i in heapq.nlargest(n, range(len(self.lengths)), key=self.lengths.__getitem__)
                if self.lengths[i]]

    def best_fit(self, count: int, taken: set[tuple[int, int]]) -> _Run | None:
        """Its smallest run of at least `count` units not in `taken` ((device, start) pairs)."""
        fits = ((length, i) for i, length in enumerate(self.lengths)
                if length >= count and (self.device, self.starts[i]) not in taken)
        found = min(fits, default=None)
        return None if found is None else self.run(found[1])


def allocate_simple(units: Units, size: int, devices: Sequence[int] = (0,)) -> tuple[fmt.Extent, ...]:
    """A simple file's extents: one when a free run holds it (allocate_contiguous), else up to
    MAX_SIMPLE_EXTENTS pieces from the free runs of `devices` (docs/format.md, Allocation).

    The pieces are the largest runs, whole (the k largest runs are the most room any k runs give,
    so this takes the fewest pieces), but the last piece comes from the smallest run that holds
    the rest (the big runs left stay big); ties go to the earlier device in `devices`, then the
    lower address. The extents are in device-then-address order, the file's bytes in that order.
    """
    try:
        return (allocate_contiguous(units, size, devices),)
    except AllocError:
        pass  # no one run holds it: in pieces
    count = _count(units, size)
    every = [_DeviceRuns.of(units, rank, device) for rank, device in enumerate(devices)]
    candidates = [run for runs in every for run in runs.largest(fmt.MAX_SIMPLE_EXTENTS)]
    largest = heapq.nsmallest(fmt.MAX_SIMPLE_EXTENTS, candidates, key=lambda run: (-run.length, run.rank, run.start))
    if sum(run.length for run in largest) < count:
        free = sum(sum(runs.lengths) for runs in every) * units.unit
        biggest = largest[0].length * units.unit if largest else 0
        raise AllocError(f"no free run of {describe_size(count * units.unit)}, nor {fmt.MAX_SIMPLE_EXTENTS} that hold "
                         f"it{_where(devices)} (free: {describe_size(free)}, largest free run: {describe_size(biggest)})")
    chosen: list[_Run] = []
    for run in largest:
        rest = count - sum(piece.length for piece in chosen)
        if run.length >= rest:
            taken = {(piece.device, piece.start) for piece in chosen}
            fits = [fit for runs in every if (fit := runs.best_fit(rest, taken)) is not None]
            tail = min(fits, key=lambda fit: (fit.length, fit.rank, fit.start))  # `run` fits: never empty
            chosen.append(tail._replace(length=rest))
            break
        chosen.append(run)
    return tuple(fmt.Extent(offset=run.start * units.unit, length=run.length * units.unit, devindex=run.device)
                 for run in sorted(chosen))


def allocate_interleaved(
    units: Units, size: int, params: InterleaveParams, rng: Shuffler | None = None, devices: Sequence[int] = (0,),
) -> fmt.Stripe | tuple[fmt.Extent, ...]:
    """Upstream's strided allocation (docs/format.md §4.3): `nstrips` equal strips, each from a different
    bucket visited in random order. A file smaller than one chunk is simple (allocate_simple).

    Over several devices (docs/devices.md) each device is split into nbuckets buckets, each
    device's buckets are shuffled, and strips are taken from the devices in turn (strip k from
    device k % len(devices) while each has buckets left), so consecutive chunks of the file
    alternate devices. One device: exactly upstream's order."""
    au = units.unit
    params.validate(min(units.device_units(device) for device in devices) * au, au, len(devices))
    if size < params.chunk_size:
        return allocate_simple(units, size, devices)
    chunk_units = params.chunk_size // au
    stripe_units = params.nstrips * chunk_units
    nstripes = -(-(fmt.round_up(size, au) // au) // stripe_units)
    strip_units = nstripes * chunk_units
    shuffler = rng or random.Random()
    orders: list[list[tuple[int, int]]] = []
    for device in devices:
        order = list(range(params.nbuckets))
        shuffler.shuffle(order)
        orders.append([(device, bucket) for bucket in order])
    visits = [pair for turn in itertools.zip_longest(*orders) for pair in turn if pair is not None]
    strips: list[fmt.Extent] = []
    for device, bucket in visits:
        bucket_units = units.device_units(device) // params.nbuckets
        start = bucket * bucket_units
        # Buckets are disjoint, so strips from different buckets never overlap.
        unit = units.find_free(strip_units, start, start + bucket_units, device=device)
        if unit is None:
            continue
        strips.append(fmt.Extent(offset=unit * au, length=strip_units * au, devindex=device))
        if len(strips) == params.nstrips:
            return fmt.Stripe(chunk_size=params.chunk_size, strips=tuple(strips))
    raise AllocError(f"only {len(strips)} of {len(visits)} buckets have {strip_units * au} contiguous free bytes; "
                     f"{params.nstrips} strips needed")
