"""The shadow YAML: byte-identical to upstream's emitter, and a strict parser."""

from __future__ import annotations

import random

import pytest

from famfs import format as fmt
from famfs.shadowyaml import (
    _PLAIN_PATH,
    _emit_with_libyaml,
    _parse_canonical,
    emit_file_yaml,
    meta_file_entry,
    parse_file_yaml,
)
from tests.conftest import REFERENCE_IMAGES
from tests.reference import reference_log, reference_shadow_files


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
def test_every_reference_yaml_is_reproduced_byte_for_byte(name: str) -> None:
    expected = reference_shadow_files(name)
    log = reference_log(name)
    produced = {}
    for index in range(log.header.next_index):
        entry = fmt.decode_entry(log.slot(index), index)
        if isinstance(entry, fmt.FileEntry):
            produced[entry.relpath] = emit_file_yaml(entry)
    sb = log.superblock
    produced[".meta/.superblock"] = emit_file_yaml(meta_file_entry(".meta/.superblock", fmt.SUPERBLOCK_SIZE, 0, 0o444))
    produced[".meta/.log"] = emit_file_yaml(meta_file_entry(".meta/.log", sb.log_len, fmt.LOG_OFFSET, 0o644))
    assert produced.keys() == expected.keys()
    mismatched = [path for path in expected if produced[path] != expected[path]]
    assert mismatched == []


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
def test_parse_inverts_emit_on_reference_trees(name: str) -> None:
    log = reference_log(name)
    for index in range(log.header.next_index):
        entry = fmt.decode_entry(log.slot(index), index)
        if isinstance(entry, fmt.FileEntry):
            assert parse_file_yaml(emit_file_yaml(entry)) == entry


AWKWARD = ["a", "null", "~x", "-d", "-", ".x", "...x", "---x", "a-b", "a b", " lead", "trail ", "x:y", "x: y",
           "#c", "a #b", "a#b", "?q", "!b", "&a", "*s", "|p", ">g", "%p", "@a", "`t", "'q", '"d', "[b]", "{c}",
           "a,b", "0x10", "0644", "yes", "1e3", "ünï", "日本", "😀", "a+b=c", "tab\tx", "\\back", "=eq", "+plus"]


