"""Bad log entries: each is rejected with an error naming its index and path, nothing is written
for it, and the agent keeps going; a corrupt entry (bad CRC or seqnum) stops progress there."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from famfs import format as fmt
from tests.agent_util import (
    DATA_START,
    IMAGE_SIZE,
    agent_state,
    append,
    append_raw,
    file_entry,
    make_device,
    mkdir_entry,
    run_agent,
    snapshot,
)

FILE_FIELDS = fmt.FILE_SIMPLE_ENTRY
RELPATH, NEXTENTS, FIRST_EXTENT = 7, 9, 10  # positions in FILE_SIMPLE_ENTRY's fields


def sealed(raw: bytes | bytearray) -> bytes:
    """The slot with its CRC made right again after a byte edit."""
    raw = bytearray(raw)
    raw[fmt.ENTRY_CRC_SPAN:] = fmt.crc32(raw[:fmt.ENTRY_CRC_SPAN]).to_bytes(8, "little")
    return bytes(raw)


def edited_file(seqnum: int, **changes: object) -> bytes:
    """A FILE slot made by the encoder, then fields replaced (relpath, nextents, extent words)."""
    fields = list(FILE_FIELDS.unpack(fmt.encode_entry(file_entry("placeholder", 40), seqnum)))
    if "relpath" in changes:
        fields[RELPATH] = changes["relpath"]
    if "nextents" in changes:
        fields[NEXTENTS] = changes["nextents"]
    if "offset" in changes:
        fields[FIRST_EXTENT + 1] = changes["offset"]
    if "length" in changes:
        fields[FIRST_EXTENT + 2] = changes["length"]
    return sealed(FILE_FIELDS.pack(*fields))


def with_type(raw: bytes, kind: int) -> bytes:
    edited = bytearray(raw)
    edited[8:12] = kind.to_bytes(4, "little")
    return sealed(edited)


# (what is wrong, how to make the slot given its index, the path the error must name, words in it)
BAD_ENTRIES = [
    ("absolute path", lambda i: edited_file(i, relpath=b"/etc/passwd"), "/etc/passwd", "absolute path"),
    ("'..' component", lambda i: edited_file(i, relpath=b"d/../../escape"), "d/../../escape", "'..' component"),
    ("'.' component", lambda i: edited_file(i, relpath=b"./d/x"), "./d/x", "'.' component"),
    ("empty path", lambda i: edited_file(i, relpath=b""), "", "empty path"),
    ("no NUL in 80 bytes", lambda i: edited_file(i, relpath=b"n" * 80), "n" * 80, "no NUL"),
    ("17 extents", lambda i: edited_file(i, relpath=b"d/many", nextents=17), "d/many", "extent count 17"),
    ("zero-length extent", lambda i: edited_file(i, relpath=b"d/zero", length=0), "d/zero", "zero length"),
    ("past the device end", lambda i: edited_file(i, relpath=b"d/past", offset=IMAGE_SIZE), "d/past", "past the device end"),
    ("over the superblock", lambda i: edited_file(i, relpath=b"d/sb", offset=0), "d/sb", "overlaps the superblock/log"),
    ("over the log", lambda i: edited_file(i, relpath=b"d/log", offset=fmt.LOG_OFFSET), "d/log", "overlaps the superblock/log"),
    ("unknown type", lambda i: with_type(edited_file(i, relpath=b"d/odd"), 10), None, "unknown entry type 10"),
    ("parent never logged", lambda i: fmt.encode_entry(file_entry("nodir/f", 41), i), "nodir/f", "parent directory 'nodir' does not exist"),
    ("mkdir, parent never logged", lambda i: fmt.encode_entry(mkdir_entry("nodir/sub"), i), "nodir/sub", "parent directory 'nodir' does not exist"),
    ("mkdir .meta", lambda i: fmt.encode_entry(mkdir_entry(".meta"), i), ".meta", "reserved"),
    ("file over a directory", lambda i: fmt.encode_entry(file_entry("d", 42), i), "d", "a directory of that name exists"),
    ("mkdir over a file", lambda i: fmt.encode_entry(mkdir_entry("d/f"), i), "d/f", "a file of that name exists"),
    ("delete of a mkdir", lambda i: fmt.encode_entry(fmt.DeleteEntry(relpath="d", target_index=0), i), "d", "not a FILE entry"),
    ("delete, path differs", lambda i: fmt.encode_entry(fmt.DeleteEntry(relpath="d/other", target_index=1), i), "d/other", "not this path"),
    ("delete of a later entry", lambda i: fmt.encode_entry(fmt.DeleteEntry(relpath="d/f", target_index=i + 5), i), "d/f", "not an earlier entry"),
    ("daxdev index not dense", lambda i: fmt.encode_entry(fmt.AddDaxdevEntry(dev_size=1 << 30, dev_uuid=uuid.uuid4(), dev_index=5), i), None, "daxdev index 5"),
]


def test_each_bad_entry_is_rejected_by_index_and_path_and_the_rest_applies(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/f", 0)])  # entries 0 and 1
    first_bad = 2
    append_raw(image, [make(first_bad + n) for n, (_, make, _, _) in enumerate(BAD_ENTRIES)])
    after = append(image, [file_entry("d/after", 1)])
    shadow = tmp_path / "shadow"
    result = run_agent("--shadow", shadow, "--log-format", "json", image)
    assert result.returncode == 1
    assert f"{len(BAD_ENTRIES)} log entries rejected" in result.stderr
    for n, (what, _, relpath, words) in enumerate(BAD_ENTRIES):
        index = first_bad + n
        lines = [line for line in result.stderr.splitlines() if f'"index": {index},' in line and "entry_rejected" in line]
        assert len(lines) == 1, what
        assert words in lines[0], (what, lines[0])
        if relpath is not None:
            assert f"path={relpath!r}" in lines[0].encode().decode("unicode_escape"), (what, lines[0])
    tree = snapshot(shadow / "root")
    assert sorted(tree) == [".meta", ".meta/.log", ".meta/.superblock", "d", "d/after", "d/f"]
    assert not (tmp_path / "escape").exists()
    state = agent_state(shadow)
    assert state["rejected"] == len(BAD_ENTRIES) and state["applied_index"] == after
    assert re.search(rf"log entry {after - 1}: ", state["last_error"])


def test_duplicate_path_first_wins_and_both_indexes_are_logged(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d", mode=0o700), file_entry("d/f", 0, size=1)])
    append_raw(image, [fmt.encode_entry(file_entry("d/f", 1, size=2), 2), fmt.encode_entry(mkdir_entry("d", mode=0o777), 3)])
    shadow = tmp_path / "shadow"
    result = run_agent("--shadow", shadow, "--log-format", "json", image)
    assert result.returncode == 0, result.stderr  # upstream counts a duplicate as "existed", not an error
    assert re.search(r'"index": 2, "path": "d/f", "first_index": 1', result.stderr)
    assert re.search(r'"index": 3, "path": "d", "first_index": 0', result.stderr)
    tree = snapshot(shadow / "root")
    assert tree["d"][1] == 0o700
    assert b"size: 1\n" in tree["d/f"][1]


def test_delete_then_recreate_same_path(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/f", 0, size=1)])
    append(image, [fmt.DeleteEntry(relpath="d/f", target_index=1), file_entry("d/f", 1, size=2)])
    append(image, [fmt.DeleteEntry(relpath="d/f", target_index=1)])  # entry 1 is no longer live
    shadow = tmp_path / "shadow"
    result = run_agent("--shadow", shadow, image)
    assert result.returncode == 1
    assert "log entry 4: DELETE target entry 1 is not the live file at this path (rule delete_target_live) path='d/f'" in result.stderr
    assert b"size: 2\n" in (shadow / "root/d/f").read_bytes()


@pytest.mark.parametrize("damage", ["crc", "seqnum"])
def test_corrupt_entry_stops_progress_and_keeps_what_was_applied(damage: str, tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/a", 0)])
    raw = bytearray(fmt.encode_entry(file_entry("d/b", 1), 2))
    if damage == "crc":
        raw[60] ^= 0xFF  # inside the relpath field, CRC left stale
    else:
        raw[:fmt.ENTRY_CRC_SPAN] = (7).to_bytes(8, "little") + raw[8:fmt.ENTRY_CRC_SPAN]
        raw = bytearray(sealed(raw))
    append_raw(image, [bytes(raw), fmt.encode_entry(file_entry("d/c", 2), 3)])
    shadow = tmp_path / "shadow"
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\ninflight_retry_ms = 20.0\n")
    result = run_agent("--shadow", shadow, "--config", config, image)
    assert result.returncode == 1
    assert "stopped at corrupt entry 2" in result.stderr
    assert sorted(snapshot(shadow / "root")) == [".meta", ".meta/.log", ".meta/.superblock", "d", "d/a"]
    state = agent_state(shadow)
    assert state["applied_index"] == 1 and state["stalled_at"] == 2
    assert state["last_error"].startswith("corrupt: log entry 2: ")
    status = run_agent("status", "--shadow", shadow, check=True).stdout
    assert "stalled at:      2" in status and "lag:             2 entries not applied yet" in status


def test_extents_are_checked_against_the_device(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    last_unit = (IMAGE_SIZE - DATA_START) // fmt.ALLOC_UNIT - 1
    append(image, [file_entry("fits", last_unit)])
    append_raw(image, [edited_file(1, relpath=b"overhangs", offset=IMAGE_SIZE - fmt.ALLOC_UNIT // 2)])
    result = run_agent("--shadow", tmp_path / "shadow", image)
    assert result.returncode == 1
    assert "log entry 1: " in result.stderr and "path='overhangs'" in result.stderr
    assert (tmp_path / "shadow/root/fits").exists() and not (tmp_path / "shadow/root/overhangs").exists()
