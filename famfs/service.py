"""Telling systemd a Type=notify service is ready (sd_notify), without libsystemd: one datagram
to the socket systemd names in $NOTIFY_SOCKET. Outside systemd (no such variable) it does nothing.
And stopping a service's loop on SIGTERM without a deadlock (stop_on_signals)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Sequence
from types import FrameType

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


def stop_on_signals(stop: threading.Event, signums: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Set `stop` when one of `signums` arrives (call from the main thread, once a process).

    Never from the signal handler itself: a handler runs in the main thread between any two
    bytecodes, so one landing while that thread is inside `stop.wait()`, holding the Event's lock
    for the few bytecodes around its sleep, would wait in `stop.set()` for that same lock for
    ever (a process that does not stop on SIGTERM). The C-level handler writes the signal's
    number to a pipe (signal.set_wakeup_fd) and a thread reading it sets `stop`; the Python
    handler does nothing."""
    wanted = set(signums)
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(read_end, True)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for signum in wanted:
        signal.signal(signum, _noted)

    def relay() -> None:
        while not wanted.intersection(os.read(read_end, 64)):
            pass
        stop.set()

    threading.Thread(target=relay, name="stop-on-signal", daemon=True).start()


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python handler of stop_on_signals: the wakeup pipe has the signal already."""
