"""CPU seconds a following famfs-agent spends per log entry, on `make churn`'s pattern (issue 19).

`python -m bench.follow_cost [--bursts N] [--repeat R] [--mount [--list]]`: a fresh image on tmpfs and one client's
agent following it (`famfs-agent --follow`, logging as a host of the churn does); `famfs.Master`
appends N bursts of the churn's small files (in one `Master.batch()`: the last burst's 48 files
removed, 48 new ones made), waiting after each burst until the agent's cursor has caught up.
It prints the agent's CPU time per entry (/proc/<pid>/schedstat over the bursts),
the median of R runs; with --mount, also that of a famfs-fuse-mount serving the agent's shadow
(in a mount namespace of its own, as make churn's hosts run it), which takes every change of the
tree from inotify; with --list, a process in the mount's namespace also lists the small files'
directory through the mount after each burst, as make churn's readers do (the kernel then knows
the directory and the names listed: the mount sends it notifications as they change). The mount's CPU is that of all its threads
(/proc/<pid>/stat, in clock ticks: its worker threads' share included). Nothing
reclaims: the image is sparse and big enough for every burst.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import scratch
from demo import churn_data
from demo.cluster import stop_process, tool
from famfs import Master, logsetup
from famfs.master.mkfs import create_image, mkfs

AGENT = [sys.executable, "-m", "agent.cli"]
REPO = Path(__file__).resolve().parent.parent
BURST = 48  # demo/forever.py's Plan.small_burst
UNIT = 2 << 20
WAIT_S = 30.0


def cpu_seconds(pid: int) -> float:
    """On CPU, from /proc/<pid>/schedstat (nanoseconds: finer than /proc/<pid>/stat's ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def process_cpu_seconds(pid: int) -> float:
    """On CPU, every thread of the process, those gone included (schedstat is the main thread's only)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    utime, stime = stat[stat.rindex(")") + 2:].split()[11:13]  # fields 14 and 15
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def cursor(shadow: Path) -> int:
    try:
        return int(json.loads((shadow / ".agent" / "state.json").read_bytes())["applied_index"])
    except (FileNotFoundError, ValueError, KeyError):
        return -1


def wait_cursor(shadow: Path, index: int, agent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while cursor(shadow) < index:
        if time.monotonic() > deadline or agent.poll() is not None:
            raise RuntimeError(f"the agent did not reach entry {index} (cursor {cursor(shadow)})")
        time.sleep(0.0005)


def mounted(mount: subprocess.Popen[bytes], mountpoint: Path) -> bool:
    try:
        mountinfo = Path(f"/proc/{mount.pid}/mountinfo").read_text()
    except OSError:  # not yet exec'd, or gone
        return False
    return any(line.split()[4] == str(mountpoint) for line in mountinfo.splitlines())


def start_mount(work: Path, shadow: Path, image: Path) -> subprocess.Popen[bytes]:
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    with open(work / "mount.log", "wb") as mount_log:
        mount = subprocess.Popen(["unshare", "-m", "--propagation", "private", "--", tool("famfs-fuse-mount"), "--foreground",
                                  "--shadow", str(shadow), "--device", str(image), str(mountpoint)],
                                 cwd=REPO, stderr=mount_log)
    deadline = time.monotonic() + WAIT_S
    while not mounted(mount, mountpoint):
        if time.monotonic() > deadline or mount.poll() is not None:
            stop_process(mount, WAIT_S)
            raise RuntimeError(f"famfs-fuse-mount did not mount: {(work / 'mount.log').read_text()}")
        time.sleep(0.01)
    return mount


# Lists a directory each time a line arrives on stdin; answers with the count (run in the mount's namespace).
LISTER = "import os, sys\nfor line in sys.stdin:\n    print(len(os.listdir(line.strip())), flush=True)\n"


def start_lister(mount: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nsenter", "-t", str(mount.pid), "-m", "--", sys.executable, "-c", LISTER],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def listed(lister: subprocess.Popen[bytes], directory: Path) -> int:
    assert lister.stdin is not None and lister.stdout is not None
    lister.stdin.write(f"{directory}\n".encode())
    lister.stdin.flush()
    return int(lister.stdout.readline())


def one_run(work: Path, bursts: int, with_mount: bool, with_list: bool = False) -> tuple[float, float, int]:
    """The agent's and the mount's CPU seconds over `bursts` bursts, and the entries logged."""
    image, master_uuid, client_uuid, shadow = (work / "famfs.img", work / "master_uuid", work / "client_uuid",
                                               work / "shadow")
    master_uuid.write_text(f"{uuid.uuid4()}\n")
    client_uuid.write_text(f"{uuid.uuid4()}\n")
    create_image(image, (bursts + 2) * BURST * UNIT + (1 << 30))  # sparse: deleted space is never reused here
    mkfs(str(image), uuid_file=master_uuid)
    master = Master(image, system_uuid_file=master_uuid)
    master.mkdir("small")
    config = work / "agent.toml"
    config.write_text("[agent]\nmetrics_address = \"\"\n")
    # Logging as make churn's hosts log (demo/cluster.py): info, JSON, to a file.
    with open(work / "agent.log", "wb") as agent_log:
        agent = subprocess.Popen([*AGENT, "--follow", "--shadow", str(shadow), "--config", str(config),
                                  "--system-uuid-file", str(client_uuid), "--log-format", "json", str(image)],
                                 cwd=REPO, stderr=agent_log)
    mount = lister = None
    try:
        wait_cursor(shadow, 0, agent)
        if with_mount:
            mount = start_mount(work, shadow, image)
            if with_list:
                lister = start_lister(mount)
        smalls: list[str] = []
        serial, last = 0, 0
        before, mount_before = cpu_seconds(agent.pid), process_cpu_seconds(mount.pid) if mount else 0.0
        for _ in range(bursts):
            last += len(smalls) + BURST
            smalls = churn_data.small_burst(master, smalls, ((f"small/s{n % 4096}", n)
                                                             for n in range(serial + 1, serial + BURST + 1)))
            serial += BURST
            wait_cursor(shadow, last, agent)
            if lister is not None:
                listed(lister, work / "mnt" / "small")
        time.sleep(0.2)  # the mount's last inotify events
        mount_cpu = process_cpu_seconds(mount.pid) - mount_before if mount else 0.0
        return cpu_seconds(agent.pid) - before, mount_cpu, last
    finally:
        if lister is not None:
            stop_process(lister, WAIT_S)
        if mount is not None:
            stop_process(mount, WAIT_S)
        stop_process(agent, WAIT_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=60, help="bursts of the churn's small files (default 60)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on a fresh image (default 3)")
    parser.add_argument("--mount", action="store_true", help="measure a famfs-fuse-mount on the shadow too")
    parser.add_argument("--list", action="store_true",
                        help="with --mount: list the small files' directory through the mount after each burst")
    args = parser.parse_args()
    logsetup.configure(level="error")
    per_entry, mount_per_entry = [], []
    for _ in range(args.repeat):
        with scratch("famfs-follow-cost-") as work:
            seconds, mount_seconds, entries = one_run(work, args.bursts, args.mount, args.list)
        per_entry.append(seconds / entries * 1000)
        mount_per_entry.append(mount_seconds / entries * 1000)
        print(f"agent: {seconds:.2f} CPU s for {entries} entries: {per_entry[-1]:.3f} ms/entry" +
              (f"; mount: {mount_seconds:.2f} CPU s, {mount_per_entry[-1]:.3f} ms/entry" if args.mount else ""),
              flush=True)
    print(f"median {statistics.median(per_entry):.3f} ms of agent CPU per entry" +
          (f", {statistics.median(mount_per_entry):.3f} ms of the mount's" if args.mount else "") +
          f" ({args.repeat} runs of {args.bursts} bursts of {BURST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
