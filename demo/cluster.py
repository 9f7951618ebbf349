"""A famfs cluster on one machine: one sparse device image, a master and N clients.

Each simulated host is a `Host`: its own identity (system-UUID file), its own famfs-agent
following the shared log into its own shadow directory, and its own famfs-fuse-mount serving
that shadow tree. When the kernel allows it, each mount daemon runs in a private mount namespace
(`unshare -m`), so every host has its own view, as separate machines would; we look inside with
`nsenter -t PID -m` or through `/proc/PID/root`.

Shadow trees live on tmpfs (/dev/shm) when there is one, as upstream keeps them under /run.

The pieces are driven as subprocesses only (their command lines are the contract). `Cluster`
is a context manager whose exit always cleans up: mounts unmounted, daemons stopped, the image
and the shadow trees removed, on success, on an exception and on Ctrl-C. Daemons also get PR_SET_PDEATHSIG, so
even a harness killed with SIGKILL leaves nothing running (and a namespaced mount dies with
its namespace).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from famfs import env
from famfs import format as fmt

# The environment every famfs command reads (part of their documented command-line contract).
SYSTEM_UUID_ENV = env.SYSTEM_UUID_FILE
CONFIG_ENV = env.AGENT_CONFIG
PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 120.0
SHADOW_TMPFS = "/dev/shm"
LOG_TAIL_LINES = 25


class HarnessError(RuntimeError):
    """A piece of the cluster did not start, stop or answer as its contract says."""


def tool(name: str) -> str:
    """A console script: the one beside this interpreter (the venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise HarnessError(f"{name}: not installed (looked beside {sys.executable} and in PATH)")
    return found


def namespaces_work() -> bool:
    """Whether this kernel and our privileges let a process have a private mount namespace."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


def shadow_filesystem() -> Path | None:
    """A tmpfs for shadow trees, where upstream keeps them (its default is under /run): every
    entry is a small file renamed into place, which a disk file system can make 40x slower."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mountpoint, fs_type, *_ = line.split()
        if mountpoint == SHADOW_TMPFS and fs_type == "tmpfs" and os.access(mountpoint, os.W_OK):
            return Path(mountpoint)
    return None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a daemon must not outlive the harness.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} was never written)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or f"    ({path} is empty)"


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> float:
    """Poll `condition` until true; the seconds it took. HarnessError naming `what` on timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL if it does not end in time; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def add_settings(config_file: Path, section: str, values: Mapping[str, object]) -> None:
    """Append a `section` of famfs-agent.toml settings to `config_file` (once per section)."""
    lines = [f"[{section}]", *(f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
                               for key, value in values.items())]
    with open(config_file, "a") as config:
        config.write("\n".join(lines) + "\n")


class LogHeaderWatch:
    """Reads the log header's next_index straight from the device: when an append has landed."""

    def __init__(self, device: Path) -> None:
        self._fd = os.open(device, os.O_RDONLY)
        superblock = fmt.Superblock.unpack(os.pread(self._fd, fmt.SUPERBLOCK.size, 0))
        self._log_len, self._log_offset = superblock.log_len, superblock.log_offset

    def next_index(self) -> int:
        raw = os.pread(self._fd, fmt.LOG_HEADER.size, self._log_offset)
        return fmt.LogHeader.unpack(raw, self._log_len).next_index

    def close(self) -> None:
        os.close(self._fd)


