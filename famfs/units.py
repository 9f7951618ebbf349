"""Sizes as people write and read them: one parser and one formatter for every program.

Accepted: a byte count (decimal, or 0x/0o/0b prefixed), or a number with a unit suffix, case
ignored: k m g t p (and kib mib gib tib pib, k/m/g/t/p followed by "i" or "ib") are powers of
1024, as upstream famfs's get_multiplier reads k/m/g; kb mb gb tb pb are powers of 1000 (SI). A
decimal number is allowed with a suffix when the result is a whole number of bytes (1.5g).
"""

from __future__ import annotations

import re
from fractions import Fraction

IEC_STEPS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_POWER = {letter: n + 1 for n, letter in enumerate("kmgtp")}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgtp](?:i?b?)?|b)?", re.IGNORECASE)
ACCEPTED = "a byte count or a number with a unit: 4096, 0x1000, 100m, 1.5g, 2GiB (1024-based), 1GB (1000-based)"


class SizeError(ValueError):
    """Text that is not a size; the message says what is accepted."""


def parse_size(text: str) -> int:
    """Bytes for `text` (see the module docstring); SizeError with the accepted forms otherwise."""
    stripped = text.strip()
    if re.fullmatch(r"0[xob][0-9a-f_]+", stripped, re.IGNORECASE):
        return int(stripped, 0)
    found = _SIZE.fullmatch(stripped)
    if found is None:
        raise SizeError(f"not a size: {text!r} ({ACCEPTED})")
    unit = (found["unit"] or "").lower()
    multiplier = 1
    if unit and unit != "b":
        base = 1000 if unit.endswith("b") and not unit.endswith("ib") else 1024
        multiplier = base ** _POWER[unit[0]]
    value = Fraction(found["number"]) * multiplier
    if value.denominator != 1:
        raise SizeError(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    """`size` bytes in the largest IEC unit that keeps it >= 1, at most two decimals: 8 GiB,
    1.5 GiB, 512 bytes."""
    if abs(size) < 1024:
        return f"{size} bytes" if size != 1 else "1 byte"
    value, unit = float(size), "bytes"
    for unit in IEC_STEPS:
        value /= 1024
        if abs(value) < 1024:
            break
    return f"{value:.2f}".rstrip("0").rstrip(".") + f" {unit}"


def describe_size(size: int) -> str:
    """`size` for a message: the human size, with the exact count where that one rounds (9 GiB,
    1.33 GiB (1431655765 bytes), 512 bytes)."""
    shown = format_size(size)
    number, unit = shown.split(" ")
    exact = unit.startswith("byte") or Fraction(number) * 1024 ** (IEC_STEPS.index(unit) + 1) == size
    return shown if exact else f"{shown} ({size} bytes)"


def format_rate(bytes_per_s: float) -> str:
    return f"{format_size(int(bytes_per_s))}/s"
