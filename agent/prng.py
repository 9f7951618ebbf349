"""Upstream famfs's fill/verify pattern (testlib/random_buffer.c, xoroshiro128+; spec §7).

`famfs creat --randomize -S seed` fills a file with this stream and `famfs verify -S seed` checks
it, so a file we fill verifies with upstream's tool and the other way round. The seed is cut to
32 bits as upstream's `unsigned int` parameter does; each 4 bytes of the file are the low 32 bits
of one xoroshiro128+ output, little-endian; a tail shorter than 4 bytes is the first bytes of
one more word.

Pure Python: the xoroshiro arithmetic is the cost (about 16 MB/s on one core; bench/bench_prng.py).
A generator keeps the state in fast locals and `array` packs a block of words in one C call, which
is the best measured among per-word list appends, 4x unrolling and 64-bit packing.
"""

from __future__ import annotations

import array
import itertools
import sys
from collections.abc import Iterable, Iterator

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
BLOCK_WORDS = 1 << 16  # 256 KiB of pattern per yielded block

assert array.array("I").itemsize == 4


def _splitmix64(state: int) -> tuple[int, int]:
    """One splitmix64 step: (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def seed_state(seed: int) -> tuple[int, int]:
    """xoroshiro128+ state from a seed, as upstream seeds it (32-bit seed, two splitmix64 steps)."""
    state = seed & MASK32
    state, s0 = _splitmix64(state)
    _, s1 = _splitmix64(state)
    return s0, s1


def words(seed: int) -> Iterator[int]:
    """The endless stream of 32-bit pattern words for `seed` (low half of each xoroshiro128+ output)."""
    s0, s1 = seed_state(seed)
    while True:
        yield (s0 + s1) & MASK32
        s1 ^= s0
        s0 = (((s0 << 55) | (s0 >> 9)) ^ s1 ^ (s1 << 14)) & MASK64
        s1 = ((s1 << 36) | (s1 >> 28)) & MASK64


def pattern_blocks(seed: int, length: int) -> Iterator[bytes]:
    """The first `length` bytes of the pattern for `seed`, in blocks of up to 256 KiB."""
    stream = words(seed)
    remaining = length
    while remaining > 0:
        block = array.array("I", itertools.islice(stream, min(BLOCK_WORDS, -(-remaining // 4))))
        if sys.byteorder != "little":
            block.byteswap()
        raw = block.tobytes()[:remaining]
        remaining -= len(raw)
        yield raw


def pattern(seed: int, length: int) -> bytes:
    return b"".join(pattern_blocks(seed, length))


def first_mismatch(seed: int, pieces: Iterable[bytes | memoryview]) -> int | None:
    """Offset of the first 4-byte word of the data that differs from the pattern (upstream's
    verify reports at that granularity), or None if all of it matches.

    The data comes in consecutive pieces (a file read extent by extent); every piece but the last
    is a whole number of words, so each piece starts on a word of the stream.
    """
    stream = words(seed)
    offset = 0
    for piece in pieces:
        if offset % 4:
            raise ValueError("only the last piece may end inside a word")
        view = memoryview(piece)
        expected = array.array("I", itertools.islice(stream, -(-len(view) // 4)))
        if sys.byteorder != "little":
            expected.byteswap()
        wanted = expected.tobytes()[:len(view)]
        if view != wanted:
            for word in range(0, len(view), 4):
                if view[word:word + 4] != wanted[word:word + 4]:
                    return offset + word
        offset += len(view)
    return None
