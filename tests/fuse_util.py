"""Helpers for the famfs-fuse-mount tests: real devices, shadow trees and mounts as subprocesses."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from demo.harness import (  # noqa: F401 - re-exported for the tests
    MOUNT_CLI,
    WAIT_S,
    Mount,
    empty_shadow,
    own_dir,
    own_file,
    put_dir,
    put_file,
    put_yaml,
    unmount,
    wait_for,
)
from famfs import env
from famfs import format as fmt
from famfs.shadowdir import DirRecord
from tests.agent_util import run_agent

T = TypeVar("T")


class TrustingChecker:
    """For the inode table's own logic on a hand-made tree (no log): every file and directory
    is taken as the log's. The real check (famfs.ownership.ShadowCheck) is tests/test_security.py's."""

    def file_problem(self, entry: fmt.FileEntry) -> str | None:
        return None

    def dir_problem(self, relpath: str, raw: bytes | None) -> DirRecord | str:
        return DirRecord(0, 0o755, 0, 0)

    def listed(self, relpath: bytes, index: int) -> None:
        return None  # no log: every file's YAML is parsed

    def listed_many(self, wanted: Iterable[tuple[bytes, int]], prefix: bytes = b"") -> list[None]:
        return [None for _ in wanted]


def play(device: Path, shadow: Path, *extra: str | os.PathLike[str]) -> None:
    """One famfs-agent replay of the log into the shadow tree."""
    run_agent(device, "--shadow", shadow, "--no-progress", *extra, check=True)


def client_uuid_file(tmp_path: Path) -> Path:
    """A client host's identity file (not created: a host without one is a client)."""
    return tmp_path / "client-host" / "system_uuid"


def client_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a client host: an identity that is not the device's master, so its
    mount refuses namespace changes (the master's mount makes them: tests/test_master_mount.py).
    Its agent must run with the same identity (client_uuid_file), or the mount refuses to start."""
    return {**os.environ, env.SYSTEM_UUID_FILE: str(client_uuid_file(tmp_path))}


def write_device(device: Path, offset: int, data: bytes) -> None:
    with open(device, "r+b") as image:
        image.seek(offset)
        image.write(data)


def read_device(device: Path, offset: int, length: int) -> bytes:
    with open(device, "rb") as image:
        image.seek(offset)
        return image.read(length)


def bounded(call: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """call() in a worker thread, failing the test after `timeout`: a call into a stuck mount
    blocks in the kernel, and the test must get to its clean-up (which unmounts) all the same.
    The thread is a daemon: one left stuck never holds up the test run's exit (an executor's
    thread would, at its shutdown and again at the interpreter's)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # handed to the caller
            failure.append(err)

    worker = threading.Thread(target=run, name=f"bounded: {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise AssertionError(f"{what}: no answer from the mount within {timeout} s")
    if failure:
        raise failure[0]
    return outcome[0]


def mount_status(mountpoint: Path) -> dict[str, int]:
    line = bounded(lambda: os.getxattr(mountpoint, "user.famfs.status"), "getxattr user.famfs.status").decode()
    return {key: int(value) for key, value in (word.split("=") for word in line.split())}


@contextlib.contextmanager
def proc_setting(path: str, value: int) -> Iterator[None]:
    """Set a /proc/sys value for the duration; always put the old one back."""
    old = Path(path).read_text()
    Path(path).write_text(str(value))
    try:
        yield
    finally:
        Path(path).write_text(old)


def stat_gives_eio(path: Path) -> bool:
    """Whether stat() of a path in a mount answers EIO (a file the mount refuses to serve)."""
    try:
        bounded(path.stat, f"stat {path}")
    except OSError as err:
        return err.errno == errno.EIO
    return False
