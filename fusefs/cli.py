"""famfs-fuse-mount: serve a famfs shadow tree as a file system, file bytes from the device.

    famfs-fuse-mount [--shadow DIR] [--device DEV] [--config FILE] [-o OPTIONS] [--foreground] [--mkdir]
                     [--system-uuid-file F] [--metrics-address HOST:PORT] MOUNTPOINT
    famfs-fuse-mount health [--timeout S] [--config FILE] [MOUNTPOINT]     (fusefs/health.py)

Settings: flags, then famfs-agent.toml ([mount], and [agent] for device and shadow), then the
device named in the agent's `<shadow>/.agent/state.json`. Without --foreground it daemonizes and
the parent exits 0 only once the mount is live (else 1, with the daemon's reason). Under systemd
(Type=notify) it reports readiness once the mount is live. SIGTERM, SIGINT and
`fusermount3 -u` end it with a clean unmount and exit 0; SIGUSR1 logs a status line; SIGUSR2
writes every thread's Python stack to stderr (the log file, once daemonized). While
mounted it serves upstream's REST API on `<shadow>/sock` (fusefs/rest.py).

The mount's identity (system UUID) is its agent's, from state.json; an identity given on purpose
(--system-uuid-file, $FAMFS_SYSTEM_UUID_FILE, [host] system_uuid_file) that differs is refused
(exit 2): one host, one identity (famfs.identity.agents_identity). On the master host (that
identity is the superblock's) a writable mount takes namespace changes (mkdir, new files,
unlink, rmdir) through a famfs.namespace.NamespaceWriter that `main` is given by the
composition root (famfs_fuse_mount/, the console script): fusefs itself never imports the
master's writer (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import os
import re
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import structlog
import trio

from famfs import cacheflush, config, devices, logsetup, madedirs, service
from famfs import format as fmt
from famfs.device import Device, DeviceError
from famfs.famfslog import FamfsLog
from famfs.identity import (SYSTEM_UUID_FLAG_HELP, HostIdentity, IdentityError, Role, agents_identity,
                            given_system_uuid_file, system_uuid_file)
from famfs.namespace import NamespaceWriter
from famfs.shadowdir import (AGENT_DIR, DAXDEVS_FILE, ROOT, agent_pid, read_state, recorded_device,
                             shadow_permission_problem, state_path)
from famfs.version import add_version_flag
from fusefs import health
from fusefs.ahead import Ahead
from fusefs.devicecheck import CHECK_PERIOD_S, DeviceCheck
from fusefs.inodes import InodeTable
from fusefs.notify import Notifier
from fusefs.operations import FamfsOperations, MountPolicy
from fusefs.rest import Endpoints, RestError, RestSocket, RuntimeLogLevel
from fusefs.sync import TreeSync
from fusefs.watcher import CHANNEL_SIZE, ShadowWatcher

if TYPE_CHECKING:
    from famfs.metrics import MetricsServer

log = structlog.get_logger("famfs-fuse-mount")

DEFAULT_LOG_FILE = "/var/log/famfs-fuse-mount.log"
# The kernel's default readahead for a FUSE mount is 128 KiB: page-cache reads then reach us in
# 128 KiB requests. 1 MiB (libfuse's largest request) measured 2.2 → 2.9 GB/s (docs/fusefs.md).
READ_AHEAD_KB = 1024
READY = b"ok\n"  # what the daemon tells the waiting parent once the mount is live; anything else is the reason it is not
MOUNTINFO_ESCAPE = re.compile(rb"\\([0-7]{3})")


EXIT_REFUSED = 1  # a usage error: the message says why
EXIT_IDENTITY = 2  # this host's identity is unusable or not the agent's


class UsageError(Exception):
    """A bad argument or environment; the message is printed as-is and the exit code is 1."""


@dataclass
class MountConfig:
    mountpoint: str
    shadow: str
    device: str
    cache: str
    timeout: float
    negative_timeout: float
    rescan_s: float
    allow_other: bool
    read_only: bool
    read_only_namespace: bool  # -o ro_namespace: no namespace changes here, the master's mount included
    foreground: bool
    log_file: str
    log_format: str
    log_level: str
    metrics_address: str
    system_uuid_file: str | None  # given on purpose (flag, environment, config file), else None
    default_uuid_file: str  # read when neither the agent's state nor the above names one
    staging_mib: int
    apply_wait_s: float
    reclaim_wait_s: float  # [master] reclaim_wait: a new file's wait for space being reclaimed
    device_paths: tuple[str, ...]  # [host] devices: where added devices may be (docs/devices.md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="famfs-fuse-mount", description=__doc__.split("\n\n")[0], epilog=health.SUMMARY)
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT", help="default: [mount] mountpoint")
    p.add_argument("--shadow", help="shadow directory kept by famfs-agent (default: [agent] shadow)")
    p.add_argument("--device", help="devdax, pmem or image file (default: [agent] device, then the agent's state.json)")
    p.add_argument("--config", help=config.CONFIG_FLAG_HELP)
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated: ro, rw, allow_other, ro_namespace, rw_namespace, cache=direct|auto|always, "
                        "timeout=S, negative_timeout=S, rescan=S (full-rescan period; 0 = never)")
    p.add_argument("-f", "--foreground", action="store_true", help="do not daemonize; log to stderr")
    p.add_argument("--mkdir", action="store_true", help="create MOUNTPOINT (and its parents) if it does not exist")
    p.add_argument("--system-uuid-file", help=f"{SYSTEM_UUID_FLAG_HELP}; with an agent, its identity is used "
                   "and this must agree with it")
    add_version_flag(p)
    p.add_argument("--log-file", default=DEFAULT_LOG_FILE, help=f"the daemon's log (default {DEFAULT_LOG_FILE})")
    p.add_argument("--log-format", choices=logsetup.FORMATS, help="default: [host] log_format")
    p.add_argument("--log-level", choices=logsetup.LEVELS, help="default: [host] log_level")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (default: [mount] metrics_address; '' = off)")
    return p


def resolve(args: argparse.Namespace) -> MountConfig:
    settings = config.load(args.config)
    cacheflush.use(settings.host.coherence)
    mount = settings.mount
    values: dict[str, str | float | bool] = {"cache": mount.cache, "timeout": mount.timeout, "negative_timeout": mount.negative_timeout,
              "rescan": mount.fallback_rescan_s, "allow_other": mount.allow_other, "ro": mount.read_only,
              "ro_namespace": mount.read_only_namespace}
    for option in (item for group in args.options for item in group.split(",") if item):
        key, has_value, value = option.partition("=")
        if key in ("ro", "rw", "allow_other") and not has_value:
            if key == "allow_other":
                values["allow_other"] = True
            else:
                values["ro"] = key == "ro"
        elif key in ("ro_namespace", "rw_namespace") and not has_value:
            values["ro_namespace"] = key == "ro_namespace"
        elif key == "cache" and has_value:
            check_option("cache", value, option)
            values["cache"] = value
        elif key in SECONDS_OPTIONS and has_value:
            try:
                seconds = float(value)
            except ValueError:
                raise UsageError(f"-o {option}: not a number of seconds") from None
            check_option(SECONDS_OPTIONS[key], seconds, option)
            values[key] = seconds
        else:
            raise UsageError(f"-o {option}: unknown option; known: ro, rw, allow_other, cache=direct|auto|always, "
                             "ro_namespace, rw_namespace, "
                             f"{', '.join(f'{name}=SECONDS' for name in SECONDS_OPTIONS)}")
    mountpoint = args.mountpoint or mount.mountpoint
    if not mountpoint:
        raise UsageError("no MOUNTPOINT given (and no [mount] mountpoint in the config)")
    shadow = os.path.abspath(args.shadow or settings.agent.shadow)
    device = args.device or settings.agent.device or device_from_state(shadow)
    if values["ro_namespace"] and not negative_timeout_given(args.options, settings):
        # famfs_fused caches no negative lookup, and upstream's CLI stats a path before it writes
        # its shadow YAML and opens it: a cached "no such file" would hide the new file.
        values["negative_timeout"] = 0.0
    return MountConfig(
        mountpoint=os.path.abspath(mountpoint), shadow=shadow, device=device, cache=str(values["cache"]),
        timeout=float(values["timeout"]), negative_timeout=float(values["negative_timeout"]),
        rescan_s=float(values["rescan"]), allow_other=bool(values["allow_other"]), read_only=bool(values["ro"]),
        read_only_namespace=bool(values["ro_namespace"]),
        foreground=args.foreground, log_file=os.path.abspath(args.log_file),
        log_format=args.log_format or settings.host.log_format, log_level=args.log_level or settings.host.log_level,
        metrics_address=mount.metrics_address if args.metrics_address is None else args.metrics_address,
        system_uuid_file=str(given) if (given := given_system_uuid_file(args.system_uuid_file, settings)) else None,
        default_uuid_file=str(system_uuid_file(None, settings.host.system_uuid_file)),
        staging_mib=mount.staging_mib, apply_wait_s=mount.apply_wait_s, reclaim_wait_s=settings.master.reclaim_wait,
        device_paths=tuple(settings.host.devices),
    )


SECONDS_OPTIONS = {"timeout": "timeout", "negative_timeout": "negative_timeout", "rescan": "fallback_rescan_s"}


def negative_timeout_given(options: Sequence[str], settings: config.Settings) -> bool:
    """Whether negative_timeout was set on purpose (-o, or a key of the config file)."""
    given = (item.partition("=")[0] for group in options for item in group.split(","))
    return "negative_timeout" in given or "mount.negative_timeout" in settings.given


def check_option(key: str, value: object, option: str) -> None:
    """An -o value obeys the same rule as its [mount] key (famfs/config.py)."""
    try:
        config.check(config.MountSettings, key, value, f"-o {option}")
    except config.ConfigError as err:
        raise UsageError(str(err)) from None


def device_from_state(shadow: str) -> str:
    try:
        return recorded_device(shadow)
    except FileNotFoundError:
        raise UsageError(f"no --device, no [agent] device, and no {state_path(shadow)} (is famfs-agent running?)") from None
    except ValueError as err:
        raise UsageError(f"{err}; give --device") from None


def check_shadow(shadow: str) -> str:
    """The served root, `<shadow>/root`, once both are known to be root's alone: the agent's rule
    (famfs.shadowdir.shadow_permission_problem) for uid 0, on each and every directory above."""
    root = os.path.join(shadow, ROOT)
    for path in (shadow, root):
        if not os.path.lexists(path):
            raise UsageError(f"shadow {path}: does not exist (has famfs-agent played the log?)")
        if (problem := shadow_permission_problem(path, 0)) is not None:
            raise UsageError(f"shadow refused: {problem} (anyone who can write it could map any device bytes "
                             "into the mount)")
    return root


def check_mountpoint(mountpoint: str, make: bool) -> list[Path]:
    """Refuse an unusable mount point; with `make`, create it first. The directories created."""
    made = madedirs.missing(mountpoint) if make else []
    if make:
        try:
            os.makedirs(mountpoint, mode=0o755, exist_ok=True)
        except OSError as err:
            raise UsageError(f"mount point {mountpoint}: cannot create it: {err.strerror}") from None
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise UsageError(f"mount point {mountpoint}: does not exist (create it, or give --mkdir)") from None
    except OSError as err:
        raise UsageError(f"mount point {mountpoint}: {err.strerror} (a dead mount? try fusermount3 -u)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {mountpoint}: not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"mount point {mountpoint}: already a mount point (unmount it first)")
    return made


def warnings_before_mounting(cfg: MountConfig) -> list[str]:
    """What is allowed but likely a mistake: said on stderr, the mount goes ahead."""
    found = []
    if agent_pid(cfg.shadow) is None:
        found.append(f"no famfs-agent is running on {cfg.shadow}: the mount shows the tree as it is and changes "
                     f"only when an agent plays the log (famfs-agent --follow --shadow {cfg.shadow})")
    try:
        if os.listdir(cfg.mountpoint):
            found.append(f"mount point {cfg.mountpoint} is not empty: its files are hidden while famfs is mounted")
    except OSError:
        pass  # check_mountpoint has said what is wrong with it
    return found


def fuse_options(cfg: MountConfig) -> set[str]:
    # No max_read: pyfuse3 cannot set conn->max_read in init(), and libfuse refuses a mount
    # whose option and init() disagree. libfuse already negotiates 1 MiB requests (max_pages 256).
    # The source is the device path, as famfs_fused's: upstream's CLI and tests find a mount by
    # its device (`findmnt -S DEV`, /proc/mounts); the type stays fuse.famfs.
    options = {f"fsname={fsname(cfg.device)}", "subtype=famfs", "default_permissions"}
    if cfg.read_only:
        options.add("ro")
    if cfg.allow_other:
        options.add("allow_other")
    return options


def fsname(device: str) -> str:
    """The device path as a FUSE option value: libfuse splits options at commas and takes a
    backslash as an escape, so both are escaped."""
    return os.path.abspath(device).replace("\\", "\\\\").replace(",", "\\,")


# The collector's generation-0 threshold while the mount runs (CPython's default is 700). A
# cold directory listing makes a few objects per file (its parsed YAML), all kept: at 700 the
# collector ran every ~200 files and, every few thousand, walked every object the daemon holds.
GC_THRESHOLDS = (10_000, 20, 10)
# How long a thread holding the GIL keeps it from the trio thread (CPython's default is 5 ms). The
# daemon's worker threads (a group's log step, the device check, kernel notifications, the
# watcher) run Python while the trio thread has a request to answer: with 5 ms, one request could
# wait that long. Measured (`tar -x` of the stdlib through the master's mount, alternating runs,
# load 6-8): 104 and 169 files/s at 5 ms, 233 and 277 at 0.5 ms; `cp -r` 205/301 against 243/393.
GIL_SWITCH_S = 0.0005


def quiet_collector() -> None:
    """Keep the cyclic garbage collector, and the other threads' hold of the GIL, off the request
    path. The inode table just built (a node per shadow path, for the mount's life) goes to the
    permanent generation, so no collection walks it again, and young collections run 14x less
    often. Cycles are still collected (trio makes some); the objects a mount keeps hold none."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(GIL_SWITCH_S)


class Daemon:
    """What one mount owns; `run` is the trio main."""

    def __init__(self, cfg: MountConfig, famfs_log: FamfsLog, shadow_root: str, identity: HostIdentity,
                 writer: NamespaceWriter | None = None) -> None:
        self.cfg = cfg
        self.identity = identity
        self.writer = writer
        self.famfs_log = famfs_log
        self.shadow_root = os.fsencode(shadow_root)
        self.notifier = Notifier()
        self.log_level = RuntimeLogLevel(cfg.log_level)  # before the daemon's first log line
        self.table: InodeTable | None = None
        self.sync: TreeSync | None = None
        self.ready_sent = False  # the parent has been told the mount is live (its pipe is closed)
        self.devices: DeviceCheck | None = None

    def status(self) -> str:
        assert self.table is not None and self.sync is not None
        counters = self.notifier.counters
        return (f"inodes={self.table.count()} notifications={counters.sent} not_cached={counters.not_cached} "
                f"notify_failed={counters.failed} rescans={self.sync.rescans} "
                f"lost_event_rescans={self.sync.lost_rescans} batches={self.sync.batches}")

    async def run(self, ready: int | None) -> None:
        send, receive = trio.open_memory_channel[bytes | None](CHANNEL_SIZE)
        # Watch first, scan second: a change in between is both seen by the scan and queued.
        watcher = ShadowWatcher(self.shadow_root, send)
        watcher.start()
        try:
            sb = self.famfs_log.superblock
            devices = self.devices = DeviceCheck(self.famfs_log, self.cfg.shadow, writable=not self.cfg.read_only)
            # Upstream's CLI opens a file before it logs it: served ahead of the log, on the master's
            # ro_namespace mount only (docs/fusefs.md, "Served ahead of the log").
            ahead = Ahead(devices, self.cfg.shadow) if self.cfg.read_only_namespace \
                and self.identity.role(sb) is Role.MASTER else None
            self.table = InodeTable(self.shadow_root, devices.served.geometry, devices.served.check,
                                    self.cfg.negative_timeout, ahead)
            quiet_collector()
            self.sync = TreeSync(self.table, self.notifier, self.cfg.rescan_s, self._check_device)
            policy = MountPolicy(cache=self.cfg.cache, entry_timeout=self.cfg.timeout,
                                 negative_timeout=self.cfg.negative_timeout, read_only=self.cfg.read_only,
                                 master=str(sb.system_uuid), staging_bytes=self.cfg.staging_mib << 20,
                                 apply_wait_s=self.cfg.apply_wait_s, reclaim_wait_s=self.cfg.reclaim_wait_s,
                                 read_only_namespace=self.cfg.read_only_namespace)
            ops = FamfsOperations(self.table, devices, policy, os.fsencode(self.cfg.shadow), self.status, self.writer)
            await self._check_device()  # the state may already name another file system
            try:
                rest_socket = RestSocket(self.cfg.shadow)
            except RestError as err:
                raise UsageError(str(err)) from None
            endpoints = Endpoints(self.table, ops.lookups, self.log_level, self.status,
                                  lambda: {**devices.identity(), "device": self.cfg.device,
                                           "mountpoint": self.cfg.mountpoint})
            metrics = self._metrics(ops, str(sb.fs_uuid))
            try:
                # Signals are ours from before the mount exists: a SIGTERM at any moment unmounts.
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
                    try:
                        pyfuse3.init(ops, self.cfg.mountpoint, fuse_options(self.cfg))
                    except RuntimeError as err:
                        raise UsageError(f"cannot mount on {self.cfg.mountpoint}: {err} (busy, or not permitted?)") from None
                    await self._serve(ops, receive, watcher, signals, ready, rest_socket, endpoints)
            finally:
                rest_socket.close()
                if metrics is not None:
                    metrics.close()
        finally:
            watcher.stop()

    def _metrics(self, ops: FamfsOperations, fs_uuid: str) -> MetricsServer | None:
        """Instrument the handlers and serve /metrics, if asked to (before the mount exists)."""
        if not self.cfg.metrics_address:
            return None
        assert self.table is not None and self.sync is not None
        # Only now: prometheus_client costs start-up time a mount without metrics should not pay.
        from famfs.metrics import MetricsError, MetricsServer
        from fusefs.metrics import MountCollector, MountStats, instrument
        stats = MountStats()
        try:
            server = MetricsServer(self.cfg.metrics_address, MountCollector(
                stats, ops, self.table, self.sync, self.notifier, fs_uuid))
        except MetricsError as err:
            raise UsageError(str(err)) from None
        instrument(ops, stats)
        log.info("metrics", address=self.cfg.metrics_address, port=server.port)
        return server

    async def _serve(self, ops: FamfsOperations, receive: trio.MemoryReceiveChannel[bytes | None],
                     watcher: ShadowWatcher, signals: AsyncIterator[int], ready: int | None,
                     rest_socket: RestSocket, endpoints: Endpoints) -> None:
        assert self.sync is not None and self.table is not None
        try:
            log.info("mounted", mountpoint=self.cfg.mountpoint, shadow=self.cfg.shadow, device=self.cfg.device,
                     cache=self.cfg.cache, timeout=self.cfg.timeout, inodes=self.table.count(), pid=os.getpid(),
                     coherence=self.famfs_log.device.coherence.name,
                     master_system_uuid=str(self.famfs_log.superblock.system_uuid),
                     system_uuid=str(self.identity.system_uuid or "none"), identity_from=self.identity.source,
                     namespace=namespace_mode(self.writer is not None, self.cfg.read_only_namespace))
            if ready is not None:
                os.write(ready, READY)
                os.close(ready)
                self.ready_sent = True
            service.notify_ready(f"serving {self.cfg.shadow} on {self.cfg.mountpoint}")
            async with trio.open_nursery() as nursery:
                ops.spawn_notice = lambda notice: nursery.start_soon(self.notifier.send, [notice])
                nursery.start_soon(watcher.run)
                nursery.start_soon(self.sync.consume, receive, watcher)
                nursery.start_soon(self.sync.periodic, watcher)
                nursery.start_soon(self._signals, signals)
                nursery.start_soon(rest_socket.serve, endpoints)
                nursery.start_soon(self._set_readahead, ops.initialized)
                nursery.start_soon(self._watch_device)
                await pyfuse3.main()
                ops.drop_all_staged("still open at unmount")
                # The request loop has stopped: from here on nothing may call into the mount
                # (it would wait for an answer forever). Notifications are the only such calls.
                await self.notifier.close()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted", mountpoint=self.cfg.mountpoint, status=self.status())

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                log.info("status", status=self.status())
            else:
                log.info("signal: unmounting", signal=signal.Signals(signum).name)
                # Notifications in flight may wait for the request loop: let them finish while
                # it still answers, then stop it.
                await self.notifier.close()
                pyfuse3.terminate()

    async def _check_device(self) -> None:
        """Switch to a new device generation if the device changed (fusefs/devicecheck.py)."""
        assert self.devices is not None and self.table is not None
        switched = await self.devices.check()
        if switched is not None:
            await self.notifier.send(self.table.set_geometry(switched.geometry, switched.check))

    async def _watch_device(self) -> None:
        # A superblock can change with no change of the shadow tree (no agent running); so can
        # the log, giving units of a file served ahead of it to another file (docs/fusefs.md).
        assert self.table is not None
        while True:
            await trio.sleep(CHECK_PERIOD_S)
            await self._check_device()
            if self.table.served_ahead:
                await self.notifier.send(self.table.sweep_ahead())

    async def _set_readahead(self, initialized: trio.Event) -> None:
        """Raise the mount's readahead once the kernel has the INIT reply (it caps readahead when
        it receives it). No call into the mount: the loop may be stopping at any moment."""
        await initialized.wait()
        await trio.to_thread.run_sync(set_readahead, self.cfg.mountpoint, abandon_on_cancel=True)


def mount_device_number(mountpoint: str) -> tuple[int, int] | None:
    """major:minor of our mount at `mountpoint`, from /proc/self/mountinfo (a stat of the
    mountpoint would be a request to our own loop); None if it is not mounted (any more)."""
    try:
        table = Path("/proc/self/mountinfo").read_bytes()
    except OSError:
        return None
    wanted = os.fsencode(mountpoint)
    found = None
    for line in table.splitlines():
        fields = line.split(b" ")
        if b"-" not in fields:
            continue
        fstype = fields[fields.index(b"-") + 1:][:1]
        # Mount points are octal-escaped (space, tab, newline, backslash); the last match is on top.
        if fstype == [b"fuse.famfs"] and MOUNTINFO_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), fields[4]) == wanted:
            major, minor = fields[2].split(b":")
            found = (int(major), int(minor))
    return found


