"""Byte compatibility with upstream famfs.

1. Every reference image in tests/data (made by upstream's own code) parses and agrees with its
   expected listing: ops.tsv entry by entry, shadow.ls path by path, fsck.out number by number.
2. Replaying a reference image's ops.tsv through our writer on a fresh device with the same
   UUIDs gives a byte-identical log (upstream's allocation decisions reproduced, the striped one
   with glibc's rand() seeded as the reference run seeded it).
3. An image written by the famfsctl CLI satisfies every rule of docs/format.md §1-§2, checked field by
   field at the spec's offsets with int.from_bytes, independently of famfs/format.py.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from famfs import famfslog
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import alloc, fsck, writer
from famfs.master.mkfs import create_image, mkfs
from tests.conftest import DATA, REFERENCE_IMAGES, parse_size, reference_info
from tests.famfsctl_util import famfsctl

MIB = 1 << 20


def ops(name: str) -> list[list[str]]:
    return [line.split("\t") for line in (DATA / name / "ops.tsv").read_text().splitlines() if line]


def logged_ops(name: str) -> list[list[str]]:
    """The ops that append an entry (a `stripe` line only switches the allocator)."""
    return [op for op in ops(name) if op[0] in ("mkdir", "creat")]


def expected_fsck_numbers(name: str) -> dict[str, int]:
    """The numbers upstream's fsck printed for a reference image."""
    text = (DATA / name / "fsck.out").read_text()

    def count(pattern: str) -> int:
        match = re.search(pattern, text)
        assert match, pattern
        return int(match.group(1))

    return {
        "used": count(r"(\d+) of \d+ entries used"), "slots": count(r"\d+ of (\d+) entries used"),
        "files": count(r"(\d+) files"), "dirs": count(r"(\d+) directories"), "bad": count(r"(\d+) bad log entries"),
        "sum": count(r"Sum of file sizes:\s+(\d+)"), "allocated": count(r"Allocated bytes:\s+(\d+)"),
        "free": count(r"Free space:\s+(\d+)"), "capacity": count(r"Device capacity:\s+(\d+)"),
    }


def shadow_listing(name: str) -> tuple[set[str], set[str]]:
    """(directories, files) of shadow.ls relative to root/, without upstream's .meta files."""
    dirs: set[str] = set()
    files: set[str] = set()
    for line in (DATA / name / "shadow.ls").read_text().splitlines():
        path, attrs = line.split("\t")
        relpath = path.removeprefix("./root").lstrip("/")
        if relpath and relpath != ".meta" and not relpath.startswith(".meta/"):
            (dirs if attrs.endswith(" d") else files).add(relpath)
    return dirs, files


def test_raw_entries_are_the_slots_one_by_one(reference_image: Callable[[str], Path]) -> None:
    """FamfsLog.raw_entries reads slots a chunk at a time: the same bytes as one read per slot,
    over ranges that start and end inside chunks, span several, or hold one slot or none."""
    with Device(reference_image("c_full")) as device:
        famfs_log = FamfsLog(device)
        stop = famfs_log.header().next_index
        chunk = famfslog.RAW_CHUNK
        for start, end in ((0, stop), (0, 0), (5, 6), (chunk - 1, chunk + 1), (chunk + 3, 3 * chunk + 7), (stop - 9, stop)):
            assert list(famfs_log.raw_entries(start, end)) == [famfs_log.raw_entry(index) for index in range(start, end)]


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
def test_reference_image_agrees_with_ops_listing_and_fsck(name: str, reference_image: Callable[[str], Path]) -> None:
    image = reference_image(name)
    info = reference_info(name)
    with Device(image) as device:
        famfs_log = FamfsLog(device)
        sb = famfs_log.superblock
        assert (str(sb.fs_uuid), str(sb.dev_uuid), str(sb.system_uuid)) == (info["fs_uuid"], info["dev_uuid"], info["system_uuid"])
        assert sb.dev_size == parse_size(info["devsize"]) and sb.log_len == int(info["loglen"])
        entries = [entry for _, entry in famfs_log.entries()]
        namespace = writer.load(famfs_log)
        report = fsck.check(device)

    expected = logged_ops(name)
    assert len(entries) == len(expected)
    for entry, op in zip(entries, expected, strict=True):
        if op[0] == "mkdir":
            _, relpath, mode, uid, gid = op
            assert entry == fmt.MkdirEntry(relpath=relpath, mode=int(mode, 8), uid=int(uid), gid=int(gid))
        else:
            _, relpath, size, mode, uid, gid = op
            assert isinstance(entry, fmt.FileEntry)
            assert (entry.relpath, entry.size, entry.mode, entry.uid, entry.gid) == (relpath, int(size), int(mode, 8), int(uid), int(gid))

    dirs, files = shadow_listing(name)
    assert set(namespace.dirs) - {""} == dirs
    assert set(namespace.files) == files

    played = re.search(r"(\d+) log entries; (\d+) new files; (\d+) new directories", (DATA / name / "logplay.out").read_text())
    assert played and tuple(map(int, played.groups())) == (len(entries), len(namespace.files), len(namespace.dirs) - 1)

    numbers = expected_fsck_numbers(name)
    assert report.clean and numbers["bad"] == 0 and report.header is not None
    assert (report.header.next_index, report.header.slots) == (numbers["used"], numbers["slots"])
    assert (report.files, report.directories) == (numbers["files"], numbers["dirs"])
    assert report.file_bytes == numbers["sum"]
    assert report.allocated_bytes == numbers["allocated"]
    assert report.free_bytes == numbers["free"]
    assert report.allocated_bytes + report.free_bytes == numbers["capacity"]