class Host:
    """One simulated machine: an identity, an agent, a shadow directory and a mount."""

    def __init__(self, name: str, device: Path, home: Path, shadow: Path, *, namespaced: bool,
                 mount_options: str = "", coherence: str = "coherent") -> None:
        self.name = name
        self.device = device
        self.home = home
        self.namespaced = namespaced
        self.mount_options = mount_options
        self.uuid_file = home / "system_uuid"
        self.config_file = home / "famfs-agent.toml"
        self.shadow = shadow
        self.mountpoint = home / "mnt"
        self.agent_log = home / "agent.log"
        self.mount_log = home / "mount.log"
        self.agent: subprocess.Popen[bytes] | None = None
        self.mount: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(exist_ok=True)
        # A config of this host's own, so nothing in /etc/famfs leaks into the simulation; the
        # demo's second device is at a path of this host's own (docs/devices.md).
        self.second_device = home / "second-device.img"
        self.config_file.write_text(f'[host]\nsystem_uuid_file = "{self.uuid_file}"\ncoherence = "{coherence}"\n'
                                    f'devices = ["{self.second_device}"]\n')

    def __repr__(self) -> str:
        return f"Host({self.name})"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, SYSTEM_UUID_ENV: str(self.uuid_file), CONFIG_ENV: str(self.config_file)}

    @property
    def shadow_root(self) -> Path:
        return self.shadow / "root"

    def add_settings(self, section: str, values: Mapping[str, object]) -> None:
        """Settings of famfs-agent.toml's `section` for this host's programs (before they start)."""
        add_settings(self.config_file, section, values)

    # --- the agent --------------------------------------------------------------------------

    def start_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            raise HarnessError(f"{self.name}: agent already running (pid {self.agent.pid})")
        argv = [tool("famfs-agent"), "--follow", "--shadow", str(self.shadow), "--config", str(self.config_file),
                "--system-uuid-file", str(self.uuid_file), "--log-format", "json", str(self.device)]
        self.agent = self._spawn(argv, self.agent_log)
        superblock = self.shadow_root / ".meta" / ".superblock"
        self._wait_alive(self.agent, self.agent_log, lambda: superblock.exists(), f"{self.name}'s agent to write {superblock}")

    def stop_agent(self, *, kill: bool = False) -> int | None:
        """Stop the agent (SIGTERM, or SIGKILL to simulate a crash); its exit status."""
        if self.agent is None:
            return None
        if kill and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait()
        status = stop_process(self.agent)
        self.agent = None
        return status

    # --- the mount --------------------------------------------------------------------------

    def start_mount(self) -> None:
        if self.mount is not None and self.mount.poll() is None:
            raise HarnessError(f"{self.name}: mount already running (pid {self.mount.pid})")
        argv = [tool("famfs-fuse-mount"), "--foreground", "--shadow", str(self.shadow), "--device", str(self.device)]
        if self.mount_options:
            argv += ["-o", self.mount_options]
        argv.append(str(self.mountpoint))
        if self.namespaced:
            # No --fork: unshare execs the daemon, so its pid is the namespace's only process.
            argv = ["unshare", "-m", "--propagation", "private", "--", *argv]
        self.mount = self._spawn(argv, self.mount_log)
        self._wait_alive(self.mount, self.mount_log, self.is_mounted, f"{self.name}'s FUSE mount on {self.mountpoint}")

    def is_mounted(self) -> bool:
        """Whether the mount daemon's own namespace shows a FUSE file system on our mount point."""
        if self.mount is None or self.mount.poll() is not None:
            return False
        try:
            mountinfo = Path(f"/proc/{self.mount.pid}/mountinfo").read_text()
        except FileNotFoundError:
            return False
        target = str(self.mountpoint)
        for line in mountinfo.splitlines():
            fields = line.split()
            fs_type = fields[fields.index("-") + 1]
            if fields[4] == target and fs_type.startswith("fuse"):
                return True
        return False

    def stop_mount(self, *, kill: bool = False) -> int | None:
        """Unmount by SIGTERM (or SIGKILL the daemon); falls back to a lazy fusermount3 -u."""
        if self.mount is None:
            return None
        process = self.mount
        if kill and process.poll() is None:
            process.kill()
            process.wait()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                subprocess.run(self.inside(["fusermount3", "-u", "-z", str(self.mountpoint)]), capture_output=True)
                stop_process(process, timeout=2.0)
        self.mount = None
        if not self.namespaced and os.path.ismount(self.mountpoint):
            # A killed daemon leaves its mount behind in this namespace: take it away.
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        return process.returncode

    # --- looking at this host ---------------------------------------------------------------

    def view(self, relpath: str = "") -> Path:
        """A path through this host's mount, usable from the harness's own namespace."""
        if self.mount is None:
            raise HarnessError(f"{self.name}: no mount running")
        base = Path(f"/proc/{self.mount.pid}/root{self.mountpoint}") if self.namespaced else self.mountpoint
        return base / relpath if relpath else base

    def inside(self, argv: Sequence[str], cwd: Path | None = None) -> list[str]:
        """`argv` as run on this host: inside the mount daemon's namespace when it has one."""
        if self.namespaced and self.mount is not None:
            # Entering a mount namespace resets the working directory to its root: set it there.
            workdir = [f"--wd={cwd}"] if cwd is not None else []
            return ["nsenter", "-t", str(self.mount.pid), "-m", *workdir, "--", *argv]
        return list(argv)

    def run_inside(self, argv: Sequence[str], *, check: bool = True, cwd: Path | None = None,
                   timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run a command on this host; on timeout its whole process group is killed, so a
        pipeline (sh -c 'find | xargs ...') never outlives the call."""
        command = self.inside(argv, cwd)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                              cwd=cwd, start_new_session=True) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise HarnessError(f"{self.name}: {' '.join(argv)} still running after {timeout:.0f} s: killed") from None
        result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise HarnessError(f"{self.name}: {' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def famfsctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """famfsctl as this host (its identity), on the host's own namespace."""
        result = subprocess.run([tool("famfsctl"), *args], capture_output=True, text=True, env=self.env,
                                timeout=COMMAND_TIMEOUT_S)
        if check and result.returncode != 0:
            raise HarnessError(f"{self.name}: famfsctl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [process for process in (self.agent, self.mount) if process is not None and process.poll() is None]

    def stop(self) -> None:
        self.stop_mount()
        self.stop_agent()

    # --- internals --------------------------------------------------------------------------

    def spawn(self, argv: list[str], log: Path, *, extra_env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[str]:
        """A process of this host that dies with the harness (PR_SET_PDEATHSIG), in a session of
        its own (Ctrl-C reaches the harness, which stops it in order); stderr (and stdout,
        unless `stdout` is subprocess.PIPE) to `log`. Stopping it is the caller's (stop_process)."""
        with open(log, "ab") as sink:
            sink.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            sink.flush()
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink if stdout is None else stdout,
                                    stderr=sink, env={**self.env, **(extra_env or {})}, text=True,
                                    start_new_session=True, preexec_fn=_die_with_parent)

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as sink:
            sink.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            sink.flush()
            # A session of its own: Ctrl-C reaches the harness, which stops the daemons in order.
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=self.env,
                                    start_new_session=True, preexec_fn=_die_with_parent)

    def _wait_alive(self, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool], what: str) -> None:
        def ready_or_dead() -> bool:
            return process.poll() is not None or ready()

        try:
            wait_until(ready_or_dead, START_TIMEOUT_S, what)
        except HarnessError as err:
            raise HarnessError(f"{err}; its log {log}:\n{log_tail(log)}") from None
        if process.poll() is not None:
            raise HarnessError(f"{self.name}: {what} failed: exited {process.returncode}; its log {log}:\n{log_tail(log)}")


