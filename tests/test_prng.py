"""Upstream's xoroshiro128+ fill pattern (docs/format.md §7) against bytes made by upstream's own code."""

from __future__ import annotations

import itertools
import random
import struct
from pathlib import Path

import pytest

from famfs.master import prng

PRNG_DATA = Path(__file__).parent / "data" / "prng"


@pytest.mark.parametrize(("seed", "name"), [(42, "seed42_10007.bin"), (1, "seed1_4099.bin")])
def test_pattern_matches_upstream(seed: int, name: str) -> None:
    expected = (PRNG_DATA / name).read_bytes()
    assert prng.pattern(seed, len(expected)) == expected
    assert prng.pattern(seed, 1 << 20)[:len(expected)] == expected  # the lane-parallel path starts the same
    word_count = -(-len(expected) // 4)
    assert struct.pack(f"<{word_count}I", *itertools.islice(prng.words(seed), word_count))[:len(expected)] == expected


def test_spec_vectors() -> None:
    assert prng.pattern(42, 16).hex() == "985f52e27afb0c3df88c822b402249e5"
    assert prng.pattern(1, 16).hex() == "284991ee66b6fb343a87ca18de441778"


def test_seed_is_cut_to_32_bits_like_upstream() -> None:
    assert prng.pattern(42 + (1 << 32), 64) == prng.pattern(42, 64)


def test_blocks_join_to_the_same_stream_across_block_boundaries() -> None:
    length = prng.BLOCK_WORDS * 4 * 2 + 3  # two whole blocks and a 3-byte tail
    blocks = list(prng.pattern_blocks(7, length))
    assert len(blocks) == 3 and len(blocks[-1]) == 3
    whole = b"".join(blocks)
    assert len(whole) == length
    # The tail is the first 3 bytes of the next word: the same as a stream 1 byte longer, cut.
    assert prng.pattern(7, length + 1)[:length] == whole


def test_first_mismatch_reports_the_word_offset() -> None:
    good = prng.pattern(9, 5001)
    assert prng.first_mismatch(9, [good]) is None
    assert prng.first_mismatch(9, [good[:4096], good[4096:4800], good[4800:]]) is None
    bad = good[:4097] + bytes([good[4097] ^ 0xFF]) + good[4098:]
    assert prng.first_mismatch(9, [bad[:4096], bad[4096:]]) == 4096
    assert prng.first_mismatch(10, [good]) == 0
    with pytest.raises(ValueError, match="inside a word"):
        prng.first_mismatch(9, [good[:5], good[5:]])


def stepped_pattern(seed: int, length: int) -> bytes:
    """The pattern straight from the spec, one generator step and one struct.pack per word: the
    oracle for the lane-parallel path."""
    mask64 = (1 << 64) - 1
    s0, s1 = prng.seed_state(seed)
    out = bytearray()
    for _ in range(-(-length // 4)):
        out += struct.pack("<I", (s0 + s1) & 0xFFFFFFFF)
        s1 ^= s0
        s0 = (((s0 << 55) | (s0 >> 9)) ^ s1 ^ (s1 << 14)) & mask64
        s1 = ((s1 << 36) | (s1 >> 28)) & mask64
    return bytes(out[:length])


def initial_state(seed: int) -> int:
    s0, s1 = prng.seed_state(seed)
    return s0 | s1 << 64


# Long enough for one full block and a shorter one after it.
LONG = prng.BLOCK_WORDS * 4 + 300_001


@pytest.fixture(scope="module")
def long_oracles() -> dict[int, bytes]:
    return {seed: stepped_pattern(seed, LONG) for seed in (0xFFFFFFFF, 3)}


def boundary_lengths() -> list[int]:
    """Lengths at every switch of the fill: stepping vs lanes, lane counts, a full block."""
    bases = [prng.MIN_FAST_WORDS * 4, prng.SMALL_STEPS ** 2 * 4, prng.SMALL_STEPS * prng.MAX_LANES * 4,
             prng.BLOCK_WORDS * 4]
    return sorted({base + delta for base in bases for delta in (-5, -4, -1, 0, 1, 3, 4, 2049)})


@pytest.mark.parametrize("seed", [0xFFFFFFFF, 3])
def test_lane_parallel_fill_equals_stepping_at_boundaries(seed: int, long_oracles: dict[int, bytes]) -> None:
    oracle = long_oracles[seed]
    for length in [*boundary_lengths(), LONG]:
        assert prng.pattern(seed, length) == oracle[:length], length


def test_lane_parallel_fill_equals_stepping_for_random_seeds_and_lengths() -> None:
    chooser = random.Random(20261124)
    for _ in range(12):
        seed = chooser.choice([chooser.getrandbits(32), chooser.getrandbits(64), 0, 0xFFFFFFFF, 1 << 32])
        length = chooser.randrange(prng.MIN_FAST_WORDS * 4 - 8, 600_000)
        assert prng.pattern(seed, length) == stepped_pattern(seed, length), (seed, length)


def test_seeds_over_32_bits_fill_as_their_low_32_bits() -> None:
    length = prng.MIN_FAST_WORDS * 4 + 7
    assert prng.pattern(0x1_FFFF_FFFF, length) == prng.pattern(0xFFFFFFFF, length)
    assert prng.pattern(0xABCD_0000_0005, length) == stepped_pattern(5, length)


def test_jump_equals_single_steps() -> None:
    chooser = random.Random(7)
    for count in [0, 1, 2, 3, 511, 512, 1536, *(chooser.randrange(1, 5000) for _ in range(6))]:
        state = initial_state(chooser.getrandbits(32))
        stepped = state
        for _ in range(count):
            stepped = prng.step_state(stepped)
        assert prng.jump(state, count) == stepped, count


def test_long_jumps_compose() -> None:
    """Jumps too long to check by stepping must still add up: M^a M^b = M^(a+b)."""
    chooser = random.Random(11)
    for _ in range(5):
        state, first, second = initial_state(chooser.getrandbits(32)), chooser.getrandbits(40), chooser.getrandbits(40)
        assert prng.jump(prng.jump(state, first), second) == prng.jump(state, first + second)
        assert prng.jump(state, first) != state


def test_stream_continues_across_pieces_at_any_word_offset(long_oracles: dict[int, bytes]) -> None:
    """Verify reads a file piece by piece: each piece starts where the stream stopped, in the
    stepped path or the lane-parallel one."""
    oracle = long_oracles[3]
    chooser = random.Random(5)
    for _ in range(4):
        cuts = sorted(chooser.randrange(0, len(oracle) // 4) * 4 for _ in range(chooser.randrange(1, 12)))
        pieces = [oracle[start:end] for start, end in zip([0, *cuts], [*cuts, len(oracle)], strict=True)]
        assert prng.first_mismatch(3, pieces) is None


def test_first_mismatch_finds_one_corrupt_byte_anywhere(long_oracles: dict[int, bytes]) -> None:
    oracle = long_oracles[0xFFFFFFFF]
    chooser = random.Random(3)
    places = [0, 1, 4095, prng.MIN_FAST_WORDS * 4, prng.BLOCK_WORDS * 4 - 1, prng.BLOCK_WORDS * 4, len(oracle) - 1,
              *(chooser.randrange(len(oracle)) for _ in range(10))]
    for place in places:
        bad = bytearray(oracle)
        bad[place] ^= 1 << chooser.randrange(8)
        piece = chooser.choice([1 << 20, prng.MIN_FAST_WORDS * 4 + 4, len(bad)])
        pieces = [bytes(bad[start:start + piece]) for start in range(0, len(bad), piece)]
        assert prng.first_mismatch(0xFFFFFFFF, pieces) == place // 4 * 4, place
        # The first of two corrupt words is the one reported.
        bad[-1] ^= 0xFF
        assert prng.first_mismatch(0xFFFFFFFF, [bytes(bad)]) == place // 4 * 4, place
