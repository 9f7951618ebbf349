"""The floor for writing through a FUSE mount: a pyfuse3 file system that takes mkdir, create and
writes and keeps only names and sizes (bench/bench_master_mount.py copies the same tree into it).

`python -m bench.noop_writefs MOUNTPOINT` mounts, in the foreground until unmounted
(fusermount3 -u) or interrupted (SIGINT), an empty root. Mounted the way famfs-fuse-mount mounts
(its fuse options; directories with its default entry and attribute timeouts, a file being
written with none, as the master's mount answers for one), on the same pyfuse3 and trio; the
kernel sends it the same requests a `cp -r` or `tar -x` sends the master's mount, and it answers
each from a dict, so what it costs is pyfuse3's and the kernel's per-request cost and nothing of ours.
"""

from __future__ import annotations

import errno
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pyfuse3
import trio

from bench.noop_fs import TIMEOUT_S
OPTIONS = {"fsname=noopwrite", "subtype=famfs", "default_permissions"}  # fusefs.cli.fuse_options


@dataclass
class Inode:
    mode: int
    uid: int
    gid: int
    size: int = 0


class NoopWriteOperations(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.inodes = {pyfuse3.ROOT_INODE: Inode(stat.S_IFDIR | 0o755, 0, 0)}
        self.names: dict[tuple[int, bytes], int] = {}

    def _attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        node = self.inodes[ino]
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino, attrs.st_mode, attrs.st_uid, attrs.st_gid = ino, node.mode, node.uid, node.gid
        attrs.st_nlink, attrs.st_size, attrs.st_blksize = 1, node.size, 1 << 20
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT_S if stat.S_ISDIR(node.mode) else 0
        return attrs

    def _new(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> int:
        if (parent, name) in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = len(self.inodes) + 1
        self.inodes[ino] = Inode(mode & ~ctx.umask, ctx.uid, ctx.gid)
        self.names[parent, name] = ino
        return ino

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        ino = self.names.get((parent_inode, name))
        if ino is None:
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino, attrs.entry_timeout = 0, TIMEOUT_S
            return attrs
        return self._attributes(ino)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(self._new(parent_inode, name, stat.S_IFDIR | mode, ctx))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ino = self._new(parent_inode, name, stat.S_IFREG | mode, ctx)
        return pyfuse3.FileInfo(fh=ino), self._attributes(ino)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self.inodes[fh]
        node.size = max(node.size, off + len(buf))
        return len(buf)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)  # as famfs-fuse-mount answers outside user.

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m bench.noop_writefs MOUNTPOINT", file=sys.stderr)
        return 2
    pyfuse3.init(NoopWriteOperations(), args[0], OPTIONS)
    try:
        trio.run(pyfuse3.main)
    except KeyboardInterrupt:
        pass
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
