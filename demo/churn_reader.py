"""A churn reader (demo/forever.py): runs on a client host (inside its mount namespace), opens
random files of the churn through the host's mount, or maps them with famfs.open, holds each for
a random time, checks every byte when it opens it and again before it lets go, and prints what it
saw as one JSON object when told to stop (SIGTERM) or at its deadline.

    python -m demo.churn_reader --mount DIR --via read|map --seconds S [--seed N] [--max-hold S]
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

import famfs
from demo import churn_data
from famfs import service

FILE_DIRS = 8  # the writers' directories per writer: api/d0..d7, mnt/d0..d7, and api/small
SAMPLES_KEPT = 10  # wrong-byte and error samples kept for the report
ERROR_EVENTS_KEPT = 50  # errors kept with their time and operation, to find them in the hosts' logs
# A call on the mount this long is a hang (the longest stall of a run is well under a second):
# said at once on stderr, with the Python stacks, and the harness looks at the mount then.
STUCK_S = 10.0
STUCK_MARK = "reader stuck:"


def churn_dirs() -> list[str]:
    return [f"{writer}/d{n}" for writer in ("api", "mnt") for n in range(FILE_DIRS)] + ["api/small"]


@dataclass
class ReaderReport:
    via: str
    opened: int = 0
    verified: int = 0  # checks of a whole file (at open and again before release)
    bytes_verified: int = 0
    wrong_bytes: int = 0
    vanished: int = 0  # listed, then gone before the open: deleted meanwhile (fine)
    errors: dict[str, int] = field(default_factory=dict)  # errno name -> count (EIO, ESTALE, ...)
    longest_stall_s: float = 0.0
    longest_stall_op: str = ""
    samples: list[str] = field(default_factory=list)
    # Each error as it happened: {"at": UTC ISO time, "relpath", "op", "errno", "message"}; the
    # harness matches "at" against the mount's and agent's log lines (demo/forever.py).
    error_events: list[dict[str, str]] = field(default_factory=list)


def utc_now() -> str:
    """The wall clock as the daemons' logs stamp their lines (famfs.logsetup: ISO, UTC)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Reader:
    def __init__(self, mount: Path, via: str, seed: int, max_hold: float) -> None:
        self.mount = mount
        self.via = via
        self.rng = random.Random(seed)
        self.max_hold = max_hold
        self.stop = threading.Event()
        self.report = ReaderReport(via)
        self.errors: Counter[str] = Counter()
        self.buffer = bytearray(churn_data.CHUNK)
        self.op = ""  # the call being made now: what an error is reported against
        self.relpath = ""  # the file or directory it is made on
        self.op_since: float | None = None  # when the timed call under way began (None: none is)
        self.done = threading.Event()

    def watch(self) -> None:
        """(a thread) Say once per call when a call on the mount has taken STUCK_S: every
        thread's Python stack, then which call, on which path, since when. Goes on after SIGTERM (when
        a reader that does not stop is found), until run() returns."""
        said = None
        while not self.done.wait(1.0):
            since = self.op_since
            if since is not None and since != said and time.monotonic() - since > STUCK_S:
                said = since
                faulthandler.dump_traceback(all_threads=True)  # first: the line below is what is looked for
                print(f"{STUCK_MARK} {self.op} {self.relpath} for {time.monotonic() - since:.1f} s at {utc_now()}",
                      file=sys.stderr, flush=True)

    def doing(self, op: str) -> float:
        """Note the call about to be made; its start, for timed()."""
        self.op = op
        self.op_since = started = time.monotonic()
        return started

    def timed(self, op: str, started: float) -> None:
        self.op_since = None
        took = time.monotonic() - started
        if took > self.report.longest_stall_s:
            self.report.longest_stall_s, self.report.longest_stall_op = took, op

    def run(self, deadline: float) -> ReaderReport:
        threading.Thread(target=self.watch, name="watch", daemon=True).start()
        try:
            return self.read_until(deadline)
        finally:
            self.done.set()

    def read_until(self, deadline: float) -> ReaderReport:
        while not self.stop.is_set() and time.monotonic() < deadline:
            directory = self.rng.choice(churn_dirs())
            try:
                relpath = self.pick(directory)
            except OSError as err:
                self.failed(directory, err)
                continue
            if relpath is None:
                self.stop.wait(0.05)
                continue
            try:
                self.hold(relpath)
            except FileNotFoundError:
                self.report.vanished += 1
            except OSError as err:
                self.failed(relpath, err)
        self.report.errors = dict(self.errors)
        return self.report

    def failed(self, relpath: str, err: OSError) -> None:
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        self.errors[name] += 1
        self.sample(f"{relpath}: {name} at {self.op}: {err}")
        if len(self.report.error_events) < ERROR_EVENTS_KEPT:
            self.report.error_events.append({"at": utc_now(), "relpath": relpath, "op": self.op, "errno": name,
                                             "message": str(err)})

    def pick(self, directory: str) -> str | None:
        self.relpath = directory
        started = self.doing("listdir")
        try:
            names = os.listdir(self.mount / directory)
        except FileNotFoundError:
            return None
        finally:
            self.timed("listdir", started)
        return f"{directory}/{self.rng.choice(names)}" if names else None

    def hold(self, relpath: str) -> None:
        self.relpath = relpath
        hold = self.rng.uniform(0, self.max_hold)
        if self.via == "map":
            self.hold_mapped(relpath, hold)
        else:
            self.hold_open(relpath, hold)

    def hold_open(self, relpath: str, hold: float) -> None:
        started = self.doing("open")
        fd = os.open(self.mount / relpath, os.O_RDONLY)
        self.timed("open", started)
        try:
            self.report.opened += 1
            self.op = "fstat"
            size = os.fstat(fd).st_size
            serial = self.check(relpath, self.read_all(fd, size, "read"), None)
            self.stop.wait(hold)
            self.check(relpath, self.read_all(fd, size, "read after hold"), serial)
        finally:
            op, started = self.op, self.doing("close")
            os.close(fd)
            self.timed("close", started)
            self.op = op  # an error on its way out is the earlier call's

    def read_all(self, fd: int, size: int, op: str) -> numpy.ndarray:
        data = numpy.empty(size, dtype=numpy.uint8)
        view = memoryview(data)
        done = 0
        while done < size:
            started = self.doing(op)
            got = os.preadv(fd, [view[done:done + churn_data.CHUNK]], done)
            self.timed("read", started)
            if got == 0:
                raise OSError(errno.EIO, f"short read at {done} of {size}")
            done += got
        return data

    def hold_mapped(self, relpath: str, hold: float) -> None:
        started = self.doing("famfs.open")
        mapped = famfs.open(self.mount / relpath)
        self.timed("famfs.open", started)
        with mapped:
            self.op = "mapped"
            self.report.opened += 1
            data = numpy.frombuffer(mapped.buffer, dtype=numpy.uint8)
            serial = self.check(relpath, data, None)
            self.stop.wait(hold)
            self.check(relpath, data, serial)
            del data

    def check(self, relpath: str, data: numpy.ndarray, serial: int | None) -> int | None:
        """Every byte against (relpath, serial); `serial` None: the one the header names."""
        checked = serial is not None  # the second check, after the hold
        if serial is None:
            serial = churn_data.serial_of(data)
        if serial is None:
            wrong = data.size
        else:
            wrong = churn_data.wrong_bytes(data, relpath, serial)
        self.report.verified += 1
        self.report.bytes_verified += data.size
        if wrong:
            self.report.wrong_bytes += wrong
            self.sample(f"{relpath}: {wrong} wrong bytes of {data.size} (serial {serial}, header now "
                        f"{churn_data.serial_of(data)}) at the check {'after the hold' if checked else 'at open'}, "
                        f"{utc_now()}")
        return serial

    def sample(self, text: str) -> None:
        if len(self.report.samples) < SAMPLES_KEPT:
            self.report.samples.append(text)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.churn_reader", description=__doc__.splitlines()[0])
    parser.add_argument("--mount", type=Path, required=True, help="this host's famfs mount point")
    parser.add_argument("--via", choices=("read", "map"), required=True, help="read(2) through the mount, or famfs.open")
    parser.add_argument("--seconds", type=float, required=True, help="stop on its own after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-hold", type=float, default=2.0, help="longest time a file is held open (s)")
    args = parser.parse_args()
    reader = Reader(args.mount, args.via, args.seed, args.max_hold)

    service.stop_on_signals(reader.stop)  # (not Event.set() in a handler: a deadlock, see there)
    # The harness's look at a reader that does not stop: its Python stack, to stderr (its log),
    # written from the signal handler in C while the main thread is blocked in a system call.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    report = reader.run(time.monotonic() + args.seconds)
    print(json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
