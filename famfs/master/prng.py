"""Upstream famfs's fill/verify pattern (testlib/random_buffer.c, xoroshiro128+; docs/format.md §7).

`famfs creat --randomize -S seed` fills a file with this stream and `famfs verify -S seed` checks
it, so a file we fill verifies with upstream's tool and the other way round. The seed is cut to
32 bits as upstream's `unsigned int` parameter does; each 4 bytes of the file are the low 32 bits
of one xoroshiro128+ output, little-endian; a tail shorter than 4 bytes is the first bytes of
one more word.

Speed, pure Python: stepping the generator once per word runs at about 17 MB/s. xoroshiro128+'s
state update is linear over GF(2), so the state n words ahead is M^n times the 128-bit state.
A run of words is cut into up to MAX_LANES lanes of MAX_STEPS consecutive words; each lane's start
state comes from the one before by a jump matrix (M^steps as byte-indexed tables of its columns),
and all lanes then step together: their states sit side by side, 64 bits a lane, in two big ints
that whole-int shifts, masks and XORs advance at once ("SWAR"). Each step gives one word per lane,
which a strided memoryview copy puts in place within the lane's span of the block. Measured on
64 MiB: about 200 MB/s to fill and 185 MB/s to verify in 1 MiB pieces, against 17-18 MB/s
stepping per word (bench/bench_famfsctl.py, "fill pattern"). Runs under 64 KiB step per word.
"""

from __future__ import annotations

import array
import functools
import math
import operator
import sys
import threading
from collections.abc import Iterable, Iterator

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
STATE_BYTES = 16  # s0 in the low 64 bits of a state int, s1 in the high 64
MAX_LANES = 1024
MAX_STEPS = 1536  # words per lane in a full block (6 MiB); strides of 1024 words or more that are
# powers of two run a third slower, by cache conflicts in the strided writes
SMALL_STEPS = 512  # the most words per lane in a shorter block, a power of two: few jump tables
MIN_FAST_WORDS = 16384  # 64 KiB: below it, a new process spends longer making jump tables than stepping
BLOCK_WORDS = MAX_LANES * MAX_STEPS  # words of pattern per yielded block, at most

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
    """The endless stream of 32-bit pattern words for `seed` (low half of each xoroshiro128+ output),
    one generator step per word."""
    s0, s1 = seed_state(seed)
    state = s0 | s1 << 64
    while True:
        yield ((state & MASK64) + (state >> 64)) & MASK32
        state = step_state(state)


def step_state(state: int) -> int:
    """The state (s0 | s1 << 64) one word later."""
    s0, s1 = state & MASK64, state >> 64
    s1 ^= s0
    s0 = (((s0 << 55) | (s0 >> 9)) ^ s1 ^ (s1 << 14)) & MASK64
    s1 = ((s1 << 36) | (s1 >> 28)) & MASK64
    return s0 | s1 << 64


def _byte_tables(columns: list[int]) -> list[list[int]]:
    """A 128x128 bit matrix, given by the images of the 128 unit vectors, as one table per state
    byte: tables[i][b] is the XOR of the columns that byte value b at byte i selects."""
    tables = []
    for byte in range(STATE_BYTES):
        table = [0]
        for column in columns[8 * byte:8 * byte + 8]:  # bit k of the byte doubles the table
            table += [entry ^ column for entry in table]
        tables.append(table)
    return tables


def _apply(tables: list[list[int]], state: int) -> int:
    """Matrix times state vector over GF(2): one table lookup per state byte, XORed."""
    return functools.reduce(operator.xor, map(operator.getitem, tables, state.to_bytes(STATE_BYTES, "little")))


_POWER_COLUMNS: list[list[int]] = [[step_state(1 << bit) for bit in range(8 * STATE_BYTES)]]  # M^(2^i), by i
_POWER_TABLES: list[list[list[int]]] = [_byte_tables(_POWER_COLUMNS[0])]
_POWERS_LOCK = threading.Lock()


def _power_of_two_tables(exponent: int) -> list[list[int]]:
    """M^(2^exponent) as byte tables, squaring up from the largest one made so far."""
    with _POWERS_LOCK:  # two threads extending the list at once would misnumber the powers
        while len(_POWER_TABLES) <= exponent:
            square = [_apply(_POWER_TABLES[-1], column) for column in _POWER_COLUMNS[-1]]
            _POWER_COLUMNS.append(square)
            _POWER_TABLES.append(_byte_tables(square))
        return _POWER_TABLES[exponent]


def jump(state: int, count: int) -> int:
    """The state (s0 | s1 << 64) `count` words later, by one matrix per set bit of `count`."""
    for exponent in range(count.bit_length()):
        if count >> exponent & 1:
            state = _apply(_power_of_two_tables(exponent), state)
    return state


@functools.lru_cache(maxsize=16)
def _jump_tables(count: int) -> list[list[int]]:
    """M^count as byte tables: its columns are the unit states `count` words later."""
    if count & (count - 1) == 0:
        return _power_of_two_tables(count.bit_length() - 1)
    return _byte_tables([jump(1 << bit, count) for bit in range(8 * STATE_BYTES)])