class GlibcShuffle:
    """The bucket order of upstream's strided allocator: Fisher-Yates from the last element
    down, j = rand() % (i + 1), with glibc's rand() (TYPE_3 additive feedback) after srand(seed).
    The reference run of d_striped seeded it with 1 (info.txt: PEER_SRAND=1)."""

    def __init__(self, seed: int) -> None:
        state = [seed]
        for _ in range(30):
            high, low = divmod(state[-1], 127773)
            word = 16807 * low - 2836 * high
            state.append(word + 2147483647 if word < 0 else word)
        state += state[:3]
        self.state = state
        for _ in range(310):
            self._step()

    def _step(self) -> int:
        value = (self.state[-31] + self.state[-3]) & 0xFFFFFFFF
        self.state = self.state[-33:] + [value]
        return value

    def rand(self) -> int:
        return self._step() >> 1

    def shuffle(self, order: list[int]) -> None:
        for i in range(len(order) - 1, 0, -1):
            j = self.rand() % (i + 1)
            order[i], order[j] = order[j], order[i]


def test_glibc_rand_model_gives_glibcs_known_first_outputs() -> None:
    generator = GlibcShuffle(1)
    assert [generator.rand() for _ in range(3)] == [1804289383, 846930886, 1681692777]


def replay(name: str, image: Path, uuid_file: Path) -> None:
    info = reference_info(name)
    uuid_file.parent.mkdir(parents=True, exist_ok=True)
    uuid_file.write_text(info["system_uuid"])
    create_image(image, parse_size(info["devsize"]))
    mkfs(str(image), uuid_file=uuid_file, log_len=int(info["loglen"]), fs_uuid=uuid.UUID(info["fs_uuid"]),
         dev_uuid=uuid.UUID(info["dev_uuid"]))
    layout: alloc.InterleaveParams | None = None
    with writer.session(str(image), uuid_file, rng=GlibcShuffle(int(info.get("PEER_SRAND", "1")))) as current:
        for op in ops(name):
            if op[0] == "stripe":
                nbuckets, nstrips, chunk = int(op[1]), int(op[2]), parse_size(op[3])
                layout = None if nbuckets == 0 else alloc.InterleaveParams(nbuckets, nstrips, chunk)
            elif op[0] == "mkdir":
                current.mkdir(op[1], writer.Ownership(int(op[2], 8), int(op[3]), int(op[4])))
            else:
                current.create(op[1], int(op[2]), writer.Ownership(int(op[3], 8), int(op[4]), int(op[5])), layout=layout)


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
def test_replaying_ops_reproduces_upstreams_log_byte_for_byte(name: str, reference_image: Callable[[str], Path], tmp_path: Path) -> None:
    reference = reference_image(name)
    ours = tmp_path / "ours.img"
    replay(name, ours, tmp_path / "host" / "system_uuid")
    log_len = int(reference_info(name)["loglen"])
    with open(reference, "rb") as theirs_file, open(ours, "rb") as ours_file:
        theirs_meta, ours_meta = theirs_file.read(fmt.LOG_OFFSET + log_len), ours_file.read(fmt.LOG_OFFSET + log_len)
    assert ours_meta[fmt.LOG_OFFSET:] == theirs_meta[fmt.LOG_OFFSET:]
    # The superblock differs only where we fill what upstream leaves unset: dd_uuid and the name.
    assert ours_meta[:112] == theirs_meta[:112]
    assert ours_meta[112:120] == theirs_meta[112:120]  # dd_size


