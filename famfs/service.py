"""Telling systemd a Type=notify service is ready (sd_notify), without libsystemd: one datagram
to the socket systemd names in $NOTIFY_SOCKET. Outside systemd (no such variable) it does nothing."""

from __future__ import annotations

import os
import socket

from famfs import env


def notify_ready(status: str) -> None:
    """READY=1 with a STATUS= line; errors are ignored (a lost readiness shows as a start timeout)."""
    address = os.environ.get(env.NOTIFY_SOCKET)
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(f"READY=1\nSTATUS={status}".encode(), address)
    except OSError:
        pass
