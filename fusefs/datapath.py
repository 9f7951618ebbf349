"""File bytes: slices of one shared mapping of the device, at a file's extents.

A read of a range inside one extent (or one interleave chunk) is answered with a memoryview of
the mapping, no copy; a range that spans pieces is joined. The mapping of file offsets to device
offsets, simple and interleaved (docs/format.md §4.3), is famfs.format.device_ranges: one copy of the rule.
Where memory is not cache-coherent the device's policy (famfs.cacheflush) drops each piece's lines
before it is read and writes each piece back once stored.
"""

from __future__ import annotations

import errno

from famfs import format as fmt
from famfs.device import Device
from famfs.format import device_ranges


class DataError(OSError):
    """A read or write the file's fixed size or mapping refuses; errno says how."""

    errno: int  # always given: it is the answer to the request


class DataPath:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.view = memoryview(device.map)
        self.writable = device.writable
        self.coherence = device.coherence

    def read(self, entry: fmt.FileEntry, offset: int, length: int) -> memoryview | bytes:
        if offset >= entry.size or length <= 0:
            return b""
        pieces = list(device_ranges(entry, offset, length))
        for start, size in pieces:
            self.coherence.invalidate(self.view, start, size)
        if len(pieces) == 1:
            start, size = pieces[0]
            return self.view[start:start + size]
        return b"".join(self.view[start:start + size] for start, size in pieces)

    def write(self, entry: fmt.FileEntry, offset: int, data: bytes) -> int:
        """Store what fits below the file size; the caller sees a short count, then EFBIG: a
        famfs file never grows."""
        if not self.writable:
            raise DataError(errno.EROFS, "device is open read-only")
        if not data:
            return 0
        if offset >= entry.size:
            raise DataError(errno.EFBIG, f"write at {offset} is past the fixed size {entry.size}")
        done = 0
        for start, size in device_ranges(entry, offset, len(data)):
            self.view[start:start + size] = data[done:done + size]
            self.coherence.flush(self.view, start, size)
            done += size
        return done

    def close(self) -> None:
        """Let go of the mapping (the device can close only once no slice is left)."""
        self.view.release()
