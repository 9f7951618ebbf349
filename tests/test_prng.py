"""Upstream's xoroshiro128+ fill pattern (spec §7) against bytes made by upstream's own code."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import prng

PRNG_DATA = Path(__file__).parent / "data" / "prng"


@pytest.mark.parametrize(("seed", "name"), [(42, "seed42_10007.bin"), (1, "seed1_4099.bin")])
def test_pattern_matches_upstream(seed: int, name: str) -> None:
    expected = (PRNG_DATA / name).read_bytes()
    assert prng.pattern(seed, len(expected)) == expected


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
