"""`famfs-fuse-mount health [MOUNTPOINT]`: is this mount serving, and serving the right device?

For an exec probe (docs/operations.md): one JSON line, exit 0 healthy, 1 unhealthy, 2 bad
command line. Checks, in order (each needs the one before):

- mounted:   MOUNTPOINT is a famfs FUSE mount in /proc/self/mountinfo (nothing touches the mount)
- answering: the mount's root answers getxattr(user.famfs.shadow) within --timeout; a hung
             daemon cannot hang the probe (the call runs in a daemon thread)
- daemon:    the daemon answers `/identity` on its REST socket `<shadow>/sock` within --timeout
- device:    the daemon serves bytes, and the device holds the file system it serves now (after
             `mkfs --force` or a replaced image the mount switches to the new file system once
             its agent has played it: unhealthy in between, healthy again after)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from famfs import config
from famfs import format as fmt
from famfs.device import Device, DeviceError
from famfs.famfslog import FamfsLog
from famfs.shadowdir import SHADOW_XATTR, SOCKET

FSTYPE = "fuse.famfs"  # fusefs/cli.py mounts with subtype=famfs
DEFAULT_TIMEOUT_S = 2.0
EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2
MOUNTINFO = Path("/proc/self/mountinfo")
T = TypeVar("T")


class Unhealthy(Exception):
    """A check failed; the message says why."""


SUMMARY = "famfs-fuse-mount health [--timeout S] [--config FILE] [MOUNTPOINT] probes a mount: one JSON line, exit 0 healthy."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="famfs-fuse-mount health", description="Probe a famfs FUSE mount: one JSON line; "
                                "exit 0 healthy, 1 unhealthy.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="default: [mount] mountpoint")
    p.add_argument("--config", help=config.CONFIG_FLAG_HELP)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"how long the mount and its daemon may take to answer (default {DEFAULT_TIMEOUT_S})")
    return p


def is_famfs_mount(mountpoint: str) -> bool:
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split(" ")
        separator = fields.index("-")
        # mountinfo escapes blanks and backslashes in paths as octal (\040)
        point = fields[4].encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")
        if point == mountpoint and fields[separator + 1] == FSTYPE:
            return True
    return False


def bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """call() in a daemon thread; Unhealthy if it does not return within timeout_s."""
    outcome: list[T | BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # handed to the caller
            outcome.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise Unhealthy(f"{what}: no answer within {timeout_s} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise Unhealthy(f"{what}: {result}")
    return result


def rest_identity(shadow: str, timeout_s: float) -> dict[str, object]:
    """GET /identity on the daemon's REST socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(os.path.join(shadow, SOCKET))
        conn.sendall(b"GET /identity HTTP/1.1\r\nHost: famfs\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0].decode(errors="replace")
    if not status_line.startswith("HTTP/1.1 200"):
        raise Unhealthy(f"/identity answered {status_line!r}")
    identity = json.loads(body)
    if not isinstance(identity, dict):
        raise Unhealthy(f"/identity answered {body!r}")
    return identity


def device_fs_uuid(path: str) -> str:
    with Device(path) as device:
        return str(FamfsLog(device).superblock.fs_uuid)


def check(mountpoint: str, timeout_s: float) -> dict[str, object]:
    checks: dict[str, str] = {}
    answer: dict[str, object] = {"mountpoint": mountpoint, "checks": checks}
    try:
        if not is_famfs_mount(mountpoint):
            raise Unhealthy(f"{mountpoint} is not a famfs mount")
        checks["mounted"] = "ok"
        shadow = bounded(lambda: os.getxattr(mountpoint, SHADOW_XATTR), timeout_s, "getxattr on the mount root")
        checks["answering"] = "ok"
        identity = bounded(lambda: rest_identity(os.fsdecode(shadow), timeout_s), timeout_s, "the REST socket")
        checks["daemon"] = "ok"
        answer.update(identity)
        device, served = str(identity.get("device")), str(identity.get("fs_uuid"))
        if identity.get("refusal"):
            raise Unhealthy(f"the mount serves no bytes: {identity['refusal']}")
        try:
            current = device_fs_uuid(device)
        except (DeviceError, fmt.FormatError) as err:
            raise Unhealthy(f"device {device}: {err}") from None
        if current != served:
            raise Unhealthy(f"device {device} now holds file system {current}; the mount serves {served} (remount)")
        checks["device"] = "ok"
    except Unhealthy as problem:
        checks[("mounted", "answering", "daemon", "device")[len(checks)]] = str(problem)
    answer["healthy"] = len(checks) == 4 and all(value == "ok" for value in checks.values())
    return answer


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if not args.timeout > 0:
        parser().error(f"--timeout {args.timeout}: must be > 0")
    mountpoint = args.mountpoint
    if mountpoint is None:
        try:
            mountpoint = config.load(args.config).mount.mountpoint
        except config.ConfigError as err:
            print(f"famfs-fuse-mount health: {err}", file=sys.stderr)
            return EXIT_USAGE
        if not mountpoint:
            parser().error("no MOUNTPOINT given and no [mount] mountpoint in the config")
    answer = check(os.path.abspath(mountpoint), args.timeout)
    print(json.dumps(answer))
    sys.stdout.flush()
    return EXIT_HEALTHY if answer["healthy"] else EXIT_UNHEALTHY
