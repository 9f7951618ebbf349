"""Allocation: the rule book's units, first-fit contiguous, interleaved (docs/format.md §4) without upstream's bugs (§9.11)."""

from __future__ import annotations

import random

import pytest

from famfs import format as fmt
from famfs.master import alloc
from famfs.rules import Geometry, Units

AU = fmt.ALLOC_UNIT
GIB = 1 << 30
LOG = fmt.DEFAULT_LOG_LEN


def units(dev_size: int) -> Units:
    return Units(Geometry(dev_size=dev_size, log_len=LOG))


def test_units_reserve_superblock_and_log_and_cover_whole_units_only() -> None:
    taken = units(8 * AU + 4096)  # a partial unit at the end
    assert taken.nunits == 8  # upstream would count 9 and could hand out the partial one
    assert taken.first_data_unit == 5  # 2 MiB superblock + 8 MiB log
    assert list(taken.taken) == [1] * 5 + [0] * 3


def test_contiguous_is_first_fit_and_an_empty_file_gets_one_unit() -> None:
    taken = units(32 * AU)
    first = alloc.allocate_contiguous(taken, 5 * (1 << 20))
    assert first == fmt.Extent(offset=5 * AU, length=3 * AU)
    taken.claim((first,))
    assert alloc.allocate_contiguous(taken, 0) == fmt.Extent(offset=8 * AU, length=AU)
    assert alloc.allocate_contiguous(taken, 0) == fmt.Extent(offset=8 * AU, length=AU)  # nothing claimed until logged


def test_contiguous_never_allocates_past_the_device_end() -> None:
    taken = units(8 * AU + 4096)
    last = alloc.allocate_contiguous(taken, 3 * AU)
    assert last.end == 8 * AU
    taken.claim((last,))
    with pytest.raises(alloc.AllocError, match="no free run"):
        alloc.allocate_contiguous(taken, 1)
    assert taken.used_units == 8


def test_first_taken_names_the_first_shared_unit() -> None:
    taken = units(16 * AU)
    assert taken.first_taken((fmt.Extent(offset=6 * AU, length=2 * AU),)) is None
    taken.claim((fmt.Extent(offset=6 * AU, length=2 * AU),))
    assert taken.first_taken((fmt.Extent(offset=7 * AU, length=2 * AU),)) == (0, 7)
    assert taken.first_taken((fmt.Extent(offset=2 * AU, length=AU),)) == (0, 2)  # the log's


@pytest.mark.parametrize(("params", "message"), [
    (alloc.InterleaveParams(nbuckets=4, nstrips=2, chunk_size=0), "chunk size"),
    (alloc.InterleaveParams(nbuckets=4, nstrips=2, chunk_size=3 * AU), "power of two"),
    (alloc.InterleaveParams(nbuckets=4, nstrips=2, chunk_size=4096), "multiple of"),
    (alloc.InterleaveParams(nbuckets=0, nstrips=1, chunk_size=AU), "nbuckets 0"),
    (alloc.InterleaveParams(nbuckets=65, nstrips=2, chunk_size=AU), "nbuckets 65"),
    (alloc.InterleaveParams(nbuckets=4, nstrips=5, chunk_size=AU), "nstrips 5"),
    (alloc.InterleaveParams(nbuckets=32, nstrips=17, chunk_size=AU), "nstrips 17"),
    (alloc.InterleaveParams(nbuckets=4, nstrips=0, chunk_size=AU), "nstrips 0"),
    (alloc.InterleaveParams(nbuckets=16, nstrips=2, chunk_size=AU), "under 1 GiB"),
])
def test_interleave_parameter_rules(params: alloc.InterleaveParams, message: str) -> None:
    with pytest.raises(alloc.AllocError, match=message):
        params.validate(8 * GIB)


