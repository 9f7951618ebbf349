"""Helpers for the famfsctl tests: run the real CLI as a subprocess, read back what it wrote."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import writer

FAMFSCTL_TIMEOUT_S = 300  # a whole cp or verify of the tests' largest files; a stuck one fails, never hangs


def famfsctl(*args: object, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """famfsctl ARGS... as its own process; with `check`, a failure shows its stderr."""
    done = subprocess.run([sys.executable, "-m", "famfs.master.famfsctl", *map(str, args)], capture_output=True, text=True,
                          timeout=FAMFSCTL_TIMEOUT_S,
                          env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"famfsctl {' '.join(map(str, args))} exited {done.returncode}: {done.stderr}")
    return done


def sparse_copy(source: Path, target: Path) -> Path:
    """A copy of an image that keeps its holes (shutil.copyfile would write every zero: GiBs)."""
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True, timeout=120)
    return target


def make_image(path: Path, size: str = "1g") -> Path:
    famfsctl("mkfs", "--size", size, path)
    return path


def entries(image: Path) -> list[fmt.Entry]:
    """Every logged entry; a bad one fails the test."""
    with Device(image) as device:
        logged = [entry for _, entry in FamfsLog(device).entries()]
    bad = [entry for entry in logged if isinstance(entry, fmt.EntryError)]
    assert not bad, bad
    return [entry for entry in logged if not isinstance(entry, fmt.EntryError)]


def file_entries(image: Path) -> list[fmt.FileEntry]:
    return [entry for entry in entries(image) if isinstance(entry, fmt.FileEntry)]


def file_bytes(image: Path, relpath: str) -> bytes:
    """A famfs file's content, read from the device at its extents."""
    with Device(image) as device:
        namespace = writer.load(FamfsLog(device))
        entry = namespace.files[relpath][1]
        return b"".join(device.read(offset, length) for offset, length in fmt.device_ranges(entry))


def digest(image: Path, *, but: tuple[int, int] | None = None) -> str:
    """Hash of the whole device: every data segment of the sparse image with its offset, and the
    size. Cheap on a mostly-empty image (SEEK_DATA skips the holes) and still covers every byte.
    `but`: an (offset, length) left out, e.g. famfs.hosts.TABLE_SPAN, which running agents renew."""
    skip_start, skip_end = (but[0], but[0] + but[1]) if but else (0, 0)
    hasher = hashlib.sha256()
    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        hasher.update(size.to_bytes(8, "little"))
        position = 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for first, last in ((start, min(end, skip_start)), (max(start, skip_end), end)) if but else ((start, end),):
                if first < last:
                    hasher.update(first.to_bytes(8, "little"))
                    for offset in range(first, last, 1 << 24):
                        hasher.update(os.pread(fd, min(1 << 24, last - offset), offset))
            position = end
    finally:
        os.close(fd)
    return hasher.hexdigest()
