"""What `make demo` shows, step by step, on a running cluster (see demo/__main__.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import famfs
from demo.arrow_data import ROWS_PER_BATCH, run_query, write_table
from demo.cluster import Cluster, HarnessError, log_tail, tool, wait_until
from demo.harness import REPO
from demo.propagation import measure, percentile
from demo.trees import file_checksums, sha256_of
from famfs import devices, env, shadowdir
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import writer

MiB = 1 << 20
# Pure-Python packages of the standard library: ~280 source files, a few MB, short paths.
STDLIB_PACKAGES = ("asyncio", "concurrent", "ctypes", "email", "http", "importlib", "json", "logging",
                   "multiprocessing", "sqlite3", "tomllib", "unittest", "urllib", "wsgiref", "xml")
RANDOMIZED = (("r1.bin", 1 * MiB, 101), ("r2.bin", 3 * MiB, 102), ("r3.bin", 5 * MiB + 17, 103),
              ("r4.bin", 4096, 104), ("r5.bin", 9 * MiB, 105))
TABLE_ROWS = 16 * ROWS_PER_BATCH  # 16 bytes a row: a 256 MiB Arrow table
CATCH_UP_TIMEOUT_S = 30
PROGRESS_EVERY_S = 0.25  # without a terminal to redraw on, a progress line at most this often


@dataclass
class Narrator:
    started: float = field(default_factory=time.monotonic)
    live: bool = field(default_factory=sys.stdout.isatty)

    def step(self, title: str) -> None:
        print(f"\n[{time.monotonic() - self.started:5.1f} s] {title}", flush=True)

    def say(self, text: str) -> None:
        print(f"         {text}", flush=True)

    def progress(self, text: str) -> None:
        if self.live:
            print(f"\r         {text}", end="", flush=True)

    def end_progress(self) -> None:
        if self.live:
            print(flush=True)


@dataclass
class Findings:
    latencies_ms: list[float] = field(default_factory=list)
    verified: int = 0
    copied: int = 0
    copied_bytes: int = 0
    cross_host: str = ""
    devices: str = ""
    arrow: list[str] = field(default_factory=list)
    removal_ms: dict[str, float] = field(default_factory=dict)


def stage_stdlib(target: Path) -> Path:
    """A copy of part of the stdlib source (bytecode caches left out); the copy is what we cp in."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in STDLIB_PACKAGES:
        shutil.copytree(stdlib / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    too_long = [path for path in target.rglob("*")
                if len(f"stdlib/{path.relative_to(target)}".encode()) > fmt.MAX_RELPATH_BYTES]
    if too_long:
        raise HarnessError(f"{too_long[0]}: its famfs path would exceed {fmt.MAX_RELPATH_BYTES} bytes")
    return target


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bring_up(cluster: Cluster, say: Narrator) -> None:
    say.step(f"Emulated device: a {cluster.size} sparse image file, {cluster.image}")
    cluster.make_filesystem()
    say.say(f"famfsctl mkfs made it; the host that ran mkfs is the master "
            f"(its identity: {cluster.master.uuid_file})")
    if cluster.namespaced:
        say.say("each host's mount runs in its own mount namespace (unshare -m), as on separate machines")
    elif os.environ.get(env.DEMO_NAMESPACES) == "0":
        say.say(f"{env.DEMO_NAMESPACES}=0: every host's mount is in this machine's own mount namespace")
    else:
        say.say("mount namespaces do not work here: every host's mount is in this machine's own namespace")
    for host in cluster.hosts:
        host.start_agent()
        host.start_mount()
        say.say(f"{host.name:8} agent pid {host.agent.pid if host.agent else '-'} follows the log into {host.shadow}; "
                f"mount pid {host.mount.pid if host.mount else '-'} serves it at {host.mountpoint}")


def make_randomized_files(cluster: Cluster, say: Narrator, found: Findings) -> None:
    say.step("The master makes directories and randomized files; each client sees them arrive")
    cluster.ctl("mkdir", "-p", "data/random")
    cluster.ctl("mkdir", "-p", "shared")
    say.say("famfsctl mkdir -p data/random; famfsctl mkdir -p shared")
    for name, size, seed in RANDOMIZED:
        relpath = f"data/random/{name}"
        timing = measure(cluster, ["creat", "-s", str(size), "--randomize", "--seed", str(seed), relpath],
                         {client.name: client.view(relpath) for client in cluster.clients})
        found.latencies_ms += [seconds * 1000 for seconds in timing.visible_s.values()]
        seen = ", ".join(f"{label} after {ms(seconds)}" for label, seconds in timing.visible_s.items())
        say.say(f"famfsctl creat -s {size} --randomize --seed {seed} {relpath}: {seen}")


def copy_stdlib(cluster: Cluster, say: Narrator, found: Findings) -> Path:
    source = stage_stdlib(cluster.workdir / "source" / "stdlib")
    files = sorted(path for path in source.rglob("*") if path.is_file())
    found.copied = len(files)
    found.copied_bytes = sum(path.stat().st_size for path in files)
    say.step(f"The master copies a real tree in: {len(files)} files of Python's standard library "
             f"({found.copied_bytes / MiB:.1f} MiB; each file takes at least one 2 MiB allocation unit)")
    say.say(f"famfsctl cp -r {source} /")
    copier = subprocess.Popen(cluster.ctl_argv("cp", "-r", str(source), "/"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=cluster.master.env)
    exited_at: float | None = None
    last_print, last_line = 0.0, ""
    while True:
        if exited_at is None and copier.poll() is not None:
            exited_at = time.monotonic()
            if copier.returncode != 0:
                raise HarnessError(f"famfsctl cp -r exited {copier.returncode}: {copier.communicate()[1]}")
        counts = {client.name: count_files(client.view("stdlib")) for client in cluster.clients}
        now = time.monotonic()
        line = "   ".join(f"{name}: {count:4}/{len(files)} files" for name, count in counts.items())
        if say.live:
            say.progress(line)
        elif line != last_line and now - last_print > PROGRESS_EVERY_S:
            say.say(line)
            last_print, last_line = now, line
        if exited_at is not None:
            if all(count == len(files) for count in counts.values()):
                lag = now - exited_at
                break
            if now - exited_at > CATCH_UP_TIMEOUT_S:
                raise HarnessError(f"{CATCH_UP_TIMEOUT_S} s after famfsctl cp exited, the clients show only {counts}")
        time.sleep(0.1 if exited_at is None else 0.002)
    say.end_progress()
    say.say(f"famfsctl cp exited; {ms(lag)} later every client listed all {len(files)} files "
            "(that time includes listing them through each mount)")
    return source


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def verify_on_clients(cluster: Cluster, source: Path, say: Narrator, found: Findings) -> None:
    say.step("Each client reads every file back through its own mount and checks it byte for byte")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    expected = {relpath: sha256_of(stdlib / relpath) for relpath in file_checksums(source)}  # the originals
    for client in cluster.clients:
        for name, _, seed in RANDOMIZED:
            client.run_inside([tool("famfsctl"), "verify", "-S", str(seed), str(client.mountpoint / "data/random" / name)])
        found.verified += len(RANDOMIZED)
        through_mount = file_checksums(client.view("stdlib"))
        if through_mount != expected:
            wrong = sorted(name for name in expected.keys() | through_mount.keys() if expected.get(name) != through_mount.get(name))
            raise HarnessError(f"{client.name}: {len(wrong)} copied files differ from the source, e.g. {wrong[:5]}")
        say.say(f"{client.name}: famfsctl verify passed for {len(RANDOMIZED)} randomized files; "
                f"sha256 of all {len(expected)} stdlib files equals the originals' in {stdlib}")


def write_across_hosts(cluster: Cluster, say: Narrator, found: Findings) -> None:
    writer, reader = cluster.clients[0], cluster.clients[1]
    relpath = "shared/notes.txt"
    say.step(f"A file written through {writer.name}'s mount is read through {reader.name}'s")
    cluster.ctl("creat", "-s", "4096", relpath)
    wait_until(lambda: all(host.view(relpath).exists() for host in (writer, reader)), 10, f"{relpath} on both clients")
    message = f"hello from {writer.name}, written at {time.strftime('%H:%M:%S')}\n".encode()
    with open(writer.view(relpath), "r+b") as target:  # famfs files have a fixed size: write in place
        target.write(message)
    with open(reader.view(relpath), "rb") as source:
        seen = source.read(len(message))
    if seen != message:
        raise HarnessError(f"{reader.name} read {seen!r} from {relpath}, {writer.name} wrote {message!r}")
    found.cross_host = f"{writer.name} wrote {len(message)} bytes into {relpath}; {reader.name} read them back"
    say.say(f"famfsctl creat -s 4096 {relpath} (master); {writer.name} writes {message.decode().strip()!r}")
    say.say(f"{reader.name} reads: {seen.decode().strip()!r}")


def arrow_zero_copy(cluster: Cluster, say: Narrator, found: Findings) -> None:
    relpath = "shared/table.arrow"
    say.step("The master writes an Arrow table straight into device memory; each client maps it, zero-copy")
    master = famfs.Master(cluster.image, system_uuid_file=cluster.master.uuid_file)
    started = time.monotonic()
    new = write_table(master, relpath, TABLE_ROWS)
    say.say(f"famfs.Master(...).create({relpath!r}, {new.size:,}): Arrow IPC written through the mapping, "
            f"then committed to the log ({ms(time.monotonic() - started)})")
    wait_until(lambda: all(client.view(relpath).exists() for client in cluster.clients), CATCH_UP_TIMEOUT_S,
               f"{relpath} on every client")
    for client in cluster.clients:
        path = str(client.mountpoint / relpath)
        python = client.inside([sys.executable], cwd=REPO)
        mapped, copied = run_query(python, "famfs", path), run_query(python, "file", path)
        say.say(f"{client.name}, famfs.open({path}):")
        say.say(f"  {mapped.line()}")
        say.say(f"{client.name}, for comparison pyarrow.ipc.open_file on the same path through the FUSE mount:")
        say.say(f"  {copied.line()}")
        found.arrow.append(f"{client.name} opened {mapped.table_bytes / MiB:.0f} MiB in {ms(mapped.open_s)}, "
                           f"RssAnon +{mapped.rss_anon_growth / MiB:.0f} MiB (through the mount: "
                           f"+{copied.rss_anon_growth / MiB:.0f} MiB)")


def two_devices(cluster: Cluster, say: Narrator, found: Findings) -> None:
    """A second device joins the file system; a file striped across both is read on every host,
    each of which finds the device at a path of its own (docs/devices.md)."""
    relpath, size, seed = "data/striped.bin", 64 * MiB, 201
    second = cluster.workdir / "second.img"
    say.step("A second device joins the file system; a file is striped across both devices")
    for host in cluster.hosts:  # the same device under another name on each host
        host.second_device.symlink_to(second)
    cluster.ctl("add-device", "--size", cluster.size, str(second))
    say.say(f"famfsctl add-device {second.name}: its own superblock (same file-system UUID), then ADD_DAXDEV in the log")
    cluster.ctl("creat", "-s", str(size), "--randomize", "--seed", str(seed), "--nstrips", "2", "--nbuckets", "1", relpath)
    with Device(cluster.image) as opened:
        entry = writer.load(FamfsLog(opened)).files[relpath][1]
    strips = ", ".join(f"device {strip.devindex} at {strip.offset:#x}" for strip in entry.stripes[0].strips)
    say.say(f"famfsctl creat -s {size} --nstrips 2 --nbuckets 1 {relpath}: strips on {strips}")
    for host in cluster.served_hosts:
        table = host.shadow / ".agent" / shadowdir.DAXDEVS_FILE
        wait_until(lambda table=table: devices.decode_table(table.read_bytes())[-1].state == devices.FOUND,
                   CATCH_UP_TIMEOUT_S, f"{host.name}'s agent to find the second device")
        wait_until(lambda host=host: host.view(relpath).exists(), CATCH_UP_TIMEOUT_S, f"{relpath} on {host.name}")
        host.run_inside([tool("famfsctl"), "verify", "-S", str(seed), str(host.mountpoint / relpath)])
    found.devices = (f"{relpath} ({size // MiB} MiB) striped over 2 devices, read back by pattern on "
                     f"{len(cluster.served_hosts)} hosts, each with the device at its own path")
    say.say(f"every host read it through its mount (each finds the device as {cluster.master.second_device.name} "
            f"in its own directory): pattern verified")


def remove_on_master(cluster: Cluster, say: Narrator, found: Findings) -> None:
    relpath = "data/random/r3.bin"
    say.step(f"The master removes {relpath}; it disappears on both clients")
    timing = measure(cluster, ["rm", relpath], {client.name: client.view(relpath) for client in cluster.clients},
                     appear=False)
    found.removal_ms = {label: seconds * 1000 for label, seconds in timing.visible_s.items()}
    say.say(f"famfsctl rm {relpath}: " + ", ".join(f"gone on {label} after {ms(seconds)}"
                                                    for label, seconds in timing.visible_s.items()))


def summarize(cluster: Cluster, say: Narrator, found: Findings) -> None:
    entries = cluster.next_index()
    latencies = found.latencies_ms
    say.step("Summary")
    say.say(f"hosts       master + {len(cluster.clients)} clients, each an agent + a FUSE mount"
            + (", each in its own mount namespace" if cluster.namespaced else ", all in one mount namespace"))
    say.say(f"device      {cluster.size} sparse image, {entries} log entries")
    say.say(f"propagation append → visible on a client: p50 {percentile(latencies, 0.5):.1f} ms, "
            f"max {max(latencies):.1f} ms over {len(latencies)} samples (negative lookups cached)")
    say.say(f"            ({os.cpu_count()} cores shared by {2 * (1 + len(cluster.clients))} daemons, famfsctl and this "
            f"demo; `make bench` measures one client on an idle machine)")
    say.say(f"verified    {found.verified} randomized files by pattern, {found.copied} stdlib files by sha256, "
            f"on every client")
    say.say(f"cross-host  {found.cross_host}")
    for line in found.arrow:
        say.say(f"arrow       {line}")
    say.say("removal     " + ", ".join(f"{label} {value:.1f} ms" for label, value in found.removal_ms.items()))
    say.say(f"devices     {found.devices}")


def run(cluster: Cluster, say: Narrator) -> None:
    found = Findings()
    bring_up(cluster, say)
    make_randomized_files(cluster, say, found)
    source = copy_stdlib(cluster, say, found)
    verify_on_clients(cluster, source, say, found)
    write_across_hosts(cluster, say, found)
    arrow_zero_copy(cluster, say, found)
    remove_on_master(cluster, say, found)
    two_devices(cluster, say, found)
    summarize(cluster, say, found)


def show_logs(cluster: Cluster) -> None:
    """On failure: the end of every daemon's log, before clean-up removes them."""
    for host in cluster.hosts:
        for log in (host.agent_log, host.mount_log):
            if not log.exists():
                continue
            print(f"--- {log}", file=sys.stderr)
            print(log_tail(log), file=sys.stderr)
