"""Helpers for the famfs-fuse-mount tests: real devices, shadow trees and mounts as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from agent import format as fmt
from agent.shadowyaml import emit_file_yaml
from tests.agent_util import run_agent

BIN = Path(sys.executable).parent
MOUNT_CLI = str(BIN / "famfs-fuse-mount")
WAIT_S = 10.0  # bounded waits only: never a timing assertion

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """Poll until check() returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def play(device: Path, shadow: Path) -> None:
    """One famfs-agent replay of the log into the shadow tree."""
    run_agent(device, "--shadow", shadow, "--no-progress", check=True)


def empty_shadow(shadow: Path) -> Path:
    """A shadow dir with an empty root/ and a staging dir, as the agent lays it out."""
    (shadow / "root").mkdir(parents=True, mode=0o755)
    (shadow / ".agent" / "staging").mkdir(parents=True, mode=0o755)
    shadow.chmod(0o755)
    return shadow


def put_file(shadow: Path, entry: fmt.FileEntry) -> Path:
    """Write a shadow file the agent's way: whole, in staging, then renamed into root/."""
    return put_yaml(shadow, entry.relpath, emit_file_yaml(entry))


def put_yaml(shadow: Path, relpath: str, text: bytes) -> Path:
    staged = shadow / ".agent" / "staging" / f"{os.getpid()}.{time.monotonic_ns()}"
    staged.write_bytes(text)
    target = shadow / "root" / relpath
    staged.rename(target)
    return target


def write_device(device: Path, offset: int, data: bytes) -> None:
    with open(device, "r+b") as image:
        image.seek(offset)
        image.write(data)


def read_device(device: Path, offset: int, length: int) -> bytes:
    with open(device, "rb") as image:
        image.seek(offset)
        return image.read(length)


def mount_status(mountpoint: Path) -> dict[str, int]:
    line = os.getxattr(mountpoint, "user.famfs.status").decode()
    return {key: int(value) for key, value in (word.split("=") for word in line.split())}


class Mount:
    """famfs-fuse-mount --foreground as a child process; always unmounted on exit."""

    def __init__(self, shadow: Path, device: Path, mountpoint: Path, *options: str, log: Path | None = None) -> None:
        self.shadow, self.device, self.mountpoint = shadow, device, mountpoint
        self.options = options
        self.log_path = log or mountpoint.parent / f"{mountpoint.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(exist_ok=True)
        args = [MOUNT_CLI, "--foreground", "--shadow", str(self.shadow), "--device", str(self.device)]
        for option in self.options:
            args += ["-o", option]
        with open(self.log_path, "ab") as log:
            process = self.process = subprocess.Popen([*args, str(self.mountpoint)], stdout=log, stderr=log)
        wait_for(lambda: os.path.ismount(self.mountpoint) or process.poll() is not None, "the mount")
        assert process.poll() is None, f"famfs-fuse-mount exited: {self.log()}"
        os.listdir(self.mountpoint)  # the kernel's INIT has been answered
        return self

    def __exit__(self, *exc: object) -> None:
        unmount(self.mountpoint, self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait(timeout=WAIT_S)


def unmount(mountpoint: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    """fusermount3 -u, then the process must end; a lazy umount and a kill as a last resort."""
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
    if process is not None:
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if os.path.ismount(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def proc_setting(path: str, value: int) -> Iterator[None]:
    """Set a /proc/sys value for the duration; always put the old one back."""
    old = Path(path).read_text()
    Path(path).write_text(str(value))
    try:
        yield
    finally:
        Path(path).write_text(old)
