"""The master's writing Session behind the famfs.namespace.NamespaceWriter interface, for the
master's own mount (famfs_fuse_mount/ hands it to fusefs).

Each call starts a Session from the namespace the previous call left, while
the log has not moved behind its back (writer.Replayed: the file system's UUID, the entry count
and the last entry's seal, read under the lock); when famfsctl or another writer has appended
meanwhile, the log is replayed. So famfsctl and the mount share one device lock and one rule
book, and neither loses nor doubles the other's entries. A refused or failed call leaves
nothing behind: the next call replays the log rather than trust a model that may have been
half-updated.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from famfs import format as fmt
from famfs import logsetup, rules
from famfs.device import Device, DeviceError, probe
from famfs.famfslog import LogFullError
from famfs.identity import NotMasterError
from famfs.master import alloc, writer
from famfs.master.writer import MasterError, NewData, Ownership, Replayed, Session, SpaceHeld
from famfs.namespace import NamespaceError, Owner

log = logsetup.get_logger("famfs-fuse-mount")

# The errno a file-system request gets when a rule refuses its entry (the rest: EINVAL).
RULE_ERRNO: dict[str, int] = {
    rules.path_free.__name__: errno.EEXIST,
    rules.parent_is_directory.__name__: errno.ENOENT,
    rules.name_not_reserved.__name__: errno.EPERM,
    rules.rmdir_directory_empty.__name__: errno.ENOTEMPTY,
    rules.rmdir_target_is_that_directory.__name__: errno.ENOENT,
    rules.delete_target_live.__name__: errno.ENOENT,
    rules.setattr_target_live.__name__: errno.ENOENT,
}


class SessionWriter:
    """famfs.namespace.NamespaceWriter on the master's writer Session; thread-safe.

    Each call reads the superblock and the log anew, as famfsctl does, from the device at its path:
    the one the previous call opened, kept open while the path still names that very file (device
    and inode, or device number) at the size it was mapped with, else opened again; and opened
    again after any call that failed. So a file system re-made under the mount (another log
    length, another master) or an image file replaced is written as it now is, never through a
    superblock or a descriptor of the old one. Keeping it saves each group a map and an unmap of
    the device and the page faults of reading the log through a new mapping (measured in
    docs/fusefs.md, "Numbers").
    """

    def __init__(self, device_path: str, uuid_file: Path, device_paths: Callable[[], Sequence[str]] = tuple) -> None:
        """`device_paths`: asked at each call, where this host's added devices may be (the mount
        gives its [host] devices and its agent's findings: famfs.devices.where_to_look)."""
        self.device_path = device_path
        self.uuid_file = uuid_file
        self.device_paths = device_paths
        self._lock = threading.Lock()  # flock is per open file: threads of one process need this too
        self._opened: Device | None = None  # the device the last call that succeeded used (see _device)
        self._rng = random.Random()  # orders interleaved allocations: one for the writer's life, not one seeded per call
        self._known: Replayed | None = None  # what the last call that succeeded left
        # The same, kept while a call runs (precheck reads it without the lock), and the log's
        # slot count: None until a call succeeds, and after one fails.
        self._last: tuple[Replayed, int] | None = None

    @contextlib.contextmanager
    def _locked(self, relpath: str) -> Iterator[Session]:
        with self._lock:
            known, self._known = self._known, None
            try:
                with writer.session(self.device_path, self.uuid_file, self._rng, known,
                                    device_paths=self.device_paths(), opened=self._device()) as current:
                    yield current
                    self._known = current.replayed()
                    self._last = self._known, current.log.header().slots
            except Exception as err:
                self._last = None
                self._forget_device()
                raise _refusal(relpath, err) from None

    def _device(self) -> Device:
        """The device at device_path, open for writing: the kept one while the path still names it."""
        kept = self._opened
        if kept is not None and not _still_at(self.device_path, kept):
            self._forget_device()
            kept = None
        if kept is None:
            kept = self._opened = Device(self.device_path, writable=True)
        return kept

    def _forget_device(self) -> None:
        if self._opened is not None:
            opened, self._opened = self._opened, None
            opened.close()

    def mkdir(self, relpath: str, owner: Owner) -> int:
        with self._locked(relpath) as session:
            return session.mkdir(relpath, _ownership(owner))[0]

    def create_group(self, files: Sequence[tuple[str, Owner, bytes]]) -> list[int | NamespaceError]:
        first = files[0][0] if files else ""
        with self._locked(first) as session:
            done = session.create_group([NewData(relpath, _ownership(owner), data) for relpath, owner, data in files])
        return [_refusal(relpath, result) if isinstance(result, MasterError) else result
                for (relpath, _, _), result in zip(files, done, strict=True)]

    def precheck(self, relpath: str, owner: Owner) -> bool:
        last = self._last
        if last is None:
            return False
        # From memory: a session may be changing this namespace in another thread meanwhile
        # (each look is one dict lookup). Only a yes is answered here; a no (or a log that looked
        # full) is asked again under the lock, which also names it (famfsctl, a re-made file
        # system: the memory may be behind). The entry is checked once more when it is logged.
        known, slots = last
        try:
            fmt.encode_relpath(relpath)
            rules.check_new_name(known.namespace, relpath, owner.uid, owner.gid)
        except fmt.FormatError:
            return False
        return known.next_index < slots

    def check_new(self, relpath: str, owner: Owner) -> None:
        with self._locked(relpath) as session:
            session.check_new(relpath, _ownership(owner))
            if session.log.header().full:  # the entry it will need: refused now rather than at its close
                raise LogFullError(session.log.path, session.log.header().slots)

    def create(self, relpath: str, size: int, owner: Owner, data: Iterable[bytes] | None) -> tuple[int, fmt.FileEntry]:
        with self._locked(relpath) as session:
            made = session.create(relpath, size, _ownership(owner), fill=None if data is None else iter(data))
            assert made.index is not None  # reuse is never asked for
            return made.index, made.entry

    def unlink(self, relpath: str) -> int:
        with self._locked(relpath) as session:
            return session.remove(relpath)

    def rmdir(self, relpath: str) -> int:
        with self._locked(relpath) as session:
            return session.rmdir(relpath)

    def setattr(self, relpath: str, owner: Owner) -> int | None:
        with self._locked(relpath) as session:
            return session.setattr(relpath, _ownership(owner))