class Cluster:
    """One device image, made by the master, followed by the master and every client."""

    def __init__(self, workdir: Path | None = None, *, parent: Path | None = None, size: str = "4g", clients: int = 2,
                 namespaces: bool | None = None, mount_options: str = "", serve_master: bool = True,
                 coherence: str = "coherent") -> None:
        """`workdir` is kept (only the image is removed); without it a temporary one is made
        (under `parent` if given) and removed whole at the end. Without `serve_master` the master
        runs no agent or mount (only famfsctl), leaving the CPU to the clients. `coherence` is
        every host's [host] coherence (docs/config.md)."""
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="famfs-cluster-", dir=parent)) if workdir is None else workdir
        self.size = size
        self.serve_master = serve_master
        self.namespaced = namespaces_work() if namespaces is None else namespaces
        self.image = self.workdir / "famfs.img"
        tmpfs = shadow_filesystem()
        # Shadow trees on tmpfs when there is one (removed whole by stop()), else in the workdir.
        self.shadows = Path(tempfile.mkdtemp(prefix="famfs-shadows-", dir=tmpfs)) if tmpfs else self.workdir / "shadows"
        self.master, *self.clients = [
            Host(name, self.image, self.workdir / name, self.shadows / name, namespaced=self.namespaced,
                 mount_options=mount_options, coherence=coherence)
            for name in ["master", *(f"client{number}" for number in range(1, clients + 1))]
        ]
        self._log_watch: LogHeaderWatch | None = None

    @property
    def hosts(self) -> list[Host]:
        return [self.master, *self.clients]

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def make_filesystem(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.master.famfsctl("mkfs", "--size", self.size, str(self.image))

    @property
    def served_hosts(self) -> list[Host]:
        """The hosts that run an agent and a mount."""
        return self.hosts if self.serve_master else self.clients

    def start(self) -> None:
        """mkfs, then the agents, then the mounts."""
        self.make_filesystem()
        for host in self.served_hosts:
            host.start_agent()
        for host in self.served_hosts:
            host.start_mount()

    def stop(self) -> None:
        """Everything down and gone; safe to call twice, and shielded from a second Ctrl-C."""
        with _ignoring_interrupts():
            errors: list[str] = []
            for host in reversed(self.hosts):
                try:
                    host.stop()
                except Exception as err:  # keep cleaning the other hosts; report at the end
                    errors.append(f"{host.name}: {err}")
            if self._log_watch is not None:
                self._log_watch.close()
                self._log_watch = None
            leftovers = self.leftovers()
            shutil.rmtree(self.shadows, ignore_errors=True)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                self.image.unlink(missing_ok=True)
            if leftovers:
                errors.append("left behind: " + "; ".join(leftovers))
            if errors:
                raise HarnessError("cluster clean-up: " + " | ".join(errors))

    def leftovers(self) -> list[str]:
        """Processes still running and mounts still present under the work directory."""
        found = [f"{host.name} pid {process.pid}" for host in self.hosts for process in host.running()]
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        prefix = str(self.workdir)
        found += [f"mount {line.split()[4]}" for line in mounts if line.split()[4].startswith(prefix)]
        return found

    # --- the master's tools -----------------------------------------------------------------

    def ctl(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """famfsctl COMMAND --device IMAGE ARGS as the master."""
        return self.master.famfsctl(command, "--device", str(self.image), *args, check=check)

    def ctl_argv(self, command: str, *args: str) -> list[str]:
        return [tool("famfsctl"), command, "--device", str(self.image), *args]

    def next_index(self) -> int:
        """The log's next_index, read from the device itself."""
        if self._log_watch is None:
            self._log_watch = LogHeaderWatch(self.image)
        return self._log_watch.next_index()

    def one_shot_play(self, shadow: Path, host: Host | None = None) -> subprocess.CompletedProcess[str]:
        """`famfs-agent` without --follow: a fresh play of the whole log into `shadow`."""
        as_host = host or self.clients[0]
        result = subprocess.run([tool("famfs-agent"), "--shadow", str(shadow), "--config", str(as_host.config_file),
                                 "--system-uuid-file", str(as_host.uuid_file), str(self.image)],
                                capture_output=True, text=True, env=as_host.env, timeout=COMMAND_TIMEOUT_S)
        if result.returncode != 0:
            raise HarnessError(f"one-shot famfs-agent play into {shadow} exited {result.returncode}:\n{result.stderr}")
        return result


@contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
