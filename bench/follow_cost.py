"""CPU seconds a following famfs-agent spends per log entry, on `make churn`'s pattern (issue 19).

`python -m bench.follow_cost [--bursts N] [--repeat R]`: a fresh image on tmpfs and one client's
agent following it (`famfs-agent --follow`, logging as a host of the churn does); `famfs.Master`
appends N bursts of the churn's small files (in one `Master.batch()`: the last burst's 48 files
removed, 48 new ones made), waiting after each burst until the agent's cursor has caught up.
It prints the agent's CPU time per entry (/proc/<pid>/schedstat over the bursts),
the median of R runs. Nothing reclaims: the image is sparse and big enough for every burst.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import scratch
from demo import churn_data
from demo.cluster import stop_process
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


def one_run(work: Path, bursts: int) -> tuple[float, int]:
    """The agent's CPU seconds over `bursts` bursts, and the entries they logged."""
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
    try:
        wait_cursor(shadow, 0, agent)
        smalls: list[str] = []
        serial, last = 0, 0
        before = cpu_seconds(agent.pid)
        for _ in range(bursts):
            with master.batch():
                if smalls:
                    master.remove(*smalls)
                    last += len(smalls)
                    smalls = []
                for _ in range(BURST):
                    serial += 1
                    relpath = f"small/s{serial % 4096}"
                    with master.create(relpath, churn_data.BLOCK) as new:
                        churn_data.fill(new.buffer, relpath, serial)
                    smalls.append(relpath)
                    last += 1
            wait_cursor(shadow, last, agent)
        return cpu_seconds(agent.pid) - before, last
    finally:
        stop_process(agent, WAIT_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=60, help="bursts of the churn's small files (default 60)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on a fresh image (default 3)")
    args = parser.parse_args()
    logsetup.configure(level="error")
    per_entry = []
    for _ in range(args.repeat):
        with scratch("famfs-follow-cost-") as work:
            seconds, entries = one_run(work, args.bursts)
        per_entry.append(seconds / entries * 1000)
        print(f"agent: {seconds:.2f} CPU s for {entries} entries: {per_entry[-1]:.3f} ms/entry", flush=True)
    print(f"median {statistics.median(per_entry):.3f} ms of agent CPU per entry ({args.repeat} runs of "
          f"{args.bursts} bursts of {BURST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
