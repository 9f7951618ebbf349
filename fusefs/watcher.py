"""inotify on the shadow root → relpaths in a trio memory channel, read on the trio thread.

The consumer re-checks each named path against the disk, so an event only has to say *where*
something happened, never what. What inotify cannot say is reported as RESCAN: a kernel queue
overflow, a directory that could not get a watch (the watch limit), and our own channel being
full. No thread: a trio task waits for the nonblocking inotify fd to be readable, reads every
queued event at once and hands the burst's paths over, deduplicated. Only the walk of a directory
that appeared (to watch it, and to report what was put in it before its watch) runs in a worker.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog
import trio

from famfs.inotify import (IN_CREATE, IN_DELETE_SELF, IN_IGNORED, IN_ISDIR, IN_MOVE_SELF, IN_MOVED_FROM,
                            IN_MOVED_TO, IN_Q_OVERFLOW, WATCH_MASK, Inotify, events)

log = structlog.get_logger("famfs-fuse-mount")

RESCAN: Final = None  # channel message: reconcile everything
CHANNEL_SIZE = 65536
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
READS_A_WAKEUP: Final = 16  # then the consumer gets its turn, even if events keep coming
_GONE: Final = (errno.ENOENT, errno.ENOTDIR)  # no directory there (any more): nothing to watch


@dataclass
class Tree:
    """What a walk that watched a subtree saw."""
    watched: dict[int, bytes] = field(default_factory=dict)  # wd -> relpath of its directory
    found: list[bytes] = field(default_factory=list)  # every entry below the top (if collected)
    unwatched: list[str] = field(default_factory=list)  # why a directory got no watch


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _within(path: bytes, tops: set[bytes]) -> bool:
    """Whether path is one of tops or below one."""
    while path not in tops:
        cut = path.rfind(b"/")
        if cut < 0:
            return False
        path = path[:cut]
    return True


def watch_tree(inotify: Inotify, root: bytes, top: bytes, collect: bool, mask: int = WATCH_MASK) -> Tree:
    """Watch every directory from root/top down, each before it is listed, so an entry made at
    any moment is either listed here or reported by its directory's watch."""
    tree = Tree()
    pending = [top]
    while pending:
        relpath = pending.pop()
        path = _join(root, relpath) if relpath else root
        try:
            tree.watched[inotify.add_watch(path, mask)] = relpath
        except OSError as err:
            if err.errno in _GONE:
                continue
            tree.unwatched.append(f"no inotify watch for {os.fsdecode(path)}: {err.strerror} (watch limit?)")
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    child = _join(relpath, os.fsencode(entry.name))
                    if collect:
                        tree.found.append(child)
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(child)
        except OSError:
            continue  # gone meanwhile: its parent's watch reports that
    return tree