def _ownership(owner: Owner) -> Ownership:
    return Ownership(owner.mode, owner.uid, owner.gid)


def _still_at(path: str, device: Device) -> bool:
    """Whether `path` names the open device's very file (or device node), at the size it was mapped
    with: not a replaced image, nor a device re-created or resized."""
    try:
        now, held = os.stat(path), os.fstat(device.fd)
        return ((now.st_dev, now.st_ino, now.st_rdev) == (held.st_dev, held.st_ino, held.st_rdev)
                and probe(path).size == device.size)
    except (OSError, DeviceError):
        return False


def _refusal(relpath: str, err: Exception) -> NamespaceError:
    """The errno and the one line for a refused or failed call."""
    if isinstance(err, NamespaceError):
        return err
    if isinstance(err, (LogFullError, SpaceHeld)):  # SpaceHeld: deleted files hold the room (docs/reclaim.md)
        return NamespaceError(errno.ENOSPC, str(err))
    if isinstance(err, DeviceError):
        return NamespaceError(errno.EIO, str(err))
    if isinstance(err, MasterError):
        cause = err.cause
        if isinstance(cause, NotMasterError):
            return NamespaceError(errno.EPERM, str(err))  # the device at the path now has another master
        if isinstance(cause, OSError) and cause.errno:
            return NamespaceError(cause.errno, str(err))  # a path missing, or of the other kind
        if isinstance(cause, alloc.AllocError):
            return NamespaceError(errno.ENOSPC, str(err))
        if isinstance(cause, rules.Violation):
            return NamespaceError(RULE_ERRNO.get(cause.rule, errno.EINVAL), str(err))
        if isinstance(cause, fmt.FormatError):
            too_long = len(relpath.encode(errors="surrogateescape")) > fmt.MAX_RELPATH_BYTES
            return NamespaceError(errno.ENAMETOOLONG if too_long else errno.EINVAL, str(err))
        return NamespaceError(errno.EIO, str(err))  # the log itself is in a state the writer refuses
    log.error("namespace change failed", path=relpath, error=repr(err))
    return NamespaceError(errno.EIO, f"{relpath}: {err!r}")