# --- famfsctl's images against the spec, field by field ----------------------------------------


def u32(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset:offset + 4], "little")


def u64(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset:offset + 8], "little")


def crc(raw: bytes) -> int:
    return zlib.crc32(raw) & 0xFFFFFFFF


def relpath_field(raw: bytes) -> str:
    assert len(raw) == 80 and b"\0" in raw
    text, rest = raw.split(b"\0", 1)
    assert rest == bytes(len(rest)), "relpath is NUL-padded"
    assert text and not text.startswith(b"/") and len(text) <= 79
    assert all(part not in (b"", b".", b"..") for part in text.split(b"/"))
    return text.decode()


def zero(raw: bytes) -> bool:
    return raw == bytes(len(raw))


def spec_check(image: Path, uuid_file: Path) -> Iterator[tuple[int, int, bytes]]:
    """Assert docs/format.md §1-§2 on a whole image; yield (index, type, raw entry) for further checks."""
    dev_size = image.stat().st_size
    with open(image, "rb") as device:
        data = device.read(0x200000)
        data += device.read(u64(data, 24))  # the log, whose length the superblock gives
    sb = data[:200]
    assert u64(sb, 0) == 0x87B282FF and u64(sb, 8) == 48
    assert u64(sb, 16) == 0x200000
    log_len = u64(sb, 24)
    assert log_len >= 0x800000 and log_len & (log_len - 1) == 0
    assert u64(sb, 32) == 0x200000
    assert (u32(sb, 40), u32(sb, 44)) == (2, 2)
    assert uuid.UUID(bytes=sb[80:96]) == uuid.UUID(uuid_file.read_text().strip())
    assert not zero(sb[48:64]) and not zero(sb[64:80])
    assert u64(sb, 96) == crc(sb[0:96])
    assert u32(sb, 104) == 0 and zero(sb[108:112])
    assert u64(sb, 112) == dev_size
    assert sb[120:136] == sb[64:80]  # dd_uuid: we set it to the device UUID
    name = sb[136:200]
    assert name.rstrip(b"\0") == str(image).encode()[:64]
    assert zero(data[200:0x200000]), "superblock region beyond the struct is zero"

    log = data[0x200000:0x200000 + log_len]
    assert u64(log, 0) == 0xBADCAFEF00D and u64(log, 8) == log_len
    last_index = u64(log, 16)
    assert last_index == (log_len - 48) // 544 - 1
    assert u64(log, 24) == crc(log[0:24])
    next_seqnum, next_index = u64(log, 32), u64(log, 40)
    assert next_seqnum == next_index <= last_index + 1
    assert zero(log[48 + 544 * next_index:]), "unused slots are zero"

    data_start = 0x200000 + log_len
    claimed: list[tuple[int, int]] = []
    for index in range(next_index):
        entry = log[48 + 544 * index:48 + 544 * (index + 1)]
        assert u64(entry, 0) == index
        kind = u32(entry, 8)
        assert zero(entry[12:16])
        assert u64(entry, 536) == crc(entry[0:536])
        if kind == 0:  # FILE
            assert u32(entry, 24) == 2  # fm_flags ALL_HOSTS_RW
            relpath_field(entry[40:120])
            ext_type = u32(entry, 120)
            assert zero(entry[124:128]) and zero(entry[132:136])
            count = u32(entry, 128)
            if ext_type == 0:
                assert 1 <= count <= 16
                extents = [(u64(entry, 136 + 24 * i + 8), u64(entry, 136 + 24 * i + 16)) for i in range(count)]
                assert all(u64(entry, 136 + 24 * i) == 0 for i in range(count))  # devindex
                assert zero(entry[136 + 24 * count:536])
            else:
                assert ext_type == 1 and count == 1
                nstrips, chunk = u64(entry, 136), u64(entry, 144)
                assert 1 <= nstrips <= 16 and chunk and chunk & (chunk - 1) == 0 and chunk % 0x200000 == 0
                extents = [(u64(entry, 152 + 24 * k + 8), u64(entry, 152 + 24 * k + 16)) for k in range(nstrips)]
                assert all(u64(entry, 152 + 24 * k) == 0 for k in range(nstrips))
                assert zero(entry[152 + 24 * nstrips:536])
                assert len({length for _, length in extents}) == 1 and extents[0][1] % chunk == 0
            assert u64(entry, 16) <= sum(length for _, length in extents)  # size fits
            for offset, length in extents:
                assert offset % 0x200000 == 0 and length % 0x200000 == 0 and length > 0
                assert data_start <= offset and offset + length <= dev_size
                claimed.append((offset, offset + length))
        elif kind == 1:  # MKDIR
            relpath_field(entry[28:108])
            assert zero(entry[108:536])
        elif kind == 2:  # DELETE, our layout (docs/format.md)
            target = u64(entry, 16)
            assert target < index
            assert entry[24:104] == log[48 + 544 * target + 40:48 + 544 * target + 120]
            assert zero(entry[104:536])
        else:
            raise AssertionError(f"entry {index}: unexpected type {kind}")
        yield index, kind, entry
    claimed.sort()
    for (_, end), (start, _) in itertools.pairwise(claimed):
        assert end <= start, "no two extents overlap"