def set_readahead(mountpoint: str) -> None:
    """Raise the mount's readahead (blocking sysfs I/O: a worker thread)."""
    number = mount_device_number(mountpoint)
    if number is None:
        return  # unmounted already
    bdi = Path("/sys/class/bdi") / f"{number[0]}:{number[1]}" / "read_ahead_kb"
    try:
        bdi.write_text(str(READ_AHEAD_KB))
    except OSError as err:
        log.warning("cannot raise readahead", path=str(bdi), error=err.strerror)


def open_device(cfg: MountConfig) -> FamfsLog:
    try:
        device = Device(cfg.device, writable=not cfg.read_only)
    except DeviceError as err:
        raise UsageError(f"device: {err.strerror}") from None
    try:
        return FamfsLog(device)
    except (fmt.FormatError, DeviceError) as err:
        device.close()
        raise UsageError(f"device {cfg.device}: {err}") from None


def daemonize(log_file: str) -> int | None:
    """Fork; the parent waits for 'ok' (mount live) or the child's exit and never returns. The
    child gets a new session, its output in log_file, and the pipe end to report readiness on."""
    try:
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as err:
        raise UsageError(f"log file {log_file}: {err.strerror}") from None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        os.close(log_fd)
        answer = b""
        while chunk := os.read(read_end, 4096):
            answer += chunk
        if answer == READY:
            print(f"famfs-fuse-mount: mounted (pid {pid}); log in {log_file}")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        why = answer.decode(errors="replace").strip() or \
            f"the daemon exited before mounting (status {os.waitstatus_to_exitcode(status)})"
        print(f"famfs-fuse-mount: {why}; see {log_file}", file=sys.stderr)
        os._exit(1)
    os.close(read_end)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)
    return write_end


