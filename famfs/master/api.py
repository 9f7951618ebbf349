"""famfs.Master: the master's writing API for programs (docs/library.md).

Built on the writer's Session (famfs.master.writer): the same lock, the same rules, the same
order (data in place before its entry). What it adds: files created as writable mappings of their
own extents, logged when committed, and batch(), which holds the device lock once for many
operations instead of once per call (famfsctl pays an interpreter start and a log replay per call).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from famfs import config, identity, logsetup
from famfs import format as fmt
from famfs.device import map_alignment
from famfs.mapping import MappedFile, map_file
from famfs.master import alloc, reclaim, writer
from famfs.master.writer import MasterError

__all__ = ["Master", "NewFile", "MasterError"]

log = logsetup.get_logger("famfs.master")


class NewFile(MappedFile):
    """A created file, mapped writable over its extents and not yet in the log.

    Put its bytes in `.buffer`, then commit() (or close(), or leave its `with` block): the entry
    is appended only then, so no host ever sees the file before its data. Leaving the `with`
    block on an exception abandons it instead: nothing is logged and its space is given back.
    """

    def __init__(self, master: Master, entry: fmt.FileEntry, view: memoryview) -> None:
        super().__init__(entry.relpath, entry, master.device, "r+", view)
        self._master = master
        self.index: int | None = None  # the log index, once committed
        self._abandoned = False

    @property
    def committed(self) -> bool:
        return self.index is not None

    def commit(self) -> int:
        """Append the file's entry (its data must be in place); its log index. Idempotent."""
        if self._abandoned:
            raise MasterError(f"{self.device}: {self.relpath}: abandoned, cannot be committed")
        if self.index is None:
            self.flush()  # its bytes reach the device before its entry (coherence = "flush")
            self.index = self._master._commit(self)
        return self.index

    def abandon(self) -> None:
        """Drop an uncommitted file: nothing is logged. Its space is given back to this session
        only if no view of the mapping is left (a stale view must never reach another file)."""
        if self.index is not None:
            raise MasterError(f"{self.device}: {self.relpath}: already logged (index {self.index}); use Master.remove")
        if self._abandoned:
            return
        self._abandoned = True
        super().close()
        self._master._abandon(self, reuse_space=not self.mapped)

    def close(self) -> None:
        """Commit (unless abandoned), then drop this object's view."""
        if not self._abandoned:
            self.commit()
        super().close()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None and not self.committed:
            self.abandon()
        else:
            self.close()


