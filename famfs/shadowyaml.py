"""The shadow-file YAML: byte-identical emission to upstream's libyaml emitter, and a strict parser.

Upstream (famfs_yaml.c) emits a fixed event stream with libyaml's default emitter (indent 2,
width 80, ASCII-only output, plain scalars requested). We emit the same event stream through
libyaml (PyYAML's CEmitter) for paths that need quoting, escaping or folding, and use a string
template for the common case of a path that libyaml emits plain on one line; the tests check
the two agree over the reference trees and a corpus of awkward names.

The parser accepts what upstream's parser accepts, minus its bugs (docs/format.md §5.3, §9 item 13): keys
may come in any order, at most one interleaved extent and 16 strips, unknown keys are errors,
counts must agree.
"""

from __future__ import annotations

import functools
import re
from types import ModuleType
from typing import Any

from famfs.format import (
    LOG_OFFSET,
    MAX_SIMPLE_EXTENTS,
    MAX_STRIPS,
    SUPERBLOCK_SIZE,
    Extent,
    FileEntry,
    FormatError,
    Stripe,
    from_fields,
)
from famfs.shadowdir import META_DIR, SUPERBLOCK_YAML


@functools.cache
def _libyaml() -> tuple[ModuleType, Any, Any]:
    """PyYAML, its C emitter, and the loader that keeps every scalar a string (as upstream's event
    parser sees them; numbers are ours to parse). Imported on first use: most documents take the
    template and the canonical parser, and importing costs every program's start-up ~10 ms."""
    import yaml

    return yaml, getattr(yaml, "CDumper", yaml.Dumper), getattr(yaml, "CBaseLoader", yaml.BaseLoader)


# Paths libyaml writes plain and unfolded: no indicator at the start, nothing that needs quotes.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+=-]{0,70}|\.[A-Za-z0-9_][A-Za-z0-9_./+=-]{0,69}")

FILE_KEYS = ("path", "size", "flags", "mode", "uid", "gid", "nextents")


def _signed32(value: int) -> int:
    """Upstream prints uid/gid with %d: as signed 32-bit."""
    return value - (1 << 32) if value & 0x80000000 else value


def _scalar_fields(entry: FileEntry) -> list[tuple[str, str]]:
    return [
        ("size", str(entry.size)),
        ("flags", str(entry.flags)),
        ("mode", f"0{entry.mode:o}"),
        ("uid", str(_signed32(entry.uid))),
        ("gid", str(_signed32(entry.gid))),
        ("nextents", str(len(entry.stripes) if entry.stripes else len(entry.extents))),
    ]


# The template emit_file_yaml fills for a plain path: the same text as _scalar_fields' pairs in
# libyaml's layout (the tests compare the two). %-formatting, and a file of one extent (nearly
# every file) in one operation: it runs once per file replayed by the agent.
_HEAD = "---\nfile:\n  path: %s\n  size: %d\n  flags: %d\n  mode: 0%o\n  uid: %d\n  gid: %d\n  nextents: %d\n"
_EXTENT = "%s- devindex: %d\n%s  offset: 0x%x\n%s  length: 0x%x\n"
_STRIPE = "  - nstrips: %d\n    chunk_size: 0x%x\n    simple_ext_list:\n"
_END = "...\n"
_ONE_EXTENT = _HEAD + "  simple_ext_list:\n" + _EXTENT.replace("%s", "  ") + _END


def _extent_lines(extents: tuple[Extent, ...], indent: str) -> str:
    return "".join([_EXTENT % (indent, extent.devindex, indent, extent.offset, indent, extent.length)
                    for extent in extents])


def emit_file_yaml(entry: FileEntry) -> bytes:
    """The shadow YAML for a file, byte for byte as upstream's famfs_emit_file_yaml."""
    if not _PLAIN_PATH.fullmatch(entry.relpath):
        return _emit_with_libyaml(entry)
    stripes, extents = entry.stripes, entry.extents
    owner = _signed32(entry.uid), _signed32(entry.gid)
    if not stripes and len(extents) == 1:
        extent = extents[0]
        return (_ONE_EXTENT % (entry.relpath, entry.size, entry.flags, entry.mode, *owner,
                               1, extent.devindex, extent.offset, extent.length)).encode()
    head = _HEAD % (entry.relpath, entry.size, entry.flags, entry.mode, *owner, len(stripes) if stripes else len(extents))
    if stripes:
        body = "  striped_ext_list:\n" + "".join(
            [_STRIPE % (stripe.nstrips, stripe.chunk_size) + _extent_lines(stripe.strips, "    ") for stripe in stripes])
    else:
        body = "  simple_ext_list:\n" + _extent_lines(extents, "  ")
    return (head + body + _END).encode()