# (device path, system UUID file, where this host's added devices may be: asked at each change)
WriterFactory = Callable[[str, Path, Callable[[], Sequence[str]]], NamespaceWriter]


def host_identity(cfg: MountConfig) -> HostIdentity:
    """This host's identity: its agent's (state.json), checked against one given on purpose."""
    state = read_state(cfg.shadow)
    return agents_identity(state.system_uuid_file if state else None, state.system_uuid if state else None,
                           Path(cfg.system_uuid_file) if cfg.system_uuid_file else None,
                           Path(cfg.default_uuid_file), str(state_path(cfg.shadow)))


def namespace_mode(writer: bool, read_only_namespace: bool) -> str:
    """The `mounted` event's word on namespace changes through this mount."""
    if writer:
        return "written here (master)"
    return "read-only here (ro_namespace)" if read_only_namespace else "read-only here"


def master_writer(cfg: MountConfig, famfs_log: FamfsLog, identity: HostIdentity,
                  writer_for: WriterFactory | None) -> NamespaceWriter | None:
    """The namespace writer of a writable mount whose identity is the superblock's master; None
    anywhere else. The writer checks the identity file again at each change (require_master)."""
    if writer_for is None or cfg.read_only or cfg.read_only_namespace:
        return None
    if identity.role(famfs_log.superblock) is not Role.MASTER:
        return None
    table = os.path.join(cfg.shadow, AGENT_DIR, DAXDEVS_FILE)
    return writer_for(cfg.device, identity.uuid_file, lambda: devices.where_to_look(cfg.device_paths, table))


