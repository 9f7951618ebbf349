"""`make churn` (`python -m demo.forever`): a famfs that runs forever, shown under churn.

A master and two client hosts on one image (demo/cluster.py: each an agent and a mount, in
private mount namespaces where the kernel allows). On the master: `famfsctl reclaimd` (the
reclaim coordinator), a writer through `famfs.Master` (files of 1-64 MiB, and bursts of small
files created and deleted in `Master.batch()`, which is what uses up log slots) and a writer
through the master's mount (plain create + write + close, unlink). On each client: readers that
open random files through the mount (read(2)) or map them (`famfs.open`), hold them for random
times and check every byte (demo/churn_data.py: content derived from path + creation serial).

The writers run until they have written `--capacity-x` times the device's data capacity and
appended `--slots-x` times the log's slot count, or `--seconds` have passed. Every
`--fsck-every` seconds `famfsctl fsck` checks the image. When free log slots run low and no one
else has compacted, the harness runs `famfsctl compact` itself and says so. Report: stdout, or
JSON with --json. Everything started is stopped and removed at the end, on Ctrl-C too; only if a
reader met an error or a wrong byte, an allocation failed below 80 % live, an fsck was not clean,
a reader gave no report (where it was stuck is said) or the run failed (a writer's error, a daemon
that exited) are the cluster's logs first copied to a new directory under --keep-logs (default: the
temporary directory), which the report names, each reader error beside its host's log lines
around it (demo/churn_errors.py).

Exit status: 0 every check held (0 wrong bytes, 0 allocation failures below 80 % live, every fsck
clean and at least 10 of them); 1 a check failed or the cluster failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType

from demo import churn_data, churn_errors
from demo.churn_log import LogWatch
from demo.churn_reader import FILE_DIRS, STUCK_MARK, churn_dirs
from demo.cluster import Cluster, HarnessError, Host, log_tail, stop_process, tool, wait_until
from famfs import Master, MasterError, env, logsetup
from famfs import format as fmt

MiB = 1 << 20
UNIT = 2 * MiB
REPO = Path(__file__).resolve().parent.parent
LIVE_LIMIT = 0.8  # an allocation that fails below this much live data is a failure of the protocol
FSCK_MIN = 10
ERRORS_SHOWN = 5  # reader errors listed in the summary (the JSON report has up to 50 a reader)
LOG_FULL_MARGIN = 16  # free slots below which a refused write is taken for a full log, not for space
STACK_DUMP_S = 0.5  # after SIGUSR2, for a stuck reader and its mount to write their Python stacks
# The protocol's timings, short so that a 3-minute run turns the device over many times; the
# argument of docs/reclaim.md holds for any values in range (the coordinator's lease >= 2 x the
# serve window, here max(host_lease, 2 x serve_window) = 4 s).
AGENT_SETTINGS = {"heartbeat_interval": 0.1, "serve_window": 2.0}
MASTER_SETTINGS = {"host_lease": 4.0, "reclaim_poll": 0.05, "reclaim_wait": 30.0}


@dataclass(frozen=True)
class Plan:
    seconds: float = 180.0
    size: str = "1g"
    capacity_x: float = 20.0
    slots_x: float = 10.0
    live_target: float = 0.5  # the writers keep live data near this fraction of capacity
    big_min_mib: int = 1
    big_max_mib: int = 64
    mount_max_mib: int = 16  # the master's mount holds a new file's bytes in memory until its last close
    small_burst: int = 48  # small files created (and the last burst's deleted) per Master.batch()
    bursts_per_file: int = 3  # small bursts after each big file: 2 log entries per 2 MiB unit, what fills the log
    readers_per_client: int = 2  # one read(2), one famfs.open
    max_hold_s: float = 2.0
    fsck_every_s: float = 15.0
    compact_below: float = 0.2  # run famfsctl compact when fewer free slots than this are left
    seed: int = 1


@dataclass
class WriterFigures:
    files_created: int = 0
    files_deleted: int = 0
    bytes_written: int = 0
    alloc_failures_below_limit: int = 0
    alloc_failures_above_limit: int = 0
    log_full_waits: int = 0
    bursts_cut_short: int = 0  # a burst of small files that found the space held by deleted files
    failures: list[str] = field(default_factory=list)


class Live:
    """The files the writers made and have not deleted: path -> allocated bytes; and the totals."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.files: dict[str, int] = {}
        self.lock = threading.Lock()
        self.serials = itertools.count(1)

    def allocated(self) -> int:
        with self.lock:
            return sum(self.files.values())

    def fraction(self) -> float:
        return self.allocated() / self.capacity

    def add(self, relpath: str, size: int) -> None:
        with self.lock:
            self.files[relpath] = fmt.round_up(size, UNIT)

    def drop(self, relpath: str) -> None:
        with self.lock:
            self.files.pop(relpath, None)

    def of(self, prefix: str) -> list[str]:
        with self.lock:
            return [path for path in self.files if path.startswith(prefix)]