def _emit_with_libyaml(entry: FileEntry) -> bytes:
    yaml, emitter, _ = _libyaml()
    ev = yaml.events

    def scalar(text: str) -> Any:
        return ev.ScalarEvent(None, None, (True, True), text)

    def mapping(pairs: list[tuple[str, Any]]) -> list[Any]:
        out: list[Any] = [ev.MappingStartEvent(None, None, True, flow_style=False)]
        for key, value in pairs:
            out.append(scalar(key))
            out.extend(value if isinstance(value, list) else [scalar(value)])
        out.append(ev.MappingEndEvent())
        return out

    def sequence(items: list[list[Any]]) -> list[Any]:
        out: list[Any] = [ev.SequenceStartEvent(None, None, True, flow_style=False)]
        for item in items:
            out.extend(item)
        out.append(ev.SequenceEndEvent())
        return out

    def extent_list(extents: tuple[Extent, ...]) -> list[Any]:
        return sequence([
            mapping([("devindex", str(e.devindex)), ("offset", f"0x{e.offset:x}"), ("length", f"0x{e.length:x}")])
            for e in extents
        ])

    pairs: list[tuple[str, Any]] = [("path", entry.relpath), *_scalar_fields(entry)]
    if entry.stripes:
        pairs.append(("striped_ext_list", sequence([
            mapping([("nstrips", str(s.nstrips)), ("chunk_size", f"0x{s.chunk_size:x}"),
                     ("simple_ext_list", extent_list(s.strips))])
            for s in entry.stripes
        ])))
    else:
        pairs.append(("simple_ext_list", extent_list(entry.extents)))
    events = [
        ev.StreamStartEvent(),
        ev.DocumentStartEvent(explicit=True),
        *mapping([("file", mapping(pairs))]),
        ev.DocumentEndEvent(explicit=True),
        ev.StreamEndEvent(),
    ]
    text = yaml.emit(events, Dumper=emitter, allow_unicode=False, width=80, indent=2)
    return text.encode() if isinstance(text, str) else text


def meta_file_entry(relpath: str, size: int, offset: int, mode: int) -> FileEntry:
    """The synthetic entries for `.meta/.superblock` and `.meta/.log` (flags 0, owner root)."""
    return FileEntry(relpath=relpath, size=size, mode=mode, uid=0, gid=0, flags=0,
                     extents=(Extent(offset=offset, length=size),))


def meta_extents(log_len: int) -> dict[str, Extent]:
    """The only two files that may map metadata, and exactly what each maps: the superblock
    region and the log. Anything else under .meta/ is not ours."""
    return {SUPERBLOCK_YAML: Extent(offset=0, length=SUPERBLOCK_SIZE),
            f"{META_DIR}/.log": Extent(offset=LOG_OFFSET, length=log_len)}


# --- parsing ---------------------------------------------------------------------------------


# No field of a shadow file needs more: a u64 is 20 decimal digits (22 octal, 16 hex). A longer
# string is refused before int() sees it (CPython raises ValueError past 4,300 digits anyway).
MAX_NUMBER_CHARS = 24


