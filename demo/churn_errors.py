"""What explains a churn's errors (demo/forever.py): the cluster's logs, kept when a reader met
an errno or a wrong byte, an allocation failed below 80 % live, an fsck was not clean or a reader
gave no report (the cluster's directory is removed at the end of a run), and each reader error
set beside the log lines its host's mount and agent wrote around it; and where a reader that
does not stop is stuck.

Every daemon stamps its lines with the UTC wall clock in ISO form (famfs.logsetup), as the
readers stamp their errors (demo/churn_reader.py), so the two can be matched by time alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from demo.cluster import Cluster

WINDOW_S = 2.0  # log lines this long before (or a little after) an error are quoted beside it
AFTER_S = 0.5
LINES_QUOTED = 40  # per log and error, the nearest to the error
STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z?")
# What the mount logs when it answers a request with an error (fusefs/lease.py, fusefs/inodes.py,
# fusefs/operations.py, fusefs/devicecheck.py), what that says about the error, and whether the
# line must name the file (a refusal of one file) or holds for every request (the lease, the
# device, a handler's failure); checked in this order.
MOUNT_REASONS = (
    ("not serving bytes", "the mount self-fenced (its agent's lease)", False),
    ("bad shadow file, served as EIO", "a shadow file the mount refused as bad", True),
    ("shadow file not served", "a shadow file the log does not hold", True),
    ("pin failed", "the mount could not pin the file", True),
    ("request failed, answered EIO", "a mount handler failed (traceback in mount.log)", False),
    ("device refused", "the mount refused the device", False),
)
QUOTES = "'\""  # around a logged value (key='value', or key="it's" when it holds a quote)
REASON = re.compile(r"reason=('[^']*'|\"[^\"]*\"|\S+)")
UNEXPLAINED = "unexplained (nothing in the mount's log near it)"


@dataclass(frozen=True)
class Line:
    at: float  # seconds since the epoch, UTC
    text: str


def stamp(text: str) -> float | None:
    """The UTC time a log line (or a reader's error) was stamped with, as epoch seconds."""
    found = STAMP.search(text)
    if found is None:
        return None
    return datetime.fromisoformat(found.group(1) + "+00:00").timestamp()


def read_lines(path: Path) -> list[Line]:
    """A log's stamped lines; unstamped ones (a traceback's) go with the line before them."""
    try:
        raw = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    lines: list[Line] = []
    for text in raw:
        at = stamp(text)
        if at is not None:
            lines.append(Line(at, text))
        elif lines:
            lines.append(Line(lines[-1].at, text))
    return lines


def near(lines: list[Line], at: float) -> list[Line]:
    found = [line for line in lines if at - WINDOW_S <= line.at <= at + AFTER_S]
    return sorted(found, key=lambda line: abs(line.at - at))[:LINES_QUOTED]


def explain(event: dict[str, str], mount_lines: list[Line]) -> str:
    """What the mount said about this error, from its lines near it (one naming the file first)."""
    at = stamp(event["at"])
    if at is None:
        return UNEXPLAINED
    for line in near(mount_lines, at):  # nearest first
        for marker, meaning, of_one_file in MOUNT_REASONS:
            if marker in line.text and (event["relpath"] in line.text or not of_one_file):
                reason = REASON.search(line.text)
                return f"{meaning}: {reason.group(1).strip(QUOTES)}" if reason else meaning
    return UNEXPLAINED


def classify(events: list[dict[str, str]], cluster: Cluster) -> None:
    """Each event (with its "host") given an "explanation" from its host's mount log."""
    hosts = {host.name: host for host in cluster.hosts}
    cache: dict[str, list[Line]] = {}
    for event in events:
        host = hosts.get(event.get("host", ""))
        if host is None:
            event["explanation"] = UNEXPLAINED
            continue
        if host.name not in cache:
            cache[host.name] = read_lines(host.mount_log)
        event["explanation"] = explain(event, cache[host.name])


def keep(cluster: Cluster, events: list[dict[str, str]], into: Path, why: list[str]) -> Path:
    """Copy every log of the cluster (each host's agent, mount and readers, the coordinator's)
    to a new directory under `into`, with errors.txt: `why` they were kept, then each reader
    error and the mount's and agent's lines around it. The directory's path."""
    kept = Path(tempfile.mkdtemp(prefix=f"famfs-churn-logs-{time.strftime('%Y%m%d-%H%M%S')}-", dir=into))
    for host in cluster.hosts:
        if not host.home.is_dir():
            continue
        target = kept / host.name
        target.mkdir()
        for log in sorted(host.home.glob("*.log")):
            shutil.copy2(log, target / log.name)
    hosts = {host.name: host for host in cluster.hosts}
    out = [f"kept because: {'; '.join(why)}"]
    for event in events:
        out.append(f"== {event.get('host', '?')} {event.get('via', '?')}: {event['op']} {event['relpath']} at "
                   f"{event['at']}: {event['errno']}: {event['message']}")
        out.append(f"   explanation: {event.get('explanation', UNEXPLAINED)}")
        host = hosts.get(event.get("host", ""))
        at = stamp(event["at"])
        if host is None or at is None:
            continue
        for what, path in (("mount", host.mount_log), ("agent", host.agent_log)):
            quoted = sorted(near(read_lines(path), at), key=lambda line: line.at)
            out.append(f"-- {host.name} {what}.log, {len(quoted)} lines within {WINDOW_S:g} s before and "
                       f"{AFTER_S:g} s after:")
            out.extend(f"   {line.text}" for line in quoted)
    (kept / "errors.txt").write_text("\n".join(out) + "\n")
    return kept


def stuck(pid: int) -> str:
    """Where a process that does not stop is (a reader blocked in a request its mount never
    answers, say): per thread, its state, the kernel function it waits in, its system call
    (number and arguments, /proc/PID/syscall) and kernel stack. Read before it is killed."""
    parts: list[str] = []
    try:
        tasks = sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda task: int(task.name))
    except OSError as err:
        return f"pid {pid}: {err.strerror}"
    for task in tasks:
        fields = {}
        for name in ("comm", "wchan", "syscall", "stack"):
            try:
                fields[name] = (task / name).read_text(errors="replace").strip()
            except OSError as err:
                fields[name] = f"({err.strerror})"
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "?"
        stack = " <- ".join(line.split()[-1] for line in fields["stack"].splitlines()[:8])
        parts.append(f"thread {task.name} {fields['comm']} state {state} wchan {fields['wchan']} "
                     f"syscall {fields['syscall']} stack {stack}")
    return "; ".join([*parts, *open_files(pid)])


def open_files(pid: int) -> list[str]:
    """The files a process holds open (a read's descriptor names the file it waits on)."""
    found = []
    with contextlib.suppress(OSError):
        for fd in sorted(Path(f"/proc/{pid}/fd").iterdir(), key=lambda link: int(link.name)):
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("/"):
                    found.append(f"fd {fd.name} {target}")
    return found
