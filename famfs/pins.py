"""Pins: "something on this host can still touch this file's bytes" (docs/reclaim.md, "Pins").

A pin is a shared flock on `<shadow>/.agent/pins/<hash of relpath>`, held by the mount from a
file's open to its release and by a `famfs.open` mapping made with `device=`. The agent, after it
has unlinked a deleted file's YAML, tests the pin with LOCK_EX|LOCK_NB: free means nothing opened
the file before the unlink, and anything that pins after it finds no YAML (*pin, then look*).

A pin file the agent finds free it unlinks while holding LOCK_EX (so pin files do not pile up);
a pinner therefore checks, once it holds its lock, that the file it locked is still the one at
the path, and starts again if not: a lock on an unlinked pin file would be a lock nobody tests.
Flocks belong to the open file description: they die with the process that holds them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterable

from famfs.shadowdir import AGENT_DIR, PINS_DIR

PINS_MODE = 0o1777  # any process that may map a file may pin it; only the creator (or root) unlinks
PIN_FILE_MODE = 0o644
PIN_OPEN = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
RETRY_S = 0.0002  # a pin refused for a moment: the agent is testing it (it holds LOCK_EX for microseconds)


def pins_dir(shadow: str | bytes | os.PathLike[str]) -> str:
    return os.path.join(os.fsdecode(shadow), AGENT_DIR, PINS_DIR)


def pin_name(relpath: str | bytes) -> str:
    """The pin file's name: a hash, so any relpath (80 bytes, any characters) is one flat name."""
    raw = relpath.encode() if isinstance(relpath, str) else relpath
    return hashlib.sha256(raw).hexdigest()[:40]


def ensure_dir(shadow: str | bytes | os.PathLike[str]) -> str:
    """The pins directory, made if missing (by the agent at start, or the first pinner)."""
    path = pins_dir(shadow)
    try:
        os.mkdir(path, PINS_MODE)
        os.chmod(path, PINS_MODE)  # no umask
    except FileExistsError:
        pass
    return path


def try_pin(shadow: str | bytes | os.PathLike[str], relpath: str | bytes) -> int | None:
    """A descriptor holding the pin of `relpath` (LOCK_SH), or None if the agent holds the pin
    file's LOCK_EX at this instant (try again: it lets go at once). OSError if the pins
    directory cannot be used."""
    directory = ensure_dir(shadow)
    path = os.path.join(directory, pin_name(relpath))
    while True:
        fd = os.open(path, PIN_OPEN, PIN_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            on_path = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            on_path = None
        held = os.fstat(fd)
        if on_path is not None and (on_path.st_dev, on_path.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # the agent unlinked it between our open and our lock: pin the new one


def pin(shadow: str | bytes | os.PathLike[str], relpath: str | bytes, timeout_s: float = 5.0) -> int:
    """try_pin until it succeeds (blocking: for famfs.open, not the mount's trio thread)."""
    deadline = time.monotonic() + timeout_s
    while (fd := try_pin(shadow, relpath)) is None:
        if time.monotonic() >= deadline:
            raise OSError(errno.EAGAIN, f"{relpath!r}: its pin stayed locked by the agent for {timeout_s} s")
        time.sleep(RETRY_S)
    return fd


def pinned(directory: str, names: Iterable[str]) -> set[str]:
    """Which of the pin files `names` (in the pins `directory`) are held by someone now. A free
    pin file is unlinked under LOCK_EX (try_pin's check makes that safe). Call it only after the
    YAMLs of the files tested are unlinked: *pin, then look* depends on that order."""
    held: set[str] = set()
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # never pinned, or unlinked by an earlier test
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.add(name)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        finally:
            os.close(fd)  # also lets go of LOCK_EX
    return held


def present(directory: str) -> set[str]:
    """The pin files there now: a path with no pin file is not pinned (its test is skipped)."""
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


class PathPins:
    """One process's pins, counted per path: the mount pins a path once however many handles
    it has open on it, and lets go when the last one is released."""

    def __init__(self, shadow: str | bytes | os.PathLike[str]) -> None:
        self.shadow = os.fsdecode(shadow)
        self.held: dict[bytes, tuple[int, int]] = {}  # relpath -> (fd, count)

    def try_take(self, relpath: bytes) -> bool:
        """Pin `relpath` (once more); False if the agent is testing it at this instant."""
        found = self.held.get(relpath)
        if found is not None:
            self.held[relpath] = (found[0], found[1] + 1)
            return True
        fd = try_pin(self.shadow, relpath)
        if fd is None:
            return False
        self.held[relpath] = (fd, 1)
        return True

    def drop(self, relpath: bytes) -> None:
        fd, count = self.held[relpath]
        if count > 1:
            self.held[relpath] = (fd, count - 1)
            return
        del self.held[relpath]
        os.close(fd)

    def close(self) -> None:
        for fd, _ in self.held.values():
            os.close(fd)
        self.held.clear()