def _number(value: Any, key: str, *, signed: bool = False) -> int:
    """strtoull(v, 0, 0) semantics: 0x.. hex, 0.. octal, else decimal. Only `signed` fields
    (uid, gid: upstream prints them with %d) may be negative."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FormatError(f"{key}: not a number: {value!r}")
    if isinstance(value, int):
        return value
    text = value.strip()
    if len(text) > MAX_NUMBER_CHARS:
        raise FormatError(f"{key}: a number of {len(text)} characters is not a famfs field")
    if text.startswith("-") and not signed:
        raise FormatError(f"{key}: negative: {value!r}")
    if "_" in text:
        raise FormatError(f"{key}: not a number: {value!r}")  # int() takes 1_000, strtoull does not
    try:
        if text.lower().startswith("0x"):
            return int(text, 16)
        if len(text) > 1 and text.startswith("0"):
            return int(text, 8)
        return int(text, 10)
    except ValueError:
        raise FormatError(f"{key}: not a number: {value!r}") from None


def _unsigned32(value: int, key: str) -> int:
    if not -(1 << 31) <= value < (1 << 32):
        raise FormatError(f"{key}: {value} does not fit 32 bits")
    return value & 0xFFFFFFFF


def _extent(raw: Any, where: str) -> Extent:
    if not isinstance(raw, dict):
        raise FormatError(f"{where}: not a mapping")
    unknown = set(raw) - {"devindex", "offset", "length"}
    if unknown:
        raise FormatError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    if "offset" not in raw or "length" not in raw:
        raise FormatError(f"{where}: offset and length are required")
    return Extent(devindex=_number(raw.get("devindex", 0), "devindex"),
                  offset=_number(raw["offset"], "offset"), length=_number(raw["length"], "length"))


def _extent_list(raw: Any, limit: int, where: str) -> tuple[Extent, ...]:
    if not isinstance(raw, list) or not raw:
        raise FormatError(f"{where}: not a non-empty list")
    if len(raw) > limit:
        raise FormatError(f"{where}: {len(raw)} extents, the limit is {limit}")
    return tuple(_extent(item, f"{where}[{n}]") for n, item in enumerate(raw))


# The canonical shape of a simple file, exactly as emit_file_yaml writes it with a plain path: a
# plain path (_PLAIN_PATH), decimal numbers without leading zeros, the mode as "0" and its octal
# digits, uid and gid signed, lower-case hex extents without leading zeros, "...\n" at the end.
# Every document this matches is emit_file_yaml's output for the entry read from it (the two
# range checks _parse_canonical adds cover what a regular expression cannot: uid and gid within
# 32 bits signed, nextents equal to the extents listed); tests/test_shadowyaml.py checks that
# emitting the result gives the same bytes back, over random and mutated documents.
_DEC = rb"(0|[1-9][0-9]{0,19})"
_HEX = rb"0x(0|[1-9a-f][0-9a-f]{0,15})"
_ID = rb"(0|-?[1-9][0-9]{0,9})"
_EXTENT_TEXT = rb"  - devindex: " + _DEC + rb"\n    offset: " + _HEX + rb"\n    length: " + _HEX + rb"\n"
_CANONICAL = re.compile(
    rb"---\nfile:\n  path: (" + _PLAIN_PATH.pattern.encode() + rb")\n  size: " + _DEC + rb"\n  flags: " + _DEC
    + rb"\n  mode: 0(0|[1-7][0-7]{0,3})\n  uid: " + _ID + rb"\n  gid: " + _ID + rb"\n  nextents: ([1-9][0-9]?)\n"
    rb"  simple_ext_list:\n" + _EXTENT_TEXT  # the first extent, captured: most files have only it
    + rb"((?:" + _EXTENT_TEXT.replace(b"(", b"(?:") + rb"){0,%d})\.\.\.\n" % (MAX_SIMPLE_EXTENTS - 1))
_CANONICAL_EXTENT = re.compile(_EXTENT_TEXT)
_ID_MIN, _ID_MAX = -(1 << 31), (1 << 31) - 1


def _parse_canonical(raw: bytes) -> FileEntry | None:
    """The common case without a YAML parser: a document in exactly the shape we emit.

    One match of the whole document (no re-emission needed: see _CANONICAL); whatever this returns
    is what the full parser would return, and anything else goes to the full parser.
    """
    match = _CANONICAL.fullmatch(raw)
    if match is None:
        return None
    path, size, flags, mode, uid_text, gid_text, nextents, devindex, offset, length, more = match.groups()
    uid, gid = int(uid_text), int(gid_text)
    if not (_ID_MIN <= uid <= _ID_MAX and _ID_MIN <= gid <= _ID_MAX):
        return None  # upstream prints them signed: 4294967295 is written -1
    # from_fields: every file the mount looks up comes through here.
    extents: tuple[Extent, ...] = (from_fields(Extent, (int(offset, 16), int(length, 16), int(devindex))),)
    if more:
        found = _CANONICAL_EXTENT.findall(raw, match.start(11), match.end(11))
        extents += tuple([from_fields(Extent, (int(off, 16), int(span, 16), int(dev))) for dev, off, span in found])
    if int(nextents) != len(extents):
        return None  # the full parser says what is wrong
    return from_fields(FileEntry, (path.decode(), int(size), int(mode, 8), uid & 0xFFFFFFFF, gid & 0xFFFFFFFF,
                                   extents, (), int(flags)))


def parse_file_yaml(text: bytes | str) -> FileEntry:
    """Parse a shadow file's YAML into a FileEntry (its relpath is the `path` key).

    FormatError is the only exception it raises, whatever the document: the shadow tree is a
    directory any root process can write, and the mount must answer EIO, not crash, for it.
    """
    try:
        return _parse(text)
    except FormatError:
        raise
    except RecursionError:
        # libyaml's constructor recurses once per nesting level (~340 levels end Python's stack).
        raise FormatError("malformed YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:
        raise FormatError(f"malformed YAML: {type(err).__name__}: {err}") from None


def parse_shadow_file(raw: bytes, relpath: str | bytes) -> FileEntry:
    """The entry of the shadow file at `relpath` (under root/): parse_file_yaml, and its `path`
    key must name that very path. A YAML copied or moved elsewhere in the tree describes another
    file: what every reader (the mount, famfs.open) refuses rather than serve it under this name."""
    entry = parse_file_yaml(raw)
    if (entry.relpath.encode() if isinstance(relpath, bytes) else entry.relpath) != relpath:
        raise FormatError(f"its path key {entry.relpath!r} is not where it sits")
    return entry


def _parse(text: bytes | str) -> FileEntry:
    if isinstance(text, bytes) and (canonical := _parse_canonical(text)) is not None:
        return canonical
    yaml, _, loader = _libyaml()
    try:
        docs = list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as err:
        raise FormatError(f"malformed YAML: {str(err).splitlines()[0]}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict) or list(docs[0]) != ["file"]:
        raise FormatError("expected exactly one document holding one 'file' mapping")
    body = docs[0]["file"]
    if not isinstance(body, dict):
        raise FormatError("'file' is not a mapping")
    unknown = set(body) - set(FILE_KEYS) - {"simple_ext_list", "striped_ext_list"}
    if unknown:
        raise FormatError(f"unknown keys {sorted(map(str, unknown))}")
    missing = [key for key in ("path", "size", "mode", "nextents") if key not in body]
    if missing:
        raise FormatError(f"missing keys {missing}")
    if ("simple_ext_list" in body) == ("striped_ext_list" in body):
        raise FormatError("exactly one of simple_ext_list and striped_ext_list is required")
    if not isinstance(body["path"], str):
        raise FormatError("path is not a string")
    nextents = _number(body["nextents"], "nextents")
    without_extents = FileEntry(
        relpath=body["path"],
        size=_number(body["size"], "size"),
        flags=_number(body.get("flags", 0), "flags"),
        mode=_number(body["mode"], "mode") & 0o7777,
        uid=_unsigned32(_number(body.get("uid", 0), "uid", signed=True), "uid"),
        gid=_unsigned32(_number(body.get("gid", 0), "gid", signed=True), "gid"),
    )
    if "simple_ext_list" in body:
        extents = _extent_list(body["simple_ext_list"], MAX_SIMPLE_EXTENTS, "simple_ext_list")
        if nextents != len(extents):
            raise FormatError(f"nextents {nextents} but {len(extents)} extents listed")
        return without_extents._replace(extents=extents)
    stripes_raw = body["striped_ext_list"]
    if not isinstance(stripes_raw, list) or len(stripes_raw) != 1:
        raise FormatError("striped_ext_list must hold exactly one interleaved extent")
    if nextents != 1:
        raise FormatError(f"nextents {nextents} but 1 interleaved extent listed")
    stripe_raw = stripes_raw[0]
    if not isinstance(stripe_raw, dict) or set(stripe_raw) != {"nstrips", "chunk_size", "simple_ext_list"}:
        raise FormatError("striped extent needs exactly nstrips, chunk_size and simple_ext_list")
    strips = _extent_list(stripe_raw["simple_ext_list"], MAX_STRIPS, "striped_ext_list[0].simple_ext_list")
    if _number(stripe_raw["nstrips"], "nstrips") != len(strips):
        raise FormatError(f"nstrips {stripe_raw['nstrips']} but {len(strips)} strips listed")
    stripe = Stripe(chunk_size=_number(stripe_raw["chunk_size"], "chunk_size"), strips=strips)
    return without_extents._replace(stripes=(stripe,))
