"""The mount's per-request lease check (fusefs/lease.py), measured: `python -m bench.lease_check`.

A fresh image on /dev/shm, a following famfs-agent (serve window 1 h, so the lease holds for the
whole run), then `Lease.refusal` called in a loop on the agent's record as the mount calls it
(the device's mmap, a handle's incarnation), and, for scale, the decode of a changed record and
the extra copy a read under a lease makes (1 MiB). Best and median of 5 runs, nanoseconds.
Then end to end: `cache=direct` sequential 1 MiB reads of a 512 MiB file through a mount whose
agent is a one-shot play (no lease: zero-copy) and a follower (a lease), two rounds each.
Not part of `make bench`: numbers for docs/fusefs.md, with the command that gives them.
"""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from demo.harness import Mount, wait_for
from famfs import env, hosts
from famfs.device import Device
from famfs.shadowdir import read_state
from fusefs.lease import Lease

CALLS = 200_000
RUNS = 5


def per_call_ns(call: Callable[[], object], calls: int) -> tuple[float, float]:
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        runs.append((time.perf_counter_ns() - started) / calls)
    return min(runs), statistics.median(runs)


def read_rate(path: Path) -> tuple[float, float]:
    """GB/s of sequential 1 MiB reads of the whole file (page-aligned buffer): best, median of 5."""
    buffer = mmap.mmap(-1, 1 << 20)
    fd = os.open(path, os.O_RDONLY)
    rates = []
    try:
        for _ in range(RUNS):
            started, offset = time.perf_counter(), 0
            while (done := os.preadv(fd, [buffer], offset)) > 0:
                offset += done
            rates.append(offset / (time.perf_counter() - started) / 1e9)
    finally:
        os.close(fd)
        buffer.close()
    return max(rates), statistics.median(rates)


def reads(work: Path, image: Path) -> None:
    subprocess.run([sys.executable, "-m", "famfs.master.famfsctl", "creat", "--device", str(image), "-s", "512m", "big"],
                   check=True, capture_output=True, env={**os.environ, env.SYSTEM_UUID_FILE: str(work / "master_uuid")})
    for round_no, mode in enumerate(("one-shot", "follow") * 2):
        shadow = work / f"shadow{round_no}"
        follow = ["--follow", "--config", str(work / "agent.toml")] if mode == "follow" else ["--no-progress"]
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", *follow, "--shadow", str(shadow),
                                  "--system-uuid-file", str(work / "host_uuid"), str(image)], stderr=subprocess.DEVNULL)
        try:
            if mode == "one-shot":
                assert agent.wait(timeout=60) == 0
            wait_for(lambda: (state := read_state(shadow)) is not None and state.caught_up_at is not None, "caught up", 30)
            time.sleep(0.2)  # the follower's first renewal
            with Mount(shadow, image, work / f"mnt{round_no}", "cache=direct") as mount:
                best, median = read_rate(mount.mountpoint / "big")
            print(f"cache=direct 1 MiB reads, {mode:8} agent: best {best:.2f} GB/s, median {median:.2f} GB/s")
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="lease_check_", dir="/dev/shm"))
    agent = None
    try:
        image, shadow = work / "dev.img", work / "shadow"
        # famfsctl as a program: a module that imports the mount's code may not import the master's.
        subprocess.run([sys.executable, "-m", "famfs.master.famfsctl", "mkfs", "--size", "1g", str(image)], check=True,
                       capture_output=True, env={**os.environ, env.SYSTEM_UUID_FILE: str(work / "master_uuid")})
        (work / "agent.toml").write_text("[agent]\nserve_window = 3600.0\n")
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "--follow", "--shadow", str(shadow), "--config",
                                  str(work / "agent.toml"), "--system-uuid-file", str(work / "host_uuid"), str(image)],
                                 stderr=subprocess.DEVNULL)
        def renewed() -> Lease | None:
            candidate = Lease(str(shadow))
            if candidate.slot is None:
                return None
            with Device(image) as opened:
                return candidate if candidate.refusal(opened.map, candidate.incarnation) is None else None
        lease = wait_for(renewed, "the agent's first renewal", 30)
        with Device(image) as opened:
            device_map, me = opened.map, lease.incarnation
            check = per_call_ns(lambda: lease.refusal(device_map, me), CALLS)
            assert lease.slot is not None
            start = hosts.slot_offset(lease.slot)
            raw = bytes(device_map[start:start + 256])
            decode = per_call_ns(lambda: hosts.decode(raw, lease.slot), CALLS // 10)  # type: ignore[arg-type]
            view = memoryview(device_map)
            copy = per_call_ns(lambda: bytes(view[0:1 << 20]), 2000)
            view.release()
        print(f"lease check (refusal, record unchanged): best {check[0]:.0f} ns, median {check[1]:.0f} ns")
        print(f"record decode (a changed record, once per renewal): best {decode[0]:.0f} ns, median {decode[1]:.0f} ns")
        print(f"a read's extra copy under a lease, 1 MiB: best {copy[0] / 1000:.0f} us, median {copy[1] / 1000:.0f} us")
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        agent = None
        reads(work, image)
        print(f"load average: {os.getloadavg()[0]:.1f}")
        return 0
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
