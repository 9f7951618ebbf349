"""The floor for listings: a pyfuse3 file system that serves the names of a directory tree and
nothing else (bench/bench_fuse.py walks it beside famfs-fuse-mount).

`python -m bench.noop_tree TREE MOUNTPOINT` reads the names below TREE once (a shadow tree's
root/: directories and files), then mounts, in the foreground until unmounted (fusermount3 -u)
or interrupted (SIGINT), a file system listing the same names. Attributes are made up (a file is
4 KiB, 0644, root's; a directory 0755) and no request does any I/O. Mounted the way
famfs-fuse-mount mounts (its fuse options, read-only; its entry and attribute timeouts), on the
same pyfuse3 and trio, answering lookup, getattr and readdir (with every entry's attributes, as
ours does) the way ours does: what it costs is pyfuse3's and the kernel's per-entry cost and
nothing of ours.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Sequence

import pyfuse3
import trio

from bench.noop_fs import OPTIONS, TIMEOUT_S

FILE_SIZE = 4096


class Tree:
    """Inode numbers, names and children of every directory and file below a directory."""

    def __init__(self, top: str) -> None:
        self.children: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        self.parent: dict[int, int] = {pyfuse3.ROOT_INODE: pyfuse3.ROOT_INODE}
        pending = [(os.fsencode(top), pyfuse3.ROOT_INODE)]
        next_ino = pyfuse3.ROOT_INODE + 1
        while pending:
            path, ino = pending.pop()
            for entry in os.scandir(path):
                child = next_ino
                next_ino += 1
                self.children[ino][entry.name] = child
                self.parent[child] = ino
                if entry.is_dir(follow_symlinks=False):
                    self.children[child] = {}
                    pending.append((entry.path, child))


class NoopTreeOperations(pyfuse3.Operations):
    def __init__(self, tree: Tree) -> None:
        super().__init__()
        self.tree = tree
        self.listings: dict[int, list[tuple[bytes, int]]] = {}
        self.next_fh = 1

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if inode in self.tree.children:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFDIR | 0o755, 2, 0
        else:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o644, 1, FILE_SIZE
        attrs.st_blksize = 4096
        attrs.st_blocks = -(-attrs.st_size // 512)
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT_S
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if inode not in self.tree.parent:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        children = self.tree.children.get(parent_inode)
        if children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        inode = self.tree.parent[parent_inode] if name == b".." else parent_inode if name == b"." else children.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        children = self.tree.children.get(inode)
        if children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self.next_fh
        self.next_fh += 1
        self.listings[fh] = sorted(children.items())  # as ours: a sorted snapshot
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.listings[fh]
        for index in range(start_id, len(listing)):
            name, inode = listing[index]
            if not pyfuse3.readdir_reply(token, name, self._attributes(inode), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        del self.listings[fh]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_tree", description=__doc__.splitlines()[0])
    parser.add_argument("tree", help="the directory whose names are served (a shadow's root/)")
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    ops = NoopTreeOperations(Tree(args.tree))
    pyfuse3.init(ops, args.mountpoint, OPTIONS)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
