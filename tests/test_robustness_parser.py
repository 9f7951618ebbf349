"""The shadow-YAML parser raises FormatError and nothing else, whatever the document: the shadow
tree is a directory any root process can write, and the mount answers EIO for what it refuses."""

from __future__ import annotations

import pytest

from famfs import format as fmt
from famfs.shadowyaml import emit_file_yaml, parse_file_yaml
from tests.agent_util import file_entry

GOOD = emit_file_yaml(file_entry("f", 0))
STRUCTURED = (b"---\nfile:\n  path: f\n  size: SIZE\n  mode: 0644\n  nextents: 1\n  simple_ext_list:\n"
              b"  - offset: OFFSET\n    length: 0x200000\n")

HOSTILE = {
    "4301-digit size, canonical shape": GOOD.replace(b"size: 1000", b"size: " + b"9" * 4301),
    "4301-digit size, full parser": STRUCTURED.replace(b"SIZE", b"9" * 4301).replace(b"OFFSET", b"0x800000"),
    "4301-digit hex offset": STRUCTURED.replace(b"SIZE", b"1").replace(b"OFFSET", b"0x" + b"f" * 4301),
    "huge canonical extent": GOOD.replace(b"length: 0x200000", b"length: 0x" + b"f" * 5000),
    "negative decimal size": STRUCTURED.replace(b"SIZE", b"-5").replace(b"OFFSET", b"0x800000"),
    "negative offset": STRUCTURED.replace(b"SIZE", b"5").replace(b"OFFSET", b"-0x800000"),
    "underscored number": STRUCTURED.replace(b"SIZE", b"1_000").replace(b"OFFSET", b"0x800000"),
    "340 nested flow lists": b"[" * 340 + b"]" * 340,
    "2000 nested flow mappings": b"a: " + b"{x: " * 2000 + b"1" + b"}" * 2000,
    "3000 nested block lists": b"- " * 3000 + b"x",
    "1000 nested block mappings": b"".join(b"  " * n + b"k:\n" for n in range(1000)),
    "recursive alias": b"&a [*a]",
    "unhashable key": b"? [a]\n: b\n",
    "not UTF-8": b"\xff\xfe\x00",
    "NUL bytes": b"---\x00\x00",
    "empty": b"",
    "two documents": GOOD + GOOD,
    "a list": b"- 1\n- 2\n",
    "file is a list": b"file: [1, 2]\n",
    "extent list of scalars": STRUCTURED.replace(b"  - offset: OFFSET\n    length: 0x200000\n", b"  - 7\n").replace(b"SIZE", b"1"),
    "16 KiB path": GOOD.replace(b"path: f", b"path: " + b"a" * 16384),
}


@pytest.mark.parametrize("document", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_document_is_a_format_error(document: bytes) -> None:
    try:
        parse_file_yaml(document)
    except fmt.FormatError:
        return
    except BaseException as err:  # noqa: BLE001 - the point: nothing else may escape
        pytest.fail(f"raised {type(err).__name__}: {str(err)[:200]}")
    # The 16 KiB path parses (the parser does not judge paths; the mount checks where it sits).
    assert document is HOSTILE["16 KiB path"]


def test_uid_and_gid_may_be_negative_as_upstream_prints_them() -> None:
    entry = parse_file_yaml(STRUCTURED.replace(b"SIZE", b"1").replace(b"OFFSET", b"0x800000")
                            .replace(b"  mode: 0644\n", b"  mode: 0644\n  uid: -2\n  gid: -1\n"))
    assert (entry.uid, entry.gid) == (0xFFFFFFFE, 0xFFFFFFFF)
