"""Reading the reference images' metadata (tests/data/*/meta.bin.gz) without a device."""

from __future__ import annotations

import functools
import gzip
import tarfile
from dataclasses import dataclass

from famfs import format as fmt
from tests.conftest import DATA


@dataclass(frozen=True)
class ReferenceLog:
    raw: bytes  # superblock region + log
    superblock: fmt.Superblock
    header: fmt.LogHeader

    def slot(self, index: int) -> bytes:
        start = fmt.LOG_OFFSET + fmt.entry_offset(index)
        return self.raw[start:start + fmt.ENTRY_SIZE]


@functools.cache
def reference_log(name: str) -> ReferenceLog:
    raw = gzip.decompress((DATA / name / "meta.bin.gz").read_bytes())
    superblock = fmt.Superblock.unpack(raw[:fmt.SUPERBLOCK.size])
    header = fmt.LogHeader.unpack(raw[fmt.LOG_OFFSET:fmt.LOG_OFFSET + fmt.LOG_HEADER.size], superblock.log_len)
    return ReferenceLog(raw, superblock, header)


def reference_shadow_files(name: str) -> dict[str, bytes]:
    """relpath -> bytes of every regular file in upstream's shadow tree for reference image `name`."""
    files: dict[str, bytes] = {}
    with tarfile.open(DATA / name / "shadow.tar.gz") as tar:
        for member in tar.getmembers():
            content = tar.extractfile(member) if member.isfile() else None
            if content is not None:
                files[member.name.split("/root/", 1)[1]] = content.read()
    return files
