"""The floor for FUSE reads: a pyfuse3 file system that serves one file of zeros and does nothing
else (bench/bench_fio.py measures beside it).

`python -m bench.noop_fs SIZE MOUNTPOINT [--cache direct|auto|always]` mounts, in the
foreground until unmounted (fusermount3 -u) or interrupted (SIGINT), a root holding `data`, SIZE bytes
of zeros. Mounted the way famfs-fuse-mount mounts (its fuse options, its cache modes: direct_io
for direct, keep_cache for always; the same entry and attribute timeouts, the same read-ahead),
on the same pyfuse3 and trio; its read handler returns a slice of one preallocated buffer of
zeros, so what it costs is pyfuse3's and the kernel's per-request cost and nothing of ours.
"""

from __future__ import annotations

import argparse
import errno
import stat
import sys
from collections.abc import Sequence

import pyfuse3
import trio

from famfs.config import MountSettings
from fusefs.cli import set_readahead

NAME = b"data"
FILE_INODE = pyfuse3.ROOT_INODE + 1
MAX_REQUEST = 1 << 20  # libfuse's largest read request (max_pages 256)
TIMEOUT_S = MountSettings().timeout  # famfs-fuse-mount's default entry and attribute timeouts ([mount] timeout)
OPTIONS = {"fsname=noop", "subtype=famfs", "default_permissions", "ro"}  # fusefs.cli.fuse_options, read-only


class NoopOperations(pyfuse3.Operations):
    def __init__(self, size: int, cache: str) -> None:
        super().__init__()
        self.size, self.cache = size, cache
        self.zeros = memoryview(bytes(MAX_REQUEST))
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFDIR | 0o755, 2, 0
        else:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o644, 1, self.size
        attrs.st_blksize = 4096
        attrs.st_blocks = -(-attrs.st_size // 512)
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT_S
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(FILE_INODE)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attributes(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=self.cache == "direct", keep_cache=self.cache == "always")

    async def read(self, fh: int, off: int, size: int) -> memoryview:
        return self.zeros[:max(0, min(size, self.size - off))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_fs", description=__doc__.splitlines()[0])
    parser.add_argument("size", type=int, help="bytes in the one file, `data`")
    parser.add_argument("mountpoint")
    parser.add_argument("--cache", choices=("direct", "auto", "always"), default="auto")
    args = parser.parse_args(argv)
    ops = NoopOperations(args.size, args.cache)
    pyfuse3.init(ops, args.mountpoint, OPTIONS)
    try:
        trio.run(serve, ops, args.mountpoint)
    finally:
        pyfuse3.close(unmount=True)
    return 0


async def serve(ops: NoopOperations, mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(readahead, ops.initialized, mountpoint)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def readahead(initialized: trio.Event, mountpoint: str) -> None:
    """The mount's read-ahead raised once INIT is answered, as famfs-fuse-mount raises it."""
    await initialized.wait()
    await trio.to_thread.run_sync(set_readahead, mountpoint, abandon_on_cancel=True)


if __name__ == "__main__":
    sys.exit(main())