class Writer(threading.Thread):
    """One writer's loop; subclasses create and delete through their own route."""

    prefix = ""

    def __init__(self, plan: Plan, live: Live, rng: random.Random, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{self.prefix}", daemon=True)
        self.plan, self.live, self.rng, self.stop = plan, live, rng, stop
        self.figures = WriterFigures()
        self.error: BaseException | None = None
        self.trace = ""  # the error's traceback: kept with the logs (churn())

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        except BaseException as err:  # the main thread reports it and stops the run
            self.error, self.trace = err, traceback.format_exc()
            self.stop.set()

    def fresh_path(self, directory: str) -> str:
        """A path not live now, from a small pool: paths are reused with new serials."""
        taken = set(self.live.of(directory + "/"))
        while True:
            path = f"{directory}/f{self.rng.randrange(4 * FILE_DIRS + len(taken))}"
            if path not in taken:
                return path

    def make_room(self, size: int) -> None:
        """Delete this writer's oldest-random files until `size` more keeps live data at the target."""
        budget = int(self.plan.live_target * self.live.capacity)
        mine = self.live.of(self.prefix + "/d")
        self.rng.shuffle(mine)
        victims = []
        while mine and self.live.allocated() + size > budget:
            victim = mine.pop()
            self.live.drop(victim)
            victims.append(victim)
        if victims:
            self.delete(victims)
            self.figures.files_deleted += len(victims)

    def failed(self, what: str, err: BaseException) -> None:
        """An allocation refused: a failure of reclaim if live data was below LIVE_LIMIT."""
        fraction = self.live.fraction()
        if fraction < LIVE_LIMIT:
            self.figures.alloc_failures_below_limit += 1
        else:
            self.figures.alloc_failures_above_limit += 1
        if len(self.figures.failures) < 10:
            self.figures.failures.append(f"{what} (live {fraction:.0%}): {str(err).splitlines()[0]}")

    def step(self) -> None:
        raise NotImplementedError

    def delete(self, relpaths: list[str]) -> None:
        raise NotImplementedError


def is_log_full(err: BaseException) -> bool:
    return "log full" in str(err)


class ApiWriter(Writer):
    """famfs.Master: a file of 1-64 MiB, then every few files a burst of small ones in a batch."""

    prefix = "api"

    def __init__(self, plan: Plan, live: Live, rng: random.Random, stop: threading.Event, host: Host,
                 image: Path) -> None:
        super().__init__(plan, live, rng, stop)
        previous = os.environ.get(env.AGENT_CONFIG)
        os.environ[env.AGENT_CONFIG] = str(host.config_file)  # its [master] reclaim_wait, read once here
        try:
            self.master = Master(image, system_uuid_file=host.uuid_file)
        finally:
            if previous is None:
                del os.environ[env.AGENT_CONFIG]
            else:
                os.environ[env.AGENT_CONFIG] = previous
        self.smalls: list[str] = []
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        size = self.rng.randint(self.plan.big_min_mib * MiB, self.plan.big_max_mib * MiB)
        self.make_room(fmt.round_up(size, UNIT))
        self.create(self.fresh_path(f"api/d{self.rng.randrange(FILE_DIRS)}"), size)
        for _ in range(self.plan.bursts_per_file):
            self.small_burst()
            self.steps += 1

    def create(self, relpath: str, size: int) -> None:
        serial = next(self.live.serials)
        try:
            with self.master.create(relpath, size) as new:
                churn_data.fill(new.buffer, relpath, serial)
        except MasterError as err:
            if is_log_full(err):
                self.figures.log_full_waits += 1
                self.stop.wait(0.2)
            else:
                self.failed(f"create {relpath} ({size} bytes)", err)
            return
        self.live.add(relpath, size)
        self.figures.files_created += 1
        self.figures.bytes_written += size

    def small_burst(self) -> None:
        """The last burst's small files deleted and new ones made, under one lock: the entries
        that fill the log (each a 4 KiB file in a 2 MiB unit)."""
        try:
            with self.master.batch():
                if self.smalls:
                    self.master.remove(*self.smalls)
                    for relpath in self.smalls:
                        self.live.drop(relpath)
                    self.figures.files_deleted += len(self.smalls)
                    self.smalls = []
                for n in range(self.plan.small_burst):
                    if self.live.fraction() + UNIT / self.live.capacity > self.plan.live_target + 0.1:
                        break
                    relpath, serial = f"api/small/s{(self.steps * self.plan.small_burst + n) % 4096}", next(self.live.serials)
                    with self.master.create(relpath, churn_data.BLOCK) as new:
                        churn_data.fill(new.buffer, relpath, serial)
                    self.smalls.append(relpath)
                    self.live.add(relpath, churn_data.BLOCK)
                    self.figures.files_created += 1
                    self.figures.bytes_written += churn_data.BLOCK
        except MasterError as err:
            # Inside a batch nothing waits for reclaim (the lock cannot be let go): the burst is
            # cut short, the next file outside the batch waits as documented.
            if is_log_full(err):
                self.figures.log_full_waits += 1
                self.stop.wait(0.2)
            elif "held by deleted files" in str(err) or "no free run" in str(err):
                self.figures.bursts_cut_short += 1
            else:
                self.failed("small burst", err)

    def delete(self, relpaths: list[str]) -> None:
        while True:
            try:
                self.master.remove(*relpaths)
                return
            except MasterError as err:
                if not is_log_full(err) or self.stop.is_set():
                    raise
                self.figures.log_full_waits += 1  # the harness compacts: try again
                self.stop.wait(0.2)


class MountWriter(Writer):
    """The master's mount, as any program writes: open(O_CREAT), write, close; unlink."""

    prefix = "mnt"

    def __init__(self, plan: Plan, live: Live, rng: random.Random, stop: threading.Event, host: Host,
                 log_nearly_full: Callable[[], bool]) -> None:
        super().__init__(plan, live, rng, stop)
        self.host = host
        self.log_nearly_full = log_nearly_full

    def step(self) -> None:
        size = self.rng.randint(self.plan.big_min_mib * MiB, self.plan.mount_max_mib * MiB)
        self.make_room(fmt.round_up(size, UNIT))
        relpath = self.fresh_path(f"mnt/d{self.rng.randrange(FILE_DIRS)}")
        serial = next(self.live.serials)
        try:
            fd = os.open(self.host.view(relpath), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for offset, piece in churn_data.chunks(relpath, serial, size):
                    os.pwrite(fd, piece, offset)
            finally:
                os.close(fd)  # the last close allocates and logs the file
        except OSError as err:
            if self.log_nearly_full():
                self.figures.log_full_waits += 1  # the harness compacts: try again
            else:
                # The master's mount waits for space being reclaimed up to [master] reclaim_wait
                # (at a write past the first unit and at the last release), as famfs.Master does.
                self.failed(f"write {relpath} ({size} bytes) through the master's mount", err)
            self.stop.wait(0.2)
            return
        self.live.add(relpath, size)
        self.figures.files_created += 1
        self.figures.bytes_written += size

    def delete(self, relpaths: list[str]) -> None:
        for relpath in relpaths:
            try:
                os.unlink(self.host.view(relpath))
            except FileNotFoundError:
                pass


@dataclass
class Checkpoints:
    clean: int = 0
    unclean: list[str] = field(default_factory=list)


@dataclass
class Compaction:
    when_s: float
    by: str  # "harness" (famfsctl compact) or "automatic" (the coordinator's: seen in the log)
    epoch: int
    entries_before: int | None  # None: an automatic one not found in the coordinator's log
    entries_after: int
    seconds: float | None


# The coordinator's event for a compaction it ran (its log is key=value, one event a line).
COMPACTED = re.compile(r"event='log_compacted'.*? epoch=(\d+) entries_before=(\d+) entries_after=(\d+)"
                       r".*? seconds=([0-9.]+)")


class Run:
    """The cluster, the coordinator, the writers, the readers and the checks of one churn."""

    def __init__(self, plan: Plan, cluster: Cluster, keep_logs: Path | None = None) -> None:
        self.plan, self.cluster = plan, cluster
        self.keep_logs = keep_logs  # where to copy the cluster's logs if a reader meets an error (None: nowhere)
        self.logs_kept: str | None = None
        self.error_events: list[dict[str, str]] = []  # every reader's errors, with host, via and explanation
        self.stop = threading.Event()
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.readers: list[tuple[Host, subprocess.Popen[str]]] = []
        self.checkpoints = Checkpoints()
        self.compactions: list[Compaction] = []
        self.epochs: set[int] = {0}  # log epochs accounted for (0: the log mkfs made)
        self.started = time.monotonic()
        self.watch: LogWatch | None = None
        self.writers: list[Writer] = []
        self.reader_reports: list[dict[str, object]] = []
        self.problems: list[str] = []
        self.reader_logs: dict[int, Path] = {}  # a reader's pid -> its log (stderr)
        self.stuck_said: set[str] = set()  # the readers' "stuck" lines already looked into
        self.tool_cpu = 0.0  # CPU seconds of the famfsctl fsck and compact runs
        self.own_cpu_before = time.process_time()  # a benchmark's process did other work before
        self.cpu: dict[str, float] = {}  # cpu_seconds() as the writers stopped

    # --- setting up -------------------------------------------------------------------------

    def configure(self) -> None:
        for host in self.cluster.hosts:
            host.add_settings("agent", AGENT_SETTINGS)
        self.cluster.master.add_settings("master", MASTER_SETTINGS)

    def start(self) -> None:
        master = self.cluster.master
        for directory in churn_dirs():
            self.cluster.ctl("mkdir", "-p", directory)
        self.coordinator = master.spawn([tool("famfsctl"), "reclaimd", "--metrics-address", "", str(self.cluster.image)],
                                        master.home / "reclaimd.log")
        for host in self.cluster.clients:
            wait_until(lambda host=host: host.view("api/small").is_dir(), 30, f"{host.name} to show the directories")
        wait_until(lambda: master.view("mnt/d0").is_dir(), 30, "the master's mount to show the directories")
        self.watch = LogWatch(str(self.cluster.image))
        self.watch.start()
        live = Live(self.capacity())
        self.live = live
        rng = random.Random(self.plan.seed)
        self.writers = [
            ApiWriter(self.plan, live, random.Random(rng.random()), self.stop, master, self.cluster.image),
            MountWriter(self.plan, live, random.Random(rng.random()), self.stop, master,
                        lambda: self.watch is not None and self.watch.figures.free_slots < LOG_FULL_MARGIN),
        ]
        reader_env = {"PYTHONPATH": str(REPO)}
        for host in self.cluster.clients:
            for number in range(self.plan.readers_per_client):
                via = ("read", "map")[number % 2]
                argv = host.inside([sys.executable, "-m", "demo.churn_reader", "--mount", str(host.mountpoint),
                                    "--via", via, "--seconds", str(self.plan.seconds + 60),
                                    "--seed", str(rng.randrange(1 << 30)), "--max-hold", str(self.plan.max_hold_s)])
                self.readers.append((host, host.spawn(argv, host.home / f"reader{number}.log", extra_env=reader_env,
                                                      stdout=subprocess.PIPE)))
                self.reader_logs[self.readers[-1][1].pid] = host.home / f"reader{number}.log"
        for writer in self.writers:
            writer.start()

    def capacity(self) -> int:
        with open(self.cluster.image, "rb") as image:
            superblock = fmt.Superblock.unpack(image.read(fmt.SUPERBLOCK.size))
        return superblock.dev_size - fmt.data_start(superblock.log_len)

    # --- running ----------------------------------------------------------------------------

    def targets_met(self) -> bool:
        assert self.watch is not None
        written = sum(writer.figures.bytes_written for writer in self.writers)
        return (written >= self.plan.capacity_x * self.live.capacity
                and self.watch.figures.entries >= self.plan.slots_x * self.watch.figures.slots)

    def loop(self, progress: bool) -> None:
        next_fsck = time.monotonic() + self.plan.fsck_every_s
        next_note = next_stuck_look = time.monotonic() + 10
        deadline = self.started + self.plan.seconds
        def going() -> bool:
            # The distance (time or targets), and FSCK_MIN checkpoints however short the run (the
            # last one is finish()'s, after the writers stop); never past the deadline by a minute.
            total = self.checkpoints.clean + len(self.checkpoints.unclean)
            return (time.monotonic() < deadline and not self.targets_met()) or \
                (total < FSCK_MIN - 1 and time.monotonic() < deadline + 60)

        while not self.stop.is_set() and going():
            self.stop.wait(0.05)
            self.check_processes()
            self.maybe_compact()
            if time.monotonic() >= next_fsck or time.monotonic() >= deadline:
                self.fsck()
                next_fsck = time.monotonic() + self.plan.fsck_every_s
            if time.monotonic() >= next_stuck_look:
                self.look_at_stuck_readers()
                next_stuck_look = time.monotonic() + 1
            if progress and time.monotonic() >= next_note:
                print(self.progress_line(), file=sys.stderr, flush=True)
                next_note = time.monotonic() + 10
        self.check_processes()  # a writer's error stops the loop above before it is looked at

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each part of the run has used so far: where the time went."""
        parts: Counter[str] = Counter()
        parts["harness (writers, log watch)"] = time.process_time() - self.own_cpu_before
        for host in self.cluster.hosts:
            for process, what in ((host.agent, "agents"), (host.mount, "mounts")):
                if process is not None:
                    parts[what] += process_cpu(process.pid)
        if self.coordinator is not None:
            parts["coordinator"] = process_cpu(self.coordinator.pid)
        for _, reader in self.readers:
            parts["readers"] += process_cpu(reader.pid)
        parts["fsck and compact (famfsctl runs)"] = self.tool_cpu
        return {name: round(seconds, 1) for name, seconds in parts.items()}

    def check_processes(self) -> None:
        for writer in self.writers:
            if writer.error is not None:
                raise HarnessError(f"{writer.name} failed: {type(writer.error).__name__}: {writer.error}")
        if self.coordinator is not None and self.coordinator.poll() is not None:
            raise HarnessError(f"famfsctl reclaimd exited {self.coordinator.returncode}:\n"
                               f"{log_tail(self.cluster.master.home / 'reclaimd.log')}")
        for host in self.cluster.hosts:
            for process, what in ((host.agent, "agent"), (host.mount, "mount")):
                if process is not None and process.poll() is not None:
                    log = host.agent_log if what == "agent" else host.mount_log
                    raise HarnessError(f"{host.name}'s {what} exited {process.returncode}:\n{log_tail(log)}")

    def maybe_compact(self) -> None:
        assert self.watch is not None
        figures = self.watch.figures
        for when, epoch, entries in figures.epochs:
            if epoch not in self.epochs:  # a compaction that is not ours: the coordinator's
                self.epochs.add(epoch)
                self.compactions.append(Compaction(when - self.started, "automatic", epoch, None, entries, None))
        if figures.free_slots >= self.plan.compact_below * figures.slots:
            return
        result = self.ctl("compact")
        if result.returncode != 0:
            self.problems.append(f"famfsctl compact exited {result.returncode}: {result.stderr.strip()}")
            return
        words = result.stdout.split()
        # "IMAGE: log compacted to epoch N: BEFORE -> AFTER entries (...), X ms"
        before, after = int(words[words.index("->") - 1]), int(words[words.index("->") + 1])
        epoch = int(words[words.index("epoch") + 1].rstrip(":"))
        self.epochs.add(epoch)
        self.compactions.append(Compaction(time.monotonic() - self.started, "harness", epoch, before, after,
                                           float(words[-2]) / 1000))
        wait_until(lambda: any(seen == epoch for _, seen, _ in figures.epochs), 10, "the log watch to see the compaction")

    def ctl(self, command: str) -> subprocess.CompletedProcess[str]:
        """famfsctl COMMAND on the image; its CPU time counted (it is reaped here, nothing else is)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = self.cluster.ctl(command, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.tool_cpu += after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return result

    def fsck(self) -> None:
        result = self.ctl("fsck")
        if result.returncode == 0:
            self.checkpoints.clean += 1
        else:
            self.checkpoints.unclean.append(f"at {time.monotonic() - self.started:.0f} s: exit {result.returncode}: "
                                            f"{(result.stdout + result.stderr).strip()[-2000:]}")

    def progress_line(self) -> str:
        assert self.watch is not None
        written = sum(writer.figures.bytes_written for writer in self.writers)
        return (f"  {time.monotonic() - self.started:5.0f} s: written {written / self.live.capacity:5.1f}x capacity, "
                f"entries {self.watch.figures.entries / self.watch.figures.slots:5.2f}x slots, "
                f"live {self.live.fraction():.0%}, reclaimed {self.watch.figures.reclaimed} files, "
                f"compactions {len(self.compactions)}, fsck clean {self.checkpoints.clean}")

    # --- ending -----------------------------------------------------------------------------

    def finish(self) -> None:
        """Writers stopped, a last fsck, the readers' reports collected; safe to call twice."""
        self.stop.set()
        for writer in self.writers:
            writer.join(60)
        self.cpu = self.cpu_seconds()
        if self.watch is not None and self.watch.is_alive():
            self.fsck()
        for host, reader in self.readers:
            if reader.poll() is None:
                reader.send_signal(signal.SIGTERM)
            where = ""
            try:
                out, _ = reader.communicate(timeout=self.plan.max_hold_s + 30)
            except subprocess.TimeoutExpired:
                where = f" (it did not stop on SIGTERM; then: {self.describe_stuck(host, reader)})"
                stop_process(reader)
                out = ""
            self.look_at_stuck_readers()  # one that was slow to stop, but stopped
            lines = (out or "").strip().splitlines()
            if reader.returncode != 0 or not lines:
                self.problems.append(f"a reader on {host.name} exited {reader.returncode} without a report{where}")
                continue
            self.reader_reports.append({"host": host.name, **json.loads(lines[-1])})
        self.readers = []
        if self.coordinator is not None:
            if stop_process(self.coordinator) == -signal.SIGKILL:
                self.problems.append("the coordinator did not stop on SIGTERM in time: killed (SIGKILL)")
            self.coordinator = None
            self.coordinators_compactions()
        if self.watch is not None:
            self.watch.close()
        self.explain_errors()

    def look_at_stuck_readers(self) -> None:
        """A reader that says one call on its mount has taken churn_reader.STUCK_S (a hang): the
        run fails, and the reader and its host's mount are described now, while it lasts."""
        for host, reader in self.readers:
            log = self.reader_logs.get(reader.pid)
            text = log.read_text(errors="replace") if log is not None and log.exists() else ""
            for line in text.splitlines():
                if line.startswith(STUCK_MARK) and line not in self.stuck_said:
                    self.stuck_said.add(line)
                    self.problems.append(f"a reader on {host.name}: {line} (then: {self.describe_stuck(host, reader)})")
                    print(f"  {host.name} {line}", file=sys.stderr, flush=True)

    @staticmethod
    def describe_stuck(host: Host, reader: subprocess.Popen[str]) -> str:
        """Where a reader that does not stop waits, and what its host's mount does meanwhile: each
        one's threads (state, system call, kernel stack) and the reader's open files here, and
        both Python stacks written to their logs (SIGUSR2: faulthandler), kept with the logs."""
        processes = [reader] + ([host.mount] if host.mount is not None and host.mount.poll() is None else [])
        for process in processes:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGUSR2)
        time.sleep(STACK_DUMP_S)
        where = churn_errors.stuck(reader.pid)
        if len(processes) > 1:
            where += f"; its host's mount (pid {processes[1].pid}, Python stacks in its log): " \
                     f"{churn_errors.stuck(processes[1].pid)}"
        return where

    def explain_errors(self) -> None:
        """Each reader error matched with its host's mount log; with one (or a wrong byte, an
        allocation failure below LIVE_LIMIT, an unclean fsck), every log of the cluster copied
        under `keep_logs`, before the cluster's directory is removed."""
        self.error_events = [{"host": str(found["host"]), "via": str(found["via"]), **event}
                             for found in self.reader_reports
                             for event in found.get("error_events", [])]  # type: ignore[attr-defined]
        churn_errors.classify(self.error_events, self.cluster)
        wrong = sum(int(found["wrong_bytes"]) for found in self.reader_reports)  # type: ignore[call-overload]
        refused = sum(writer.figures.alloc_failures_below_limit for writer in self.writers)
        why = [f"{count} {what}" for count, what in ((len(self.error_events), "reader errors"), (wrong, "wrong bytes"),
                                                     (refused, "allocation failures below 80 % live"),
                                                     (len(self.checkpoints.unclean), "unclean fsck"),
                                                     (len(self.problems), "problems")) if count]
        if self.keep_logs is not None and self.logs_kept is None and why:
            self.logs_kept = str(churn_errors.keep(self.cluster, self.error_events, self.keep_logs, why))

    def coordinators_compactions(self) -> None:
        """The size and duration of the compactions the coordinator ran, from its log's
        `log_compacted` events (famfs/master/compact.py): the log watch sees only the new epoch."""
        path = self.cluster.master.home / "reclaimd.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        logged = {int(epoch): (int(before), int(after), float(seconds))
                  for epoch, before, after, seconds in COMPACTED.findall(text)}
        for n, compaction in enumerate(self.compactions):
            if compaction.by == "automatic" and compaction.epoch in logged:
                before, after, seconds = logged[compaction.epoch]
                self.compactions[n] = replace(compaction, entries_before=before, entries_after=after,
                                                          seconds=seconds)

    def abort(self) -> None:
        """On an error or Ctrl-C: every process we started, down."""
        self.stop.set()
        for _, reader in self.readers:
            stop_process(reader, timeout=5)
        if self.coordinator is not None:
            stop_process(self.coordinator)
        if self.watch is not None:
            self.watch.close()

    def report(self) -> dict[str, object]:
        assert self.watch is not None
        figures = self.watch.figures
        latencies = sorted(figures.latencies_s)
        written = sum(writer.figures.bytes_written for writer in self.writers)
        readers = self.reader_reports
        stall = max(readers, key=lambda found: found["longest_stall_s"], default=None)
        errors: Counter[str] = Counter()
        for found in readers:
            errors.update(found["errors"])  # type: ignore[arg-type]
        wrong = sum(int(found["wrong_bytes"]) for found in readers)  # type: ignore[call-overload]
        below = sum(writer.figures.alloc_failures_below_limit for writer in self.writers)
        checks = {
            "wrong_bytes_zero": wrong == 0,
            "no_alloc_failure_below_80pct_live": below == 0,
            "fsck_clean_at_10_checkpoints": not self.checkpoints.unclean and self.checkpoints.clean >= FSCK_MIN,
            "readers_reported": len(readers) == len(self.cluster.clients) * self.plan.readers_per_client,
        }
        return {
            "plan": asdict(self.plan),
            "seconds": round(time.monotonic() - self.started, 1),
            "capacity_bytes": self.live.capacity,
            "log_slots": figures.slots,
            "bytes_written": written,
            "capacity_turnovers": round(written / self.live.capacity, 2),
            "entries_appended": figures.entries,
            "slot_turnovers": round(figures.entries / figures.slots, 2),
            "targets_met": self.targets_met(),
            "writers": {writer.prefix: asdict(writer.figures) for writer in self.writers},
            "wrong_bytes": wrong,
            "alloc_failures_below_80pct_live": below,
            "fsck": {"clean": self.checkpoints.clean, "unclean": self.checkpoints.unclean},
            "reclaim": {"deletes_seen": figures.deletes, "files_reclaimed": figures.reclaimed,
                        "latency_p50_ms": percentile_ms(latencies, 0.5),
                        "latency_p99_ms": percentile_ms(latencies, 0.99),
                        "latency_max_ms": percentile_ms(latencies, 1.0), "samples": len(latencies)},
            "compactions": [asdict(compaction) for compaction in self.compactions],
            "readers": {"files_opened": sum(int(found["opened"]) for found in readers),  # type: ignore[call-overload]
                        "checks": sum(int(found["verified"]) for found in readers),  # type: ignore[call-overload]
                        "bytes_verified": sum(int(found["bytes_verified"]) for found in readers),  # type: ignore[call-overload]
                        "vanished_before_open": sum(int(found["vanished"]) for found in readers),  # type: ignore[call-overload]
                        "errors": dict(errors),
                        "longest_stall_s": stall["longest_stall_s"] if stall else None,
                        "longest_stall_op": f"{stall['host']} {stall['via']}: {stall['longest_stall_op']}" if stall else "",
                        "samples": [f"{found['host']} {found['via']}: {sample}" for found in readers  # type: ignore[attr-defined]
                                    for sample in found["samples"]][:10],
                        "error_events": self.error_events,
                        "explained": dict(Counter(event["explanation"] for event in self.error_events))},
            "cpu_seconds": self.cpu,
            "problems": self.problems,
            "logs_kept": self.logs_kept,
            "checks": checks,
            "ok": all(checks.values()) and not self.problems,
        }


def process_cpu(pid: int) -> float:
    """utime + stime of a running process, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile_ms(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))] * 1000, 1)


def summary(report: dict[str, object]) -> str:
    r = report
    reclaim, readers, fsck = r["reclaim"], r["readers"], r["fsck"]  # type: ignore[index]
    writers = r["writers"]  # type: ignore[assignment]
    lines = [
        f"churn: {r['seconds']} s, device data capacity {r['capacity_bytes'] / MiB:.0f} MiB, log {r['log_slots']} slots",  # type: ignore[operator]
        f"  written        {r['bytes_written'] / MiB:,.0f} MiB = {r['capacity_turnovers']}x capacity "  # type: ignore[operator]
        f"(target {report['plan']['capacity_x']}x)",  # type: ignore[index]
        f"  log entries    {r['entries_appended']:,} = {r['slot_turnovers']}x slots (target {report['plan']['slots_x']}x)",  # type: ignore[index]
        *(f"  writer {name:<5}   {w['files_created']:,} files created, {w['files_deleted']:,} deleted, "
          f"{w['bytes_written'] / MiB:,.0f} MiB" for name, w in writers.items()),  # type: ignore[union-attr]
        f"  wrong bytes    {r['wrong_bytes']}",
        f"  alloc failures {r['alloc_failures_below_80pct_live']} while live < 80 % "
        f"({sum(w['alloc_failures_above_limit'] for w in writers.values())} at >= 80 %)",  # type: ignore[union-attr]
        *(f"    first, writer {name}: {w['failures'][0]}" for name, w in writers.items() if w["failures"]),  # type: ignore[index]
        f"  fsck           {fsck['clean']} clean, {len(fsck['unclean'])} unclean",  # type: ignore[index]
        f"  reclaim        {reclaim['files_reclaimed']:,} files; DELETE -> RECLAIM logged p50 {reclaim['latency_p50_ms']} ms, "  # type: ignore[index]
        f"p99 {reclaim['latency_p99_ms']} ms, max {reclaim['latency_max_ms']} ms",  # type: ignore[index]
        f"  compactions    {len(r['compactions'])}: "  # type: ignore[arg-type]
        + (", ".join(f"{c['by']} {'?' if c['entries_before'] is None else c['entries_before']}->{c['entries_after']} entries"
                     + (f" {c['seconds'] * 1000:.0f} ms" if c["seconds"] is not None else "")
                     for c in r["compactions"][:6]) or "none")  # type: ignore[index]
        + (" ..." if len(r["compactions"]) > 6 else ""),  # type: ignore[arg-type]
        f"  readers        {readers['files_opened']:,} files held, {readers['checks']:,} whole-file checks, "  # type: ignore[index]
        f"{readers['bytes_verified'] / MiB:,.0f} MiB verified, {readers['vanished_before_open']} deleted before open, "  # type: ignore[index]
        f"errors {readers['errors'] or 'none'}",  # type: ignore[index]
        f"  longest stall  {readers['longest_stall_s']:.3f} s ({readers['longest_stall_op']})"  # type: ignore[index]
        if readers["longest_stall_s"] is not None else "  longest stall  (no reader report)",  # type: ignore[index]
        "  cpu seconds    " + ", ".join(f"{name} {seconds:g}" for name, seconds in r["cpu_seconds"].items()),  # type: ignore[attr-defined]
        *(f"  problem: {problem}" for problem in r["problems"]),  # type: ignore[attr-defined]
        *(f"  sample: {sample}" for sample in readers["samples"]),  # type: ignore[index]
        *(f"  error: {e['host']} {e['via']} {e['op']} {e['relpath']} at {e['at']}: {e['errno']}: {e['explanation']}"
          for e in readers["error_events"][:ERRORS_SHOWN]),  # type: ignore[index]
        *([f"  logs kept      {r['logs_kept']} (errors.txt: each reader error and its host's log lines around it)"]
          if r["logs_kept"] else []),
        *(f"  fsck: {text}" for text in fsck["unclean"][:3]),  # type: ignore[index]
        "  checks         " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in r["checks"].items()),  # type: ignore[attr-defined]
        f"churn {'OK' if r['ok'] else 'FAILED'}",
    ]
    return "\n".join(lines)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that clean-up runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def churn(plan: Plan, *, parent: Path | None = None, progress: bool = False,
          keep_logs: Path | None = None) -> dict[str, object]:
    """One churn run, start to clean-up; its report. `keep_logs`: a directory under which the
    cluster's logs are copied if a check fails, a reader meets an error or the run fails (the
    report, or the HarnessError, names it)."""
    cluster = Cluster(parent=parent, size=plan.size)
    run = Run(plan, cluster, keep_logs)
    run.configure()
    with cluster:
        try:
            run.start()
            run.loop(progress)
            run.finish()
        except HarnessError as err:  # a writer or a daemon failed: what the cluster logged explains it
            run.abort()
            if keep_logs is None:
                raise
            kept = churn_errors.keep(cluster, [], keep_logs, [str(err), *(w.trace for w in run.writers if w.trace)])
            raise HarnessError(f"{err}\n  logs kept      {kept}") from None
        except BaseException:
            run.abort()
            raise
    return run.report()


def parse_args(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m demo.forever", description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="run for hours (--seconds 14400, 2 GiB, 200x/100x targets)")
    parser.add_argument("--seconds", type=float, help="stop after this long even if the targets are not met (default 180)")
    parser.add_argument("--size", help="the image's size (default 1g)")
    parser.add_argument("--capacity-x", type=float, help="bytes to write, in device capacities (default 20)")
    parser.add_argument("--slots-x", type=float, help="log entries to append, in log slot counts (default 10)")
    parser.add_argument("--fsck-every", type=float, help="seconds between fsck checkpoints (default 15)")
    parser.add_argument("--small-burst", type=int, help="small files per Master.batch() burst (default 48)")
    parser.add_argument("--bursts-per-file", type=int, help="small-file bursts after each big file (default 3)")
    parser.add_argument("--readers", type=int, help="readers per client, read(2) and famfs.open in turn (default 2)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    parser.add_argument("--keep-logs", type=Path, default=Path(tempfile.gettempdir()), metavar="DIR",
                        help="if a reader meets an error or a wrong byte, an allocation fails below 80 %% live, "
                             "an fsck is not clean or a reader gives no report, copy the cluster's logs to a new "
                             "directory under DIR, named in the report (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    plan = Plan(seconds=14_400, size="2g", capacity_x=200, slots_x=100, fsck_every_s=120) if args.long else Plan()
    given = {"seconds": args.seconds, "size": args.size, "capacity_x": args.capacity_x, "slots_x": args.slots_x,
             "fsck_every_s": args.fsck_every, "small_burst": args.small_burst, "bursts_per_file": args.bursts_per_file,
             "readers_per_client": args.readers}
    plan = Plan(**{**asdict(plan), **{key: value for key, value in given.items() if value is not None}})
    if args.fsck_every is None:  # at least FSCK_MIN + 1 checkpoints in any run that goes the distance
        plan = Plan(**{**asdict(plan), "fsck_every_s": min(plan.fsck_every_s, plan.seconds / (FSCK_MIN + 2))})
    return plan, args


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logsetup.configure(level="error")  # the harness's own famfs.Master: the report says what happened
    parent = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    if not args.quiet:
        print(f"churn: master + 2 clients on a {plan.size} image, up to {plan.seconds:.0f} s, until "
              f"{plan.capacity_x:g}x capacity written and {plan.slots_x:g}x log slots appended", file=sys.stderr)
    try:
        report = churn(plan, parent=parent, progress=not args.quiet, keep_logs=args.keep_logs)
    except (KeyboardInterrupt, Terminated):
        print("\ninterrupted: everything was cleaned up", file=sys.stderr)
        return 130
    except HarnessError as err:
        print(f"churn failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