class Master:
    """The master host's writing API on one device. Not thread-safe: one Master per thread.

    Each operation outside batch() takes the device lock for itself; inside batch() the lock is
    taken once for all of them. The log is replayed only when it changed since this Master's last
    clean session (writer.Replayed). A file from create() holds the lock until it is committed
    or abandoned (its space is reserved in that session).
    """

    def __init__(self, device: str | os.PathLike[str], *, system_uuid_file: str | os.PathLike[str] | None = None,
                 rng: alloc.Shuffler | None = None) -> None:
        self.device = os.fspath(device)
        flag = os.fspath(system_uuid_file) if system_uuid_file is not None else None
        # Found as famfsctl finds it: the argument, $FAMFS_SYSTEM_UUID_FILE, famfs-agent.toml.
        settings = config.load()
        self.uuid_file: Path = identity.system_uuid_file(flag, settings.host.system_uuid_file)
        self._settings = settings.master  # reclaim_wait: how long create() waits for space being reclaimed
        self._device_paths = settings.host.devices  # where added devices may be (docs/devices.md)
        self._rng = rng
        self._stack: contextlib.ExitStack | None = None
        self._session: writer.Session | None = None
        self._known: writer.Replayed | None = None  # the last session's namespace, if it ended cleanly
        self._holds = 0
        self._pending: dict[str, NewFile] = {}
        with self._held():  # a client, a missing device or a broken log is refused here, at once
            pass

    # -- the lock, held while anyone needs it --

    def _acquire(self) -> writer.Session:
        if self._session is None:
            stack = contextlib.ExitStack()
            known, self._known = self._known, None
            self._session = stack.enter_context(writer.session(self.device, self.uuid_file, self._rng, known,
                                                               self._device_paths))
            self._stack = stack
        self._holds += 1
        return self._session

    def _release(self, *, clean: bool = True) -> None:
        """Let go of one hold; the last one unlocks. A session that ended cleanly leaves its
        namespace for the next one (reused only if the log has not changed meanwhile); one that
        failed part-way leaves nothing: the next session replays the log."""
        self._holds -= 1
        if self._session is not None and not clean:
            self._session.failed = True
        if self._holds == 0 and self._stack is not None:
            stack, session, self._stack, self._session = self._stack, self._session, None, None
            if session is not None and not session.failed:
                self._known = session.replayed()
            stack.close()

    @contextlib.contextmanager
    def _held(self) -> Iterator[writer.Session]:
        session = self._acquire()
        try:
            yield session
        except writer.SpaceHeld:
            # A refused allocation changed nothing (a batch's files are abandoned, their space
            # given back): the namespace still is the log's, reused by the next session rather
            # than replayed whole (a churn's bursts that found the space held did that each time).
            self._release()
            raise
        except BaseException:
            self._release(clean=False)
            raise
        self._release()

    @contextlib.contextmanager
    def batch(self) -> Iterator[Master]:
        """Hold the device lock for every operation in the block. Files still uncommitted at
        its end are committed, or abandoned if the block raised."""
        with self._held():
            before = set(self._pending)

            def started() -> list[NewFile]:
                return [self._pending[name] for name in set(self._pending) - before]

            try:
                yield self
                for new in started():
                    new.commit()
            except BaseException:
                for new in started():  # (a commit that failed above included)
                    new.abandon()
                raise

    # -- operations --

    def mkdir(self, relpath: str, mode: int = 0o755, uid: int | None = None, gid: int | None = None, *,
              parents: bool = False) -> None:
        """Log a directory (with `parents`, each missing parent too; an existing one is fine)."""
        with self._held() as session:
            session.mkdir(relpath, _owner(mode, uid, gid), parents=parents)

    def create(self, relpath: str, size: int, mode: int = 0o644, uid: int | None = None, gid: int | None = None, *,
               layout: alloc.InterleaveParams | None = None, on: Sequence[int | str] = ()) -> NewFile:
        """Allocate a file of `size` bytes (fixed for ever) and map it writable; it is logged
        when committed. `layout`: interleave it (InterleaveParams), else one contiguous extent
        (or up to 16 pieces when no free run holds it: docs/format.md, Allocation).
        `on`: the devices (index or device UUID) to place it on; default: docs/devices.md's policy."""
        if relpath in self._pending:
            raise MasterError(f"{self.device}: {relpath}: already being created (not yet committed)")
        owner = _owner(mode, uid, gid)

        def reserve() -> tuple[writer.Session, fmt.FileEntry]:
            """The space, reserved under a hold of the lock that the caller keeps; a refusal
            gives the hold back (nothing was reserved)."""
            session = self._acquire()
            try:
                devices = [session.device_index(str(spec)) for spec in on]
                return session, session.reserve(relpath, size, owner, layout=layout, on=devices)
            except writer.SpaceHeld:
                self._release()
                raise
            except BaseException:
                self._release(clean=False)
                raise

        if self._holds:  # inside batch() or with a file pending: the lock cannot be let go to wait
            session, entry = reserve()
        else:
            session, entry = reclaim.wait_for_space(self.device, reserve, self._settings.reclaim_wait,
                                                    self._settings.reclaim_poll)
        try:
            try:
                fds = {extent.devindex: session.device_at(extent.devindex).fd for extent in entry.all_extents()}
                view = map_file(fds, entry, map_alignment(session.device.info), writable=True, device=self.device)
            except BaseException:
                session.abandon(entry)
                raise
        except BaseException:
            self._release(clean=False)
            raise
        new = self._pending[relpath] = NewFile(self, entry, view)
        return new

    def remove(self, *relpaths: str) -> None:
        """Log the deletion of files, all or none (each must be a live file, and the log must have
        room for every DELETE). Their space is not reused at once, so a process that still maps one
        keeps reading what was there until the reclaim coordinator frees it, which waits for every
        host's pins: a mapping through famfs.open pins the file (docs/reclaim.md)."""
        with self._held() as session:
            session.remove_all(relpaths)

    # -- for NewFile --

    def _commit(self, new: NewFile) -> int:
        assert self._session is not None and self._pending.get(new.relpath) is new
        try:
            index = self._session.commit(new.entry)
        except BaseException:
            self._session.failed = True  # (the file's hold goes when it is abandoned)
            raise
        del self._pending[new.relpath]
        self._release()
        return index

    def _abandon(self, new: NewFile, *, reuse_space: bool) -> None:
        assert self._session is not None and self._pending.get(new.relpath) is new
        if reuse_space:
            self._session.abandon(new.entry)
        else:
            log.warning("abandoned_space_kept", device=self.device, path=new.relpath,
                        reason="a view of the mapping is still alive")
        del self._pending[new.relpath]
        self._release()


def _owner(mode: int, uid: int | None, gid: int | None) -> writer.Ownership:
    if not 0 <= mode <= 0o7777:
        raise MasterError(f"mode {mode:#o} is outside 0..0o7777")
    for name, value in (("uid", uid), ("gid", gid)):
        if value is not None and not 0 <= value <= 0xFFFFFFFF:
            raise MasterError(f"{name} {value} is not a 32-bit id")
    return writer.Ownership(mode, os.geteuid() if uid is None else uid, os.getegid() if gid is None else gid)