@functools.lru_cache(maxsize=16)
def _lane_masks(lanes: int) -> tuple[int, int, int, int, int, int]:
    """Masks repeated over `lanes` 64-bit lanes: the low 32 bits, then the bits at or above / below
    each shift of the step, so that no bit crosses into a neighbouring lane."""

    def every_lane(mask: int) -> int:
        return int.from_bytes(mask.to_bytes(8, "little") * lanes, "little")

    def above(bit: int) -> int:
        return every_lane(MASK64 ^ ((1 << bit) - 1))

    def below(bit: int) -> int:
        return every_lane((1 << bit) - 1)

    return every_lane(MASK32), above(55), below(55), above(14), above(36), below(36)


def _swar_block(state: int, lanes: int, steps: int) -> tuple[bytearray, int]:
    """`lanes * steps` words from `state`, lane j giving words [j*steps, (j+1)*steps); returns
    them little-endian, and the state after them."""
    lane_jump = _jump_tables(steps)
    starts = [state]
    for _ in range(lanes - 1):
        starts.append(_apply(lane_jump, starts[-1]))
    # Byte-copy views only (no int interpretation), so this holds on any host byte order.
    packed = memoryview(b"".join(start.to_bytes(STATE_BYTES, "little") for start in starts)).cast("Q")
    s0 = int.from_bytes(packed[0::2].tobytes(), "little")
    s1 = int.from_bytes(packed[1::2].tobytes(), "little")
    low32, high55, low55, high14, high36, low36 = _lane_masks(lanes)
    lane_bytes = 8 * lanes
    block = bytearray(4 * lanes * steps)
    out = memoryview(block).cast("I")
    for step in range(steps):
        # Each lane's low 32 bits summed alone: a full 64-bit sum would carry into the next lane.
        total = (s0 & low32) + (s1 & low32)
        out[step::steps] = memoryview(total.to_bytes(lane_bytes, "little")).cast("I")[0::2]
        s1 ^= s0
        s0 = (((s0 << 55) & high55) | ((s0 >> 9) & low55)) ^ s1 ^ ((s1 << 14) & high14)
        s1 = ((s1 << 36) & high36) | ((s1 >> 28) & low36)
    last_lane = 64 * (lanes - 1)
    return block, s0 >> last_lane | (s1 >> last_lane) << 64


def _stepped_block(state: int, count: int) -> tuple[bytes, int]:
    """`count` words from `state` one step at a time, little-endian; and the state after them."""
    s0, s1 = state & MASK64, state >> 64
    block = array.array("I", bytes(4 * count))
    for index in range(count):
        block[index] = (s0 + s1) & MASK32
        s1 ^= s0
        s0 = (((s0 << 55) | (s0 >> 9)) ^ s1 ^ (s1 << 14)) & MASK64
        s1 = ((s1 << 36) | (s1 >> 28)) & MASK64
    if sys.byteorder != "little":
        block.byteswap()
    return block.tobytes(), s0 | s1 << 64


class _Stream:
    """The pattern for a seed, handed out a run of whole words at a time."""

    def __init__(self, seed: int) -> None:
        s0, s1 = seed_state(seed)
        self.state = s0 | s1 << 64

    def take(self, count: int) -> Iterator[bytes]:
        """The next `count` words, little-endian, in blocks of at most BLOCK_WORDS words."""
        while count >= MIN_FAST_WORDS:
            if count >= MAX_LANES * MAX_STEPS:
                lanes, steps = MAX_LANES, MAX_STEPS
            else:
                # About sqrt(count) lanes of sqrt(count) steps balances the per-lane jump against
                # the per-step interpreter cost.
                steps = min(SMALL_STEPS, 1 << (math.isqrt(count).bit_length() - 1))
                lanes = min(MAX_LANES, count // steps)
            lane_words, self.state = _swar_block(self.state, lanes, steps)
            count -= lanes * steps
            yield bytes(lane_words)
        if count:
            stepped_words, self.state = _stepped_block(self.state, count)
            yield stepped_words


def pattern_blocks(seed: int, length: int) -> Iterator[bytes]:
    """The first `length` bytes of the pattern for `seed`, in blocks of up to 6 MiB."""
    remaining = length
    for block in _Stream(seed).take(-(-length // 4)):
        piece = block[:remaining]
        remaining -= len(piece)
        yield piece


def pattern(seed: int, length: int) -> bytes:
    return b"".join(pattern_blocks(seed, length))


def first_mismatch(seed: int, pieces: Iterable[bytes | memoryview]) -> int | None:
    """Offset of the first 4-byte word of the data that differs from the pattern (upstream's
    verify reports at that granularity), or None if all of it matches.

    The data comes in consecutive pieces (a file read extent by extent); every piece but the last
    is a whole number of words, so each piece starts on a word of the stream.
    """
    stream = _Stream(seed)
    offset = 0
    for piece in pieces:
        if offset % 4:
            raise ValueError("only the last piece may end inside a word")
        view = memoryview(piece)
        for expected in stream.take(-(-len(view) // 4)):
            got, view = view[:len(expected)], view[len(expected):]
            if got != expected[:len(got)]:
                return offset + _first_different_word(got, expected)
            offset += len(got)
    return None


def _first_different_word(got: memoryview, expected: bytes) -> int:
    """Offset of the first word where `got` differs from `expected` (they do differ), by halving
    the span: each comparison runs in C, where a loop over words would run in Python."""
    start, end = 0, len(got)  # the first difference lies in [start, end)
    while end - start > 4:
        middle = start + (end - start + 4) // 8 * 4  # word-aligned, strictly inside
        if got[start:middle] == expected[start:middle]:
            start = middle
        else:
            end = middle
    return start