def main(argv: Sequence[str] | None = None, writer_for: WriterFactory | None = None) -> int:
    """The mount; `writer_for` builds the master's namespace writer (famfs_fuse_mount passes it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["health"]:
        return health.main(argv[1:])
    args = parser().parse_args(argv)
    ready = None
    daemon: Daemon | None = None
    made: list[Path] = []  # by --mkdir: taken back if the mount is refused
    try:
        try:
            cfg = resolve(args)
        except config.ConfigError as err:
            raise UsageError(str(err)) from None
        logsetup.configure(cfg.log_format, cfg.log_level)
        shadow_root = check_shadow(cfg.shadow)
        try:
            identity = host_identity(cfg)
        except IdentityError as err:
            print(f"famfs-fuse-mount: {err}", file=sys.stderr)
            return EXIT_IDENTITY
        made = check_mountpoint(cfg.mountpoint, args.mkdir)
        for warning in warnings_before_mounting(cfg):
            print(f"famfs-fuse-mount: warning: {warning}", file=sys.stderr)
        famfs_log = open_device(cfg)
        writer = master_writer(cfg, famfs_log, identity, writer_for)
        ready = None if cfg.foreground else daemonize(cfg.log_file)
        daemon = Daemon(cfg, famfs_log, shadow_root, identity, writer)
        # Where each thread is, even with the trio thread blocked (a request never answered):
        # written from the signal handler in C, not by the loop.
        faulthandler.register(signal.SIGUSR2, all_threads=True)
        trio.run(daemon.run, ready)
    except UsageError as err:
        print(f"famfs-fuse-mount: {err}", file=sys.stderr)  # the log file, once daemonized
        madedirs.undo(made)
        if ready is not None and not (daemon is not None and daemon.ready_sent):
            with contextlib.suppress(OSError):  # the waiting parent prints the reason too
                os.write(ready, str(err).encode())
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