def test_interleaved_strips_are_equal_in_distinct_buckets_inside_the_device() -> None:
    params = alloc.InterleaveParams(nbuckets=4, nstrips=4, chunk_size=2 * AU)
    taken = units(4 * GIB + AU + 4096)  # a unit past the last bucket and a partial one
    bucket_bytes = (taken.nunits // 4) * AU
    for index in range(20):
        stripe = alloc.allocate_interleaved(taken, 100 * (1 << 20) + index, params, random.Random(index))
        assert isinstance(stripe, fmt.Stripe) and stripe.nstrips == 4
        assert taken.first_taken(stripe.strips) is None
        taken.claim(stripe.strips)
        assert {strip.offset // bucket_bytes for strip in stripe.strips} == {0, 1, 2, 3}
        assert {strip.length for strip in stripe.strips} == {14 * AU}  # 51 units → 7 stripes of 4 chunks: 7 chunks a strip
        assert all(strip.end <= 4 * bucket_bytes for strip in stripe.strips)  # never past the last bucket


def test_interleaved_small_file_falls_back_to_contiguous() -> None:
    got = alloc.allocate_interleaved(units(4 * GIB), AU - 1, alloc.InterleaveParams(4, 2, 2 * AU), random.Random(1))
    assert got == (fmt.Extent(offset=5 * AU, length=AU),)


def test_failed_interleaved_allocation_takes_nothing() -> None:
    taken = units(4 * GIB)
    bucket_units = taken.nunits // 4
    # Buckets 1 and 3 are full: 2 of 3 wanted strips can be found, and the allocation fails.
    for bucket in (1, 3):
        taken.claim((fmt.Extent(offset=bucket * bucket_units * AU, length=bucket_units * AU),))
    before = bytes(taken.taken)
    with pytest.raises(alloc.AllocError, match="only 2 of 4 buckets"):
        alloc.allocate_interleaved(taken, 64 * AU, alloc.InterleaveParams(4, 3, AU), random.Random(5))
    assert bytes(taken.taken) == before


def test_device_ranges_of_an_interleaved_file_follow_the_chunk_rotation() -> None:
    strips = tuple(fmt.Extent(offset=(100 + 10 * k) * AU, length=4 * AU) for k in range(3))
    entry = fmt.FileEntry(relpath="f", size=10 * AU + 5, mode=0o644, uid=0, gid=0,
                          stripes=(fmt.Stripe(chunk_size=2 * AU, strips=strips),))
    pieces = list(fmt.device_ranges(entry))
    # chunks 0,1,2 → strips 0,1,2 (first chunk of each), chunks 3,4,5 → second chunk of each
    assert pieces == [(100 * AU, 2 * AU), (110 * AU, 2 * AU), (120 * AU, 2 * AU),
                      (102 * AU, 2 * AU), (112 * AU, 2 * AU), (122 * AU, 5)]
    assert list(fmt.device_ranges(entry, 3 * AU, AU)) == [(111 * AU, AU)]


def test_one_piece_is_device_pieces_when_it_answers() -> None:
    """The read's fast path (famfs.format.one_piece) against the rule (device_pieces): equal
    wherever it answers, and it answers every read inside the first extent of a simple file."""
    unit = 16  # small numbers: every offset and length around the edges
    simple = [fmt.FileEntry(relpath="f", size=size, mode=0o644, uid=0, gid=0, extents=extents)
              for size in (0, 1, unit - 1, unit, unit + 3, 3 * unit)
              for extents in ((fmt.Extent(offset=7 * unit, length=unit, devindex=1),),
                                       (fmt.Extent(offset=5 * unit, length=2 * unit),),
                                       (fmt.Extent(offset=9 * unit, length=unit), fmt.Extent(offset=2 * unit, length=2 * unit)))]
    strips = tuple(fmt.Extent(offset=(10 + 4 * k) * unit, length=2 * unit) for k in range(2))
    striped = [fmt.FileEntry(relpath="s", size=size, mode=0o644, uid=0, gid=0,
                             stripes=(fmt.Stripe(chunk_size=unit // 2, strips=strips),)) for size in (5, 3 * unit)]
    answered = 0
    for entry in simple + striped:
        for offset in range(0, 4 * unit + 2):
            for length in (0, 1, 3, unit // 2, unit, 2 * unit, 5 * unit):
                piece = fmt.one_piece(entry, offset, length)
                pieces = list(fmt.device_pieces(entry, offset, length))
                if piece is not None:
                    answered += 1
                    assert [piece] == pieces, (entry, offset, length)
                else:
                    first = entry.extents[0].length if entry.extents else 0
                    assert entry.stripes or not offset < min(entry.size, offset + length) <= first, (entry, offset, length)
    assert answered > 500


def test_device_ranges_of_a_simple_file_span_its_extents_and_stop_at_its_size() -> None:
    extents = (fmt.Extent(offset=50 * AU, length=AU), fmt.Extent(offset=80 * AU, length=2 * AU))
    entry = fmt.FileEntry(relpath="f", size=2 * AU, mode=0o644, uid=0, gid=0, extents=extents)
    assert list(fmt.device_ranges(entry)) == [(50 * AU, AU), (80 * AU, AU)]
    assert list(fmt.device_ranges(entry, AU // 2, AU)) == [(50 * AU + AU // 2, AU // 2), (80 * AU, AU // 2)]


def fragmented(dev_size: int, runs: dict[int, int]) -> Units:
    """Units of a device whose free space is exactly `runs` (first unit: length in units)."""
    taken = units(dev_size)
    taken.claim((fmt.Extent(offset=taken.first_data_unit * AU, length=(taken.nunits - taken.first_data_unit) * AU),))
    taken.release([fmt.Extent(offset=start * AU, length=length * AU) for start, length in runs.items()])
    return taken


def test_simple_is_one_extent_while_one_run_holds_the_file() -> None:
    taken = fragmented(64 * AU, {10: 3, 20: 8})
    assert alloc.allocate_simple(taken, 5 * AU) == (fmt.Extent(offset=20 * AU, length=5 * AU),)


def test_simple_takes_the_largest_runs_then_the_smallest_run_that_holds_the_rest() -> None:
    # Runs of 4, 2, 6, 3 and 5 units: 12 units = the 6 and the 5 whole, then 1 unit from the
    # smallest run that holds it (the 2 at unit 14), not from the 4 the next largest is.
    taken = fragmented(64 * AU, {8: 4, 14: 2, 20: 6, 30: 3, 40: 5})
    before = bytes(taken.taken)
    got = alloc.allocate_simple(taken, 12 * AU - 1)
    assert got == (fmt.Extent(offset=14 * AU, length=AU), fmt.Extent(offset=20 * AU, length=6 * AU),
                   fmt.Extent(offset=40 * AU, length=5 * AU))  # in address order
    assert bytes(taken.taken) == before  # nothing claimed until logged
    assert alloc.allocate_simple(taken, 12 * AU - 1) == got  # deterministic


def test_simple_ties_go_to_the_lower_address() -> None:
    taken = fragmented(64 * AU, {8: 2, 12: 2, 16: 2, 20: 2})
    assert alloc.allocate_simple(taken, 5 * AU) == (fmt.Extent(offset=8 * AU, length=2 * AU),
                                                    fmt.Extent(offset=12 * AU, length=2 * AU),
                                                    fmt.Extent(offset=16 * AU, length=AU))


def test_simple_uses_at_most_sixteen_pieces() -> None:
    runs = {8 + 2 * n: 1 for n in range(fmt.MAX_SIMPLE_EXTENTS + 1)}  # 17 single free units, none adjacent
    taken = fragmented(64 * AU, runs)
    got = alloc.allocate_simple(taken, fmt.MAX_SIMPLE_EXTENTS * AU)
    assert got == tuple(fmt.Extent(offset=start * AU, length=AU) for start in sorted(runs)[:fmt.MAX_SIMPLE_EXTENTS])
    message = "no free run of 34 MiB, nor 16 that hold it (free: 34 MiB, largest free run: 2 MiB)"
    with pytest.raises(alloc.AllocError, match=message.replace("(", r"\(").replace(")", r"\)")):
        alloc.allocate_simple(taken, (fmt.MAX_SIMPLE_EXTENTS + 1) * AU)


def test_simple_pieces_come_from_every_allowed_device() -> None:
    taken = fragmented(64 * AU, {8: 2, 20: 2})
    taken.add_device(Geometry(dev_size=8 * AU, log_len=0))  # an added device: no log
    added = taken.reserved_units(1)
    taken.claim((fmt.Extent(offset=added * AU, length=(8 - added) * AU, devindex=1),))
    taken.release((fmt.Extent(offset=(added + 1) * AU, length=3 * AU, devindex=1),))
    assert alloc.allocate_simple(taken, 5 * AU, (0, 1)) == (
        fmt.Extent(offset=8 * AU, length=2 * AU), fmt.Extent(offset=(added + 1) * AU, length=3 * AU, devindex=1))
    assert alloc.allocate_simple(taken, 3 * AU, (0,)) == (fmt.Extent(offset=8 * AU, length=2 * AU),
                                                          fmt.Extent(offset=20 * AU, length=AU))
    with pytest.raises(alloc.AllocError, match=r"on device 1 \(free: 6 MiB, largest free run: 6 MiB\)"):
        alloc.allocate_simple(taken, 7 * AU, (1,))
