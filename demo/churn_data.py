"""The bytes of a churn file (demo/forever.py): derived from its path and a creation serial, so
any reader can check every byte of any file without being told anything but the path.

A file of `size` bytes created as serial S at `relpath` holds the 4 KiB block
shake_128(f"{relpath}:{S}") repeated from offset 0, except its first 16 bytes: MAGIC and S
(u64 little-endian). A reader reads the serial from the header the first time it looks, then
checks every byte against (relpath, that serial) each time it looks again: memory given to
another file while the reader still holds this one changes the header or the blocks, and is
counted as wrong bytes. Filling and checking run in C (bytes repetition, numpy comparisons).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence

import numpy

from famfs import Master

MAGIC = b"FAMCHURN"
HEADER = struct.Struct("<8sQ")
BLOCK = 4096
CHUNK = 256 * BLOCK  # 1 MiB: what a writer writes and a reader reads at a time


@functools.lru_cache(maxsize=256)
def block(relpath: str, serial: int) -> bytes:
    return hashlib.shake_128(f"{relpath}:{serial}".encode()).digest(BLOCK)


def header(serial: int) -> bytes:
    return HEADER.pack(MAGIC, serial)


def chunks(relpath: str, serial: int, size: int) -> list[tuple[int, bytes | memoryview]]:
    """(offset, bytes) pieces that together are the file's content, at most CHUNK each."""
    pattern = block(relpath, serial) * (CHUNK // BLOCK)
    view = memoryview(pattern)
    pieces: list[tuple[int, bytes | memoryview]] = []
    for offset in range(0, size, CHUNK):
        pieces.append((offset, view[:min(CHUNK, size - offset)]))
    first = bytearray(pieces[0][1])
    first[:HEADER.size] = header(serial)[:len(first)]
    pieces[0] = (0, bytes(first))
    return pieces


def fill(buffer: memoryview, relpath: str, serial: int) -> None:
    """Write the content of (relpath, serial) into a writable mapping of the whole file."""
    for offset, piece in chunks(relpath, serial, len(buffer)):
        buffer[offset:offset + len(piece)] = piece


def serial_of(data: numpy.ndarray) -> int | None:
    """The serial the header names, or None if it is no churn header."""
    if data.size < HEADER.size:
        return None
    magic, serial = HEADER.unpack(data[:HEADER.size].tobytes())
    return serial if magic == MAGIC else None


def wrong_bytes(data: numpy.ndarray, relpath: str, serial: int) -> int:
    """How many bytes of `data` (the whole file, uint8) differ from (relpath, serial)'s content."""
    size = data.size
    if size == 0:
        return 0
    expected = numpy.frombuffer(block(relpath, serial), dtype=numpy.uint8)
    first = numpy.frombuffer(chunks(relpath, serial, min(size, BLOCK))[0][1], dtype=numpy.uint8)
    wrong = int(numpy.count_nonzero(data[:first.size] != first))
    whole = size // BLOCK
    if whole > 1:
        body = data[BLOCK:whole * BLOCK].reshape(whole - 1, BLOCK)
        wrong += int(numpy.count_nonzero(body != expected))
    tail = size - max(whole, 1) * BLOCK
    if tail > 0:
        wrong += int(numpy.count_nonzero(data[size - tail:] != expected[:tail]))
    return wrong


def small_burst(master: Master, previous: Sequence[str], made: Iterable[tuple[str, int]]) -> list[str]:
    """One Master.batch() of the churn's small files (what fills the log): the `previous`
    burst's removed, then a BLOCK file filled as readers check it for each (relpath, serial) of
    `made`; the new burst's paths."""
    paths: list[str] = []
    with master.batch():
        if previous:
            master.remove(*previous)
        for relpath, serial in made:
            with master.create(relpath, BLOCK) as new:
                fill(new.buffer, relpath, serial)
            paths.append(relpath)
    return paths
