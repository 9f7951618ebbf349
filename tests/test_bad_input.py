"""Bad input: each case gets a clear error naming the device, entry index or path, and leaves
every byte of the device as it was (whole-device hash before and after)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs.master import writer
from famfs.master.mkfs import create_image, mkfs
from tests.conftest import materialize_reference, reference_info
from tests.famfsctl_util import digest, famfsctl
from tests.fuse_util import read_device, write_device

MIB = 1 << 20


def slot(index: int) -> int:
    return fmt.LOG_OFFSET + fmt.entry_offset(index)


def reseal(raw: bytearray) -> bytes:
    """A crafted entry with a good CRC: only the rule under test is broken."""
    struct.pack_into("<Q", raw, fmt.ENTRY_CRC_SPAN, fmt.crc32(raw[:fmt.ENTRY_CRC_SPAN]))
    return bytes(raw)


def append_raw(image: Path, raw: bytes) -> int:
    """Put a raw entry in the next slot and advance the header, as a buggy writer would."""
    index = int.from_bytes(read_device(image, fmt.LOG_OFFSET + 40, 8), "little")
    write_device(image, slot(index), raw)
    write_device(image, fmt.LOG_OFFSET + fmt.LOG_NEXT_SEQNUM_OFFSET, struct.pack("<2Q", index + 1, index + 1))
    return index


def with_sb_crc(image: Path) -> None:
    write_device(image, fmt.SUPERBLOCK_CRC_SPAN, struct.pack("<Q", fmt.crc32(read_device(image, 0, fmt.SUPERBLOCK_CRC_SPAN))))


def file_entry(relpath: str, offset: int, length: int, index: int) -> bytearray:
    entry = fmt.FileEntry(relpath=relpath, size=length, mode=0o644, uid=0, gid=0,
                          extents=(fmt.Extent(offset=offset, length=length),))
    return bytearray(fmt.encode_entry(entry, index))


# --- the corruptions ---------------------------------------------------------------------------


def wrong_magic(image: Path) -> None:
    write_device(image, 0, struct.pack("<Q", 0x12345678))


def wrong_version(image: Path) -> None:
    write_device(image, 8, struct.pack("<Q", 47))
    with_sb_crc(image)  # a well-made superblock of another version


def bad_sb_crc(image: Path) -> None:
    write_device(image, 50, b"\xee")  # inside ts_uuid


def bad_header_crc(image: Path) -> None:
    write_device(image, fmt.LOG_OFFSET + 16, struct.pack("<Q", 15000))  # last_index, under the CRC


def corrupted_middle_entry(image: Path) -> None:
    raw = bytearray(read_device(image, slot(1), fmt.ENTRY_SIZE))
    raw[45] ^= 0x20  # the NUL after entry 1's relpath 'dir/a' becomes a space; the CRC no longer matches
    write_device(image, slot(1), bytes(raw))


def next_index_past_last(image: Path) -> None:
    write_device(image, fmt.LOG_OFFSET + fmt.LOG_NEXT_SEQNUM_OFFSET, struct.pack("<2Q", 15421, 15421))


def logged_dotdot(image: Path) -> None:
    raw = bytearray(fmt.encode_entry(fmt.MkdirEntry("xx/evil", 0o755, 0, 0), 3))
    raw[28:35] = b"../evil"
    append_raw(image, reseal(raw))


def extent_past_end(image: Path) -> None:
    size = image.stat().st_size
    append_raw(image, reseal(file_entry("beyond", size - 2 * MIB, 4 * MIB, 3)))


def overlapping_extents_in_one_file(image: Path) -> None:
    entry = fmt.FileEntry(relpath="twice", size=4 * MIB, mode=0o644, uid=0, gid=0,
                          extents=(fmt.Extent(offset=200 * MIB, length=4 * MIB), fmt.Extent(offset=202 * MIB, length=2 * MIB)))
    append_raw(image, fmt.encode_entry(entry, 3))


def cross_linked_files(image: Path) -> None:
    # dir/a is entry 1 at the first data unit; this one claims part of the same space
    append_raw(image, reseal(file_entry("thief", 12 * MIB, 2 * MIB, 3)))


def extent_in_the_partial_last_unit(image: Path) -> None:
    # A device that is not whole allocation units (upstream's mkfs takes any size) and a file in
    # its tail, as upstream's allocator can hand out (docs/format.md §9 item 11): inside the device, but in
    # no unit our bitmap has.
    size = image.stat().st_size + MIB
    os.truncate(image, size)
    write_device(image, 112, struct.pack("<Q", size))  # ts_device_size
    with_sb_crc(image)
    append_raw(image, bytes(file_entry("tail", size - MIB, MIB, 3)))


def truncated_device(image: Path) -> None:
    os.truncate(image, 256 * MIB)


@dataclass(frozen=True)
class Case:
    name: str
    corrupt: Callable[[Path], None]
    complaint: str  # in the writer's error, or its warning when it only leaves the entry out
    fsck_complaint: str  # in fsck's report (exit 1)
    left_out: bool = False  # a well-formed entry that breaks a rule: every reader, the writer too, skips it


CASES = [
    Case("wrong magic", wrong_magic, "superblock: bad magic 0x12345678", "bad magic"),
    Case("wrong version", wrong_version, "format version 47, this build reads only version 48", "format version 47"),
    Case("bad superblock CRC", bad_sb_crc, "superblock: bad CRC", "superblock: bad CRC"),
    Case("bad log header CRC", bad_header_crc, "log header: bad CRC", "log header: bad CRC"),
    Case("corrupted entry in the middle", corrupted_middle_entry, "log entry 1: bad CRC",
         "(unverified path 'dir/a ')"),
    Case("next_index past last_index", next_index_past_last, "next_index 15421 is past last_index 15419", "past last_index"),
    Case("logged path with ..", logged_dotdot, "log entry 3: path has a '..' component path='../evil'", "log entry 3: path has a '..'", left_out=True),
    Case("extent past the device end", extent_past_end, "extent 0: [0x3fe00000, 0x40200000) past the device end 0x40000000 (rule extents_inside_device)", "past the device end", left_out=True),
    Case("overlapping extents in a file", overlapping_extents_in_one_file, "extents overlap at 0xca00000 (rule extents_disjoint)", "extents overlap", left_out=True),
    Case("cross-linked files", cross_linked_files, "allocation unit at 0xc00000 is already held by another file (rule space_unclaimed)",
         "cross-linked: 'thief' (entry 3) and 'dir/a' (entry 1) share 2097152 bytes", left_out=True),
    Case("extent in the partial last allocation unit", extent_in_the_partial_last_unit,
         "extent 0: [0x40000000, 0x40100000) past the last whole allocation unit (ends at 0x40000000) (rule extents_inside_device)",
         "log entry 3: extent 0: [0x40000000, 0x40100000) past the last whole allocation unit (ends at 0x40000000) (rule extents_inside_device) path='tail'",
         left_out=True),
    Case("device smaller than its superblock says", truncated_device, "superblock says the device is 1073741824 bytes, it has 268435456",
         "it has 268435456"),
]


def healthy_image(tmp_path: Path, uuid_file: Path) -> Path:
    """mkdir dir, dir/a (6 MiB at 10 MiB), dir/b: three good entries."""
    image = tmp_path / "dev.img"
    create_image(image, 1 << 30)
    mkfs(str(image), uuid_file=uuid_file)
    owner = writer.Ownership(0o644, 0, 0)
    with writer.session(str(image), uuid_file) as current:
        current.mkdir("dir", writer.Ownership(0o755, 0, 0))
        current.create("dir/a", 5 * MIB, owner)
        current.create("dir/b", MIB, owner)
    return image


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_device_is_refused_or_its_bad_entry_left_out(case: Case, tmp_path: Path, system_uuid_file: Path) -> None:
    image = healthy_image(tmp_path, system_uuid_file)
    case.corrupt(image)
    before = digest(image)
    for command in (["creat", "-s", "1m", "--device", image, "dir/new"], ["mkdir", "--device", image, "newdir"],
                    ["rm", "--device", image, "dir/b"]):
        done = famfsctl(*command, check=False)
        if case.left_out:  # the master goes on, as every reader does, and says what it leaves out
            assert done.returncode == 0, done
            said = done.stdout + done.stderr
            assert "log_entries_left_out" in said and case.complaint in said, said
            continue
        assert done.returncode == 1, done
        assert case.complaint in done.stderr and str(image) in done.stderr, done.stderr
        assert done.stderr.startswith("famfsctl: ") and done.stderr.count("\n") == 1
    checked = famfsctl("fsck", image, check=False)
    assert checked.returncode == 1 and case.fsck_complaint in checked.stdout, checked.stdout
    assert "fsck: 1 problem:" in checked.stdout
    if not case.left_out:
        assert digest(image) == before


@pytest.mark.parametrize(("relpath", "complaint"), [
    ("/abs/path", "absolute path"),
    ("dir/../escape", "path has a '..' component"),
    ("", "empty path"),
    ("dir/" + "x" * 76, "path is 80 bytes, the limit is 79"),
    ("dir//double", "path has an empty component"),
])
@pytest.mark.parametrize("command", ["creat", "mkdir"])
def test_bad_relpath_is_refused(relpath: str, complaint: str, command: str, tmp_path: Path, system_uuid_file: Path) -> None:
    image = healthy_image(tmp_path, system_uuid_file)
    before = digest(image)
    args = ["-s", "1m"] if command == "creat" else []
    done = famfsctl(command, *args, "--device", image, relpath, check=False)
    assert done.returncode == 1 and complaint in done.stderr, done.stderr
    assert digest(image) == before


def test_a_79_byte_path_is_the_longest_accepted(tmp_path: Path, system_uuid_file: Path) -> None:
    image = healthy_image(tmp_path, system_uuid_file)
    famfsctl("creat", "-s", "1", "--device", image, "dir/" + "y" * 75)
    assert "4 files" not in famfsctl("fsck", image).stdout and "3 files" in famfsctl("fsck", image).stdout


def test_missing_parent_and_duplicates_are_refused(tmp_path: Path, system_uuid_file: Path) -> None:
    image = healthy_image(tmp_path, system_uuid_file)
    before = digest(image)
    for command, complaint in [
        (["creat", "-s", "1m", "--device", image, "nodir/f"], "nodir/f: parent directory 'nodir' does not exist"),
        (["mkdir", "--device", image, "dir/a"], "dir/a: a file of that name exists (rule path_free)"),
        (["creat", "-s", "1m", "--device", image, "dir"], "dir: a directory of that name exists"),
    ]:
        done = famfsctl(*command, check=False)
        assert done.returncode == 1 and complaint in done.stderr, done.stderr
    assert digest(image) == before


def test_a_client_cannot_write(tmp_path: Path, system_uuid_file: Path) -> None:
    image = healthy_image(tmp_path, system_uuid_file)
    before = digest(image)
    client = tmp_path / "client" / "system_uuid"
    fs_uuid = famfsctl("status", image).stdout.split("file system uuid: ")[1].split()[0]
    for command in (["creat", "-s", "1m"], ["mkdir"], ["rm"]):
        done = famfsctl(*command, "--system-uuid-file", client, "--device", image, "dir/b", check=False)
        assert done.returncode == 1
        assert done.stderr.startswith(f"famfsctl: {image}: this host is a client of file system {fs_uuid}")
    assert digest(image) == before


def test_full_log_appends_nothing(tmp_path: Path, system_uuid_file: Path) -> None:
    image = materialize_reference("c_full", tmp_path / "full.img")
    system_uuid_file.parent.mkdir(parents=True)
    system_uuid_file.write_text(reference_info("c_full")["system_uuid"])
    before = digest(image)
    for command in (["creat", "-s", "1m"], ["mkdir"]):
        done = famfsctl(*command, "--device", image, "one_more", check=False)
        assert done.returncode == 1
        assert done.stderr == f"famfsctl: {image}: log full (15420 of 15420 entries used); nothing appended\n"
    assert digest(image) == before


def test_mkdir_p_is_all_or_nothing_when_the_log_has_too_few_slots(tmp_path: Path, system_uuid_file: Path) -> None:
    image = materialize_reference("c_full", tmp_path / "full.img")
    system_uuid_file.parent.mkdir(parents=True)
    system_uuid_file.write_text(reference_info("c_full")["system_uuid"])
    # Give back the last slot: one free, two needed.
    write_device(image, fmt.LOG_OFFSET + fmt.LOG_NEXT_SEQNUM_OFFSET, struct.pack("<2Q", 15419, 15419))
    write_device(image, slot(15419), bytes(fmt.ENTRY_SIZE))
    before = digest(image)
    done = famfsctl("mkdir", "-p", "--device", image, "new/child", check=False)
    assert done.returncode == 1 and f"{image}: log full (1 free entries, 2 needed); nothing appended" in done.stderr
    assert digest(image) == before
    famfsctl("mkdir", "--device", image, "new")  # one slot is enough for one entry


def test_cp_checks_the_free_log_entries_before_writing(tmp_path: Path, system_uuid_file: Path) -> None:
    image = materialize_reference("c_full", tmp_path / "full.img")
    system_uuid_file.parent.mkdir(parents=True)
    system_uuid_file.write_text(reference_info("c_full")["system_uuid"])
    # Give back the last two slots: a tree of a directory and two files needs three.
    write_device(image, fmt.LOG_OFFSET + fmt.LOG_NEXT_SEQNUM_OFFSET, struct.pack("<2Q", 15418, 15418))
    for index in (15418, 15419):
        write_device(image, slot(index), bytes(fmt.ENTRY_SIZE))
    source = tmp_path / "tree"
    source.mkdir()
    for name in ("one", "two"):
        (source / name).write_bytes(name.encode())
    before = digest(image)
    done = famfsctl("cp", "-r", "--device", image, source, "/", check=False)
    assert done.returncode == 1 and done.stderr == (
        f"famfsctl: {image}: the log has 2 free entries, this copy needs 3\n"
        "famfsctl: nothing copied: 1 problem found before writing\n")
    assert digest(image) == before


def test_device_too_small(tmp_path: Path, system_uuid_file: Path) -> None:
    image = tmp_path / "tiny.img"
    image.write_bytes(b"not famfs" * 1000)
    os.truncate(image, 10 * MIB)
    before = digest(image)
    done = famfsctl("mkfs", image, check=False)
    assert done.returncode == 1 and f"{image}: 10 MiB is too small" in done.stderr
    assert digest(image) == before
    fresh = tmp_path / "never.img"
    done = famfsctl("mkfs", "--size", "10m", fresh, check=False)
    assert done.returncode == 2 and "--size 10 MiB is too small" in done.stderr and not fresh.exists()


def test_not_a_device(tmp_path: Path, system_uuid_file: Path) -> None:
    for target, complaint in [(tmp_path / "missing.img", "no such device or image file"), (tmp_path, "is a directory")]:
        done = famfsctl("mkdir", "--device", target, "x", check=False)
        assert done.returncode == 1 and complaint in done.stderr, done.stderr
