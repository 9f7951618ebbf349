"""Grouped commits: new files closed close together on the master's mount go into the log in one
locked step (docs/fusefs.md, "Grouped commits").

Each last close (release) of a file written through the mount asks `commit()`. The first asker
while no group is being logged leads: it takes every file waiting (up to MAX_FILES), and one
worker thread logs them all (famfs.namespace.NamespaceWriter.create_group: one device lock, each
file allocated and its bytes put in place, then the entries and, last, the log's header). Files
whose release arrives meanwhile wait for the lock (trio.Lock is fair: first come, first served)
and go together in the next group, led by the first of them. So there is no timer: a file alone
is logged at once, as before, and a group forms only while the previous one is being written.
Each caller gets its own file's answer (its index, or its refusal alone) only once the whole
group is logged; the mount then waits for the agent to show it before the release is answered.

Only the trio thread touches this.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from famfs.namespace import NamespaceError, Owner

MAX_FILES = 256  # one group's files: bounds the time the device lock is held for one group
Results = list[int | NamespaceError]
LogGroup = Callable[[Sequence[tuple[str, Owner, bytes]]], Results]


@dataclass(eq=False)
class _Waiting:
    relpath: str
    owner: Owner
    data: bytes
    result: int | NamespaceError | None = None
    done: bool = False


class GroupCommitter:
    """Funnels new files into grouped calls of `log_group`, run in a worker thread under `limiter`
    (the mount's one writer slot: groups and its other writer calls take turns)."""

    def __init__(self, log_group: LogGroup, limiter: trio.CapacityLimiter) -> None:
        self._log_group = log_group
        self._limiter = limiter
        self._waiting: list[_Waiting] = []
        self._turn = trio.Lock()
        self.groups = 0  # groups logged, and the files in them (each group is also a creat_group log line)
        self.files = 0

    async def commit(self, relpath: str, owner: Owner, data: bytes) -> int:
        """Log one file, with whichever others are waiting; its index once the group is logged.
        A refusal of this file is raised as its NamespaceError."""
        me = _Waiting(relpath, owner, data)
        self._waiting.append(me)
        try:
            async with self._turn:
                if not me.done:
                    await self._log_waiting()
        finally:
            if not me.done and me in self._waiting:  # cancelled while waiting its turn: not logged
                self._waiting.remove(me)
        if isinstance(me.result, NamespaceError):
            raise me.result
        assert me.result is not None
        return me.result

    async def _log_waiting(self) -> None:
        group, self._waiting = self._waiting[:MAX_FILES], self._waiting[MAX_FILES:]
        try:
            results = await trio.to_thread.run_sync(
                self._log_group, [(one.relpath, one.owner, one.data) for one in group], limiter=self._limiter)
        except NamespaceError as err:
            results = [err] * len(group)  # the step itself failed: none of them is logged
        except BaseException:
            # Cancelled or broken: the others must not wait for an answer that never comes. None of
            # the group is known to be logged, so each is answered EIO (and dropped, not retried).
            for one in group:
                one.result, one.done = NamespaceError(errno.EIO, f"{one.relpath}: its group was not logged"), True
            raise
        self.groups += 1
        self.files += len(group)
        for one, result in zip(group, results, strict=True):
            one.result, one.done = result, True