def _random_path(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        parts.append(rng.choice(AWKWARD) + "".join(rng.choice("abc._-+= :#/") for _ in range(rng.randint(0, 12))))
    path = "/".join(parts).replace("//", "/").strip("/")
    return path.encode()[:fmt.MAX_RELPATH_BYTES].decode(errors="ignore") or "x"


def test_fast_path_agrees_with_libyaml_on_awkward_names() -> None:
    rng = random.Random(48)
    extent = (fmt.Extent(offset=0xA00000, length=0x200000),)
    for n in range(3000):
        path = AWKWARD[n] if n < len(AWKWARD) else _random_path(rng)
        entry = fmt.FileEntry(relpath=path, size=rng.randrange(1 << 40), mode=rng.randrange(0o10000),
                              uid=rng.randrange(1 << 32), gid=rng.randrange(1 << 32), extents=extent)
        assert emit_file_yaml(entry) == _emit_with_libyaml(entry), path


GOOD = emit_file_yaml(fmt.FileEntry(relpath="f", size=5, mode=0o644, uid=0, gid=0,
                                    extents=(fmt.Extent(offset=0xA00000, length=0x200000),))).decode()


@pytest.mark.parametrize(("text", "complaint"), [
    ("", "exactly one document"),
    ("---\nfile: [\n", "malformed YAML"),
    (GOOD.replace("  gid: 0\n", "  gid: 0\n  colour: red\n"), "unknown keys"),
    (GOOD.replace("file:", "fil:"), "one 'file' mapping"),
    (GOOD + GOOD, "exactly one document"),
    (GOOD.replace("nextents: 1", "nextents: 2"), "nextents 2 but 1"),
    (GOOD.replace("size: 5", "size: five"), "size: not a number"),
    (GOOD.replace("    offset: 0xa00000\n", ""), "offset and length are required"),
    (GOOD.replace("  path: f\n", ""), "missing keys"),
    (GOOD[: len(GOOD) // 2], "exactly one of simple_ext_list and striped_ext_list"),
])
def test_parser_refuses_bad_yaml_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(fmt.FormatError, match=complaint):
        parse_file_yaml(text)


def test_parser_refuses_more_than_sixteen_extents() -> None:
    extents = tuple(fmt.Extent(offset=(5 + 2 * n) << 21, length=1 << 21) for n in range(17))
    text = _emit_with_libyaml(fmt.FileEntry(relpath="f", size=1, mode=0o644, uid=0, gid=0, extents=extents))
    with pytest.raises(fmt.FormatError, match="17 extents, the limit is 16"):
        parse_file_yaml(text)


def test_parser_accepts_keys_in_any_order() -> None:
    shuffled = GOOD.replace("  path: f\n", "").replace("  simple_ext_list:", "  path: f\n  simple_ext_list:")
    assert parse_file_yaml(shuffled) == parse_file_yaml(GOOD)


def _full_parse(raw: bytes) -> fmt.FileEntry:
    return parse_file_yaml(raw.decode())  # text input always takes the YAML parser


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
def test_canonical_fast_parse_agrees_with_the_yaml_parser(name: str) -> None:
    for raw in reference_shadow_files(name).values():
        assert parse_file_yaml(raw) == _full_parse(raw)


@pytest.mark.parametrize("variant", [
    GOOD.replace("0xa00000", "0xA00000"),  # upper-case hex
    GOOD.replace("  size: 5", "  size:  5"),  # extra space
    GOOD.replace("  mode: 0644", "  mode: 420"),  # decimal mode
    GOOD.replace("...\n", ""),  # no document end marker
    GOOD.replace("  uid: 0", "  uid: -2"),
])
def test_non_canonical_but_valid_yaml_takes_the_full_parser(variant: str) -> None:
    raw = variant.encode()
    assert parse_file_yaml(raw) == _full_parse(raw)


def _random_canonical_entry(rng: random.Random) -> fmt.FileEntry:
    def number(bits: int) -> int:
        return rng.choice([0, 1, rng.randrange(1 << bits), (1 << bits) - 1])

    extents = tuple(fmt.Extent(offset=number(64), length=number(64), devindex=rng.choice([0, 0, 1, number(20)]))
                    for _ in range(rng.randint(1, 16)))
    path = "".join(rng.choice("abcXYZ019_./+=-") for _ in range(rng.randint(0, 70)))
    return fmt.FileEntry(relpath=rng.choice("aZ0_.") + path, size=number(64), mode=number(12), uid=number(32),
                         gid=number(32), extents=extents, flags=number(32))


def test_canonical_fast_parse_accepts_only_what_emit_writes() -> None:
    """_parse_canonical checks no re-emission: whatever it accepts must be emit_file_yaml's own
    output for what it returns (and so what the full parser returns), mutated documents included."""
    rng = random.Random(13)
    alphabet = b"0123456789abcdefxX- \n:.+"
    accepted_mutants = 0
    for _ in range(2000):
        entry = _random_canonical_entry(rng)
        raw = emit_file_yaml(entry)
        parsed = _parse_canonical(raw)
        if _PLAIN_PATH.fullmatch(entry.relpath):  # the template's shape
            assert parsed == entry, raw
        for _ in range(4):
            position = rng.randrange(len(raw))
            cut = rng.choice([0, 0, 1])
            mutant = raw[:position] + bytes(rng.choices(alphabet, k=rng.choice([0, 1, 1, 2]))) + raw[position + cut:]
            got = _parse_canonical(mutant)
            if got is not None:
                accepted_mutants += 1
                assert emit_file_yaml(got) == mutant, mutant
                assert got == _full_parse(mutant), mutant
    assert accepted_mutants > 100  # the mutations do reach documents the fast path takes