def test_famfsctl_image_satisfies_the_spec_field_by_field(tmp_path: Path, system_uuid_file: Path) -> None:
    image = tmp_path / "dev.img"
    famfsctl("mkfs", "--size", "4g", image)
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data").write_bytes(os.urandom(3 * MIB + 7))
    (source / "empty").write_bytes(b"")
    famfsctl("mkdir", "-p", "-m", "2775", "-u", "1000", "-g", "4294967294", "--device", image, "a/b/c")
    famfsctl("creat", "-s", "5m", "-m", "0600", "--randomize", "--seed", "42", "--device", image, "a/b/file")
    famfsctl("creat", "-s", "9m", "-N", "2", "-B", "4", "-C", "4m", "--device", image, "striped")
    famfsctl("cp", "-r", "--device", image, source, "/")
    famfsctl("rm", "--device", image, "a/b/file")

    seen = {(index, kind) for index, kind, _ in spec_check(image, system_uuid_file)}
    assert [kind for _, kind in sorted(seen)] == [1, 1, 1, 0, 0, 1, 0, 1, 0, 2]
    with open(image, "rb") as device:
        raw = device.read(0x200000 + 48 + 544 * 10)
    mkdir_c = raw[0x200000 + 48 + 544 * 2:][:544]
    assert (u32(mkdir_c, 16), u32(mkdir_c, 20), u32(mkdir_c, 24)) == (1000, 4294967294, 0o2775)
    assert relpath_field(mkdir_c[28:108]) == "a/b/c"
    striped = raw[0x200000 + 48 + 544 * 4:][:544]
    assert (u32(striped, 120), u64(striped, 136), u64(striped, 144)) == (1, 2, 4 * MIB)
    empty = raw[0x200000 + 48 + 544 * 6:][:544]
    assert relpath_field(empty[40:120]) == "src/empty" and u64(empty, 16) == 0


def test_setattr_entry_layout_round_trip_and_bounds() -> None:
    """SETATTR (type 9, docs/format.md): DELETE's head, then uid, gid, mode; zeros elsewhere."""
    entry = fmt.SetattrEntry("d/f", 12, 0o2775, 1000, 5)
    raw = fmt.encode_entry(entry, 40)
    assert len(raw) == fmt.ENTRY_SIZE
    assert struct.unpack_from("<QI4xQ", raw) == (40, 9, 12)
    assert raw[24:104] == b"d/f".ljust(80, b"\0")
    assert struct.unpack_from("<III", raw, 104) == (1000, 5, 0o2775)
    assert raw[116:536] == bytes(420)
    assert fmt.decode_entry(raw, 40) == entry
    assert fmt.raw_relpath(raw) == b"d/f"
    with pytest.raises(fmt.FormatError, match="more than permission bits"):
        fmt.encode_entry(fmt.SetattrEntry("d/f", 12, 0o100644, 0, 0), 40)
    typed = bytearray(raw)
    struct.pack_into("<I", typed, 112, 0o100644)
    struct.pack_into("<Q", typed, fmt.ENTRY_CRC_SPAN, fmt.crc32(typed[:fmt.ENTRY_CRC_SPAN]))
    with pytest.raises(fmt.EntryError, match="more than permission bits"):
        fmt.decode_entry(bytes(typed), 40)