class ShadowWatcher:
    """Feeds `send` with relpaths (bytes, b"" for the root) or RESCAN; `run` is its trio task."""

    def __init__(self, root: bytes, send: trio.MemorySendChannel[bytes | None]) -> None:
        self.root = root
        self.send = send
        self.lost_events = False  # a message could not be queued (set and read on the trio thread)
        self.inotify = Inotify()
        self._dirs: dict[int, bytes] = {}  # wd -> relpath of the watched directory (b"" the root)
        self._root_wd = -1
        self._stopped = False

    def start(self) -> None:
        """Watch the whole tree (before the mount's first scan of it)."""
        check_watch_limit(self.root)
        self._root_wd = self.inotify.add_watch(self.root)  # no root watch: no mount
        tree = watch_tree(self.inotify, self.root, b"", collect=False)
        self._dirs = tree.watched
        for reason in tree.unwatched:
            self._lost(reason)

    def stop(self) -> None:
        self._stopped = True
        self.inotify.close()

    def alive(self) -> bool:
        return not self._stopped

    async def run(self) -> None:
        try:
            while not self._stopped:
                await trio.lowlevel.wait_readable(self.inotify.fd)
                await self._take(self._read())
        except Exception:  # a bug here must not unmount: the periodic rescans take over
            log.exception("the inotify watcher failed")
            self.stop()

    def _read(self) -> bytes:
        chunks = []
        for _ in range(READS_A_WAKEUP):
            data = self.inotify.read()
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    async def _take(self, data: bytes) -> None:
        forward: dict[bytes | None, None] = {}
        new_dirs: list[bytes] = []
        moved_away: dict[int, bytes] = {}  # cookie -> relpath of a directory moved from here
        overflow = False
        dirs = self._dirs
        for wd, mask, cookie, name in events(data):
            parent = dirs.get(wd)
            if parent is None:
                overflow |= bool(mask & IN_Q_OVERFLOW)  # wd -1; else the last events of a dropped watch
                continue
            if mask & IN_IGNORED or (wd == self._root_wd and mask & (IN_DELETE_SELF | IN_MOVE_SELF)):
                del dirs[wd]
                if wd == self._root_wd:  # the shadow root itself went: nothing left to watch
                    log.error("the shadow root directory was removed or moved", shadow_root=os.fsdecode(self.root))
                    self.stop()
                    return
                continue
            path = _join(parent, name) if name else parent
            forward[path] = None
            if mask & IN_ISDIR and name:
                if mask & (IN_CREATE | IN_MOVED_TO):
                    new_dirs.append(path)
                    moved_away.pop(cookie, None)  # moved within the tree: its watches stay, renamed below
                elif mask & IN_MOVED_FROM:
                    moved_away[cookie] = path
        if moved_away:  # out of the tree (or its arrival is in a later read: watched again then)
            self._unwatch(set(moved_away.values()))
        if overflow:
            await self._rewatch()
            forward[RESCAN] = None
        elif new_dirs:
            forward.update(dict.fromkeys(await self._watch_new(new_dirs)))
        self._forward(forward)

    def _unwatch(self, tops: set[bytes]) -> None:
        """Drop the watches of these subtrees: one pass over the watches for a read's moves."""
        for wd in [wd for wd, path in self._dirs.items() if _within(path, tops)]:
            del self._dirs[wd]
            self.inotify.rm_watch(wd)

    async def _watch_new(self, tops: list[bytes]) -> list[bytes]:
        """Watch directories that appeared (made, or moved in whole); what is already in them."""
        def walk() -> list[Tree]:
            return [watch_tree(self.inotify, self.root, top, collect=True) for top in tops]
        found: list[bytes] = []
        for tree in await trio.to_thread.run_sync(walk):
            self._dirs.update(tree.watched)  # a directory moved within the tree keeps its wd: renamed
            found.extend(tree.found)
            for reason in tree.unwatched:
                self._lost(reason)
        return found

    async def _rewatch(self) -> None:
        """After an overflow: watch every directory again (those made meanwhile have none)."""
        log.warning("inotify lost events, rescanning the shadow tree", reason="inotify queue overflow")
        tree = await trio.to_thread.run_sync(watch_tree, self.inotify, self.root, b"", False)
        for wd in self._dirs.keys() - tree.watched.keys():
            self.inotify.rm_watch(wd)  # moved out of the tree meanwhile
        if self._root_wd not in tree.watched:
            self._dirs = {}
            self._root_wd = -1  # ... the root itself, replaced: its IN_IGNORED is on its way
            self.stop()
            return
        self._dirs = tree.watched
        for reason in tree.unwatched:
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        log.warning("inotify lost events, rescanning the shadow tree", reason=reason)
        self._forward({RESCAN: None})

    def _forward(self, messages: dict[bytes | None, None]) -> None:
        for message in messages:
            try:
                self.send.send_nowait(message)
            except trio.WouldBlock:
                # The consumer is behind by a whole channel: whatever we drop, a rescan recovers.
                self.lost_events = True
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return  # shutting down


def check_watch_limit(root: bytes) -> None:
    """inotify needs one watch per directory: raise the limit if we can, say so if we cannot."""
    directories = sum(1 for _ in os.walk(root))
    try:
        limit = int(MAX_USER_WATCHES.read_text())
    except (OSError, ValueError):
        return
    wanted = 2 * directories + 1024
    if limit >= wanted:
        return
    try:
        MAX_USER_WATCHES.write_text(str(wanted))
        log.info("raised fs.inotify.max_user_watches", old=limit, new=wanted, directories=directories)
    except OSError as err:
        log.error("shadow tree has more directories than inotify watches; periodic rescans will catch what "
                  "inotify misses", directories=directories, max_user_watches=limit, error=err.strerror)
