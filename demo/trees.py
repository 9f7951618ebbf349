"""Comparing directory trees: shadow trees byte for byte, mounts against their source data."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

# relative path → ("d", mode, uid, gid) or ("f", mode, uid, gid, size, sha256)
Snapshot = dict[str, tuple[object, ...]]
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def snapshot(root: Path, *, skip: Iterable[str] = ()) -> Snapshot:
    """Every entry under `root`: kind, permission bits (setgid/sticky too), owner, and for files
    size and content hash. Names in `skip` are left out wherever they occur."""
    skipped = set(skip)
    found: Snapshot = {}
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(name for name in subdirs if name not in skipped)
        here = Path(directory)
        for name in subdirs:
            info = os.lstat(here / name)
            found[str((here / name).relative_to(root))] = ("d", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        for name in sorted(files):
            if name in skipped:
                continue
            path = here / name
            info = os.lstat(path)
            kind = "f" if stat.S_ISREG(info.st_mode) else f"special {stat.S_IFMT(info.st_mode):o}"
            found[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
                                                  info.st_size, sha256_of(path) if kind == "f" else "")
    return found


def differences(left: Snapshot, right: Snapshot, names: tuple[str, str] = ("left", "right"), limit: int = 10) -> list[str]:
    """Human-readable differences between two snapshots, at most `limit` of them."""
    found: list[str] = []
    for path in sorted(left.keys() | right.keys()):
        if left.get(path) != right.get(path):
            found.append(f"{path}: {names[0]}={left.get(path, 'missing')} {names[1]}={right.get(path, 'missing')}")
            if len(found) == limit:
                found.append("...")
                break
    return found


def file_checksums(root: Path) -> dict[str, str]:
    """relative path → sha256 for every regular file under `root`."""
    return {str(path.relative_to(root)): sha256_of(path) for path in sorted(root.rglob("*")) if path.is_file()}
