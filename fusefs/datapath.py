"""File bytes: slices of one shared mapping of each device, at a file's extents.

Extents on the primary are slices of its mapping; extents on an added device (docs/devices.md)
of that device's, opened on first use as the agent's daxdev table names it (famfs.devices.
AddedDevices). A file with an extent on a device this host has not found answers EIO, and
only that file.

A read of a range inside one extent (or one interleave chunk) is answered with a memoryview of
the mapping, no copy; a range that spans pieces is joined. With `copy` the bytes are copied out
of the mapping now (a read under a lease: fusefs/lease.py). The mapping of file offsets to device
offsets, simple and interleaved (docs/format.md §4.3), is famfs.format.device_pieces (with each
piece's device): one copy of the rule; famfs.format.one_piece is its answer for the common read
inside a file's first extent, without the generator.
Where memory is not cache-coherent the device's policy (famfs.cacheflush) drops each piece's lines
before it is read and writes each piece back once stored.
"""

from __future__ import annotations

import errno

from famfs import format as fmt
from famfs.cacheflush import COHERENT
from famfs.device import Device
from famfs.devices import AddedDevices
from famfs.format import device_pieces, one_piece


class DataError(OSError):
    """A read or write the file's fixed size or mapping refuses; errno says how."""

    errno: int  # always given: it is the answer to the request


class DataPath:
    def __init__(self, device: Device, added: AddedDevices | None = None) -> None:
        self.device = device
        self.view = memoryview(device.map)
        self.writable = device.writable
        self.coherence = device.coherence
        self.coherent = device.coherence is COHERENT  # nothing to invalidate before a load
        self.added = added
        self.views: dict[int, memoryview] = {0: self.view}  # by devindex, each device's whole mapping

    def _view(self, devindex: int) -> memoryview:
        view = self.views.get(devindex)
        if view is not None:
            return view
        found = self.added.device(devindex) if self.added is not None else None
        if found is None:  # (AddedDevices logged why, once)
            raise DataError(errno.EIO, f"device {devindex} is not available on this host")
        view = self.views[devindex] = memoryview(found.map)
        return view

    def read(self, entry: fmt.FileEntry, offset: int, length: int, copy: bool = False) -> memoryview | bytes:
        """File bytes [offset, offset + length) (short at the file's end): a view of the mapping
        where they are one piece, or with `copy`, bytes copied out of the mapping now."""
        piece = one_piece(entry, offset, length)  # the common read, inline: no frame more than needed
        if piece is None:
            data = self._pieces(entry, offset, length)
            return bytes(data) if copy else data
        devindex, start, size = piece
        view = self.views.get(devindex)
        if view is None:
            view = self._view(devindex)
        if not self.coherent:
            self.coherence.invalidate(view, start, size)
        return view[start:start + size].tobytes() if copy else view[start:start + size]

    def _pieces(self, entry: fmt.FileEntry, offset: int, length: int) -> memoryview | bytes:
        if offset >= entry.size or length <= 0:
            return b""
        pieces = [(self._view(devindex), start, size) for devindex, start, size in device_pieces(entry, offset, length)]
        for view, start, size in pieces:
            self.coherence.invalidate(view, start, size)
        if len(pieces) == 1:
            view, start, size = pieces[0]
            return view[start:start + size]
        return b"".join(view[start:start + size] for view, start, size in pieces)

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
        for devindex, start, size in device_pieces(entry, offset, len(data)):
            view = self._view(devindex)
            view[start:start + size] = data[done:done + size]
            self.coherence.flush(view, start, size)
            done += size
        return done

    def close(self) -> None:
        """Let go of the mappings (a device can close only once no slice is left)."""
        for view in self.views.values():
            view.release()
