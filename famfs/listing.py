"""The directory record: one file per shadow directory, in the agent's private area, naming the
log entry of every file the agent wrote in it, so that famfs-fuse-mount lists a directory with
one read instead of one getxattr per file (docs/security.md "Listings").

`<shadow>/.agent/listings/<key>` (key: `record_name(relpath)`, a hash of the directory's relpath)
is append-only: each record is `crc32 u32 | value u32 | name length u16 | name`, little-endian,
the CRC over what follows it; value = the log index + 1 of the file's entry (its FILE, or the
SETATTR that changed it: what its trusted.famfs.file names), 0 = the name was removed. The last
record for a name wins. A reader stops at the first record that is cut short or fails its CRC (a
kill -9 in the middle of an append): the names after it are read file by file, as if they had no
record. The record is a hint: the mount serves nothing from it that the log and the owner map do
not confirm for that very path (famfs.ownership.ShadowCheck.listed_many).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zlib
from collections.abc import Iterable

HEAD = struct.Struct("<IIH")  # crc32 of the rest, log index + 1 (0: removed), name length
_BODY = struct.Struct("<IH")
REMOVED = 0
MAX_NAME = 255  # a path component: NAME_MAX


def record_name(relpath: bytes) -> str:
    """The record file of the shadow directory at `relpath` (b"": root/ itself)."""
    return hashlib.blake2b(relpath, digest_size=16).hexdigest()


def encode(name: bytes, index: int | None) -> bytes:
    """One record: `name` is the file of log entry `index` now; None: `name` was removed."""
    body = _BODY.pack(REMOVED if index is None else index + 1, len(name)) + name
    return struct.pack("<I", zlib.crc32(body)) + body


def encode_all(changes: Iterable[tuple[bytes, int | None]]) -> bytes:
    return b"".join(encode(name, index) for name, index in changes)


def decode(raw: bytes) -> tuple[dict[bytes, int], int]:
    """Name -> log index of every live name in `raw`, and how many of its bytes are whole
    records (the rest, if any, was cut short or damaged: ignored)."""
    names: dict[bytes, int] = {}
    at, end, size = 0, len(raw), HEAD.size
    crc32, unpack = zlib.crc32, HEAD.unpack_from
    while at + size <= end:
        crc, value, length = unpack(raw, at)
        stop = at + size + length
        if stop > end or crc32(raw[at + 4:stop]) != crc:
            break
        name = raw[at + size:stop]
        if value == REMOVED:
            names.pop(name, None)
        else:
            names[name] = value - 1
        at = stop
    return names, at


def read(listings_dir: bytes, relpath: bytes) -> dict[bytes, int]:
    """The record of directory `relpath` in `listings_dir`; empty if it has none, or it is not a
    plain file (nothing is followed, nothing blocks)."""
    try:
        fd = os.open(os.path.join(listings_dir, os.fsencode(record_name(relpath))),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {}
        raw = os.pread(fd, st.st_size, 0)
    except OSError:
        return {}
    finally:
        os.close(fd)
    return decode(raw)[0]


def append(listings_dir: bytes, relpath: bytes, changes: Iterable[tuple[bytes, int | None]]) -> int:
    """Append `changes` to the record of directory `relpath` in one write (made 0600 if new);
    the record's size after it."""
    fd = os.open(os.path.join(listings_dir, os.fsencode(record_name(relpath))),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, encode_all(changes))
        return os.fstat(fd).st_size
    finally:
        os.close(fd)
