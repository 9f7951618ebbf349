"""famfs-agent: play the famfs log into a shadow tree once, follow it live, or report status.

    famfs-agent [--follow] [--shadow DIR] [--config FILE] [--log-format console|json]
                [--log-level LEVEL] [--system-uuid-file F] [--no-progress] [DEVICE]
    famfs-agent status [--shadow DIR] [--config FILE] [--json]
    famfs-agent health [--shadow DIR] [--config FILE] [--max-lag-s S] [--live]

Exit status: 0 done (or stopped by SIGTERM/SIGINT); 1 one-shot play rejected entries or stopped
at a corrupt entry; 2 the device, shadow directory, config file, metrics address or command line
cannot be used. `health` prints one JSON line and exits 0 healthy, 1 unhealthy, 2 bad command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from famfs.quickimport import load_structlog

# First, before anything imports structlog: without the asyncio it never needs here (a client's
# cold start, docs/agent.md). The console script gets here after taking the stop signals.
load_structlog()

import structlog  # noqa: E402

from agent.follower import EXIT_OK, EXIT_UNUSABLE, AgentState, Follower
from agent.hostrecord import settings_problem, table_lines, table_report
from agent.shadow_writer import ShadowTree
from famfs import cacheflush, config, hosts, logsetup
from famfs import format as fmt
from famfs.device import Device, DeviceError
from famfs.famfslog import FamfsLog
from famfs.identity import SYSTEM_UUID_FLAG_HELP, IdentityError, joining_identity_file
from famfs.shadowdir import STATE_FILE, agent_pid, state_path, tree_problem
from famfs.version import add_version_flag

EXIT_UNHEALTHY = 1  # `health`: some check failed (the JSON line says which)
HEALTH_POLL_S = 0.01  # how often `health` re-reads the cursor while it waits for the agent


def play_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="famfs-agent", description="Play the famfs log into the shadow tree; with --follow, keep following it. "
        "`famfs-agent status` reports on a shadow tree; `famfs-agent health` probes a following agent (one JSON "
        "line, exit 0 healthy).")
    parser.add_argument("device", metavar="DEVICE", nargs="?", help="devdax, pmem or image file (default: [agent] device)")
    parser.add_argument("--follow", action="store_true", help="keep applying new entries until SIGTERM/SIGINT")
    parser.add_argument("--shadow", help="shadow directory (default: [agent] shadow)")
    parser.add_argument("--config", help=config.CONFIG_FLAG_HELP)
    parser.add_argument("--log-format", choices=logsetup.FORMATS, help="default: [host] log_format")
    parser.add_argument("--log-level", choices=logsetup.LEVELS,
                        help="default: [host] log_level; debug logs every entry")
    parser.add_argument("--system-uuid-file", help=SYSTEM_UUID_FLAG_HELP)
    add_version_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (terminal) or progress events (elsewhere) for a long one-shot play")
    parser.add_argument("--metrics-address", metavar="HOST:PORT",
                        help="with --follow: serve Prometheus metrics there (default: [agent] metrics_address)")
    return parser


def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="famfs-agent status", description="Report on a shadow tree and its log.")
    parser.add_argument("--shadow", help="shadow directory (default: [agent] shadow)")
    parser.add_argument("--config", help=config.CONFIG_FLAG_HELP)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return parser


def health_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="famfs-agent health", description="Probe a following agent: one JSON line; "
                                     "exit 0 healthy, 1 unhealthy.")
    parser.add_argument("--shadow", help="shadow directory (default: [agent] shadow)")
    parser.add_argument("--config", help=config.CONFIG_FLAG_HELP)
    parser.add_argument("--max-lag-s", type=float, metavar="S",
                        help="how long the agent may take to apply what is logged now (default: [agent] health_max_lag_s)")
    parser.add_argument("--live", action="store_true",
                        help="only what a restart can fix (liveness): not lag, not a corrupt log")
    return parser


def play(argv: Sequence[str]) -> int:
    args = play_parser().parse_args(argv)
    settings = config.load(args.config)
    cacheflush.use(settings.host.coherence)
    if args.shadow is not None:
        config.check(config.AgentSettings, "shadow", args.shadow, "--shadow")
    logsetup.configure(args.log_format or settings.host.log_format, args.log_level or settings.host.log_level)
    device = args.device or settings.agent.device
    if not device:
        print("famfs-agent: no DEVICE given and no [agent] device in the config", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.follow and (problem := settings_problem(settings.agent.serve_window, settings.agent.heartbeat_interval)):
        print(f"famfs-agent: {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        uuid_file = joining_identity_file(args.system_uuid_file, settings)  # a bad file is a usage error now
    except IdentityError as err:
        print(f"famfs-agent: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    follower = Follower(
        device, args.shadow or settings.agent.shadow, settings.agent, uuid_file,
        follow=args.follow, debug=(args.log_level or settings.host.log_level) == "debug",
        progress=settings.agent.progress and not args.no_progress and not args.follow,
        device_paths=settings.host.devices,
    )
    metrics_address = args.metrics_address if args.metrics_address is not None else settings.agent.metrics_address
    if not (args.follow and metrics_address):
        return follower.run()
    # Only now: prometheus_client costs start-up time a one-shot play should not pay.
    from agent.metrics import AgentCollector
    from famfs.metrics import MetricsError, MetricsServer
    try:
        server = MetricsServer(metrics_address, AgentCollector(follower))
    except MetricsError as err:
        print(f"famfs-agent: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    structlog.get_logger("famfs-agent").info("metrics", address=metrics_address, port=server.port)
    try:
        return follower.run()
    finally:
        server.close()


class NoAgentState(Exception):
    """The shadow directory has no readable state.json."""


def status_report(shadow: Path) -> dict[str, object]:
    """Everything `status` shows, read from state.json and the device's log header."""
    state = AgentState.parse(ShadowTree(shadow).read_agent_file(STATE_FILE))
    if state is None:
        raise NoAgentState(f"{state_path(shadow)}: no agent state (never run here?)")
    holder = agent_pid(shadow)
    report: dict[str, object] = {
        "shadow": str(shadow), "device": state.device, "fs_uuid": state.fs_uuid, "role": state.role,
        "agent_running": holder is not None, "agent_pid": holder or state.pid, "following": state.following,
        "applied_index": state.applied_index, "log_next_index": None, "lag_entries": None, "lag_seconds": None,
        "rejected": state.rejected, "stalled_at": state.stalled_at, "last_error": state.last_error,
        "updated_at": _iso(state.updated_at), "device_error": None, "hosts": None,
    }
    try:
        with Device(state.device) as device:
            famfs_log = FamfsLog(device)
            next_index = famfs_log.header().next_index
            report["hosts"] = table_report(device.fresh(*hosts.TABLE_SPAN), next_index, state.host_slot, state.incarnation)
            if str(famfs_log.superblock.fs_uuid) != state.fs_uuid:
                report["device_error"] = f"the device now holds file system {famfs_log.superblock.fs_uuid}"
    except (DeviceError, fmt.FormatError) as err:
        report["device_error"] = str(err)
        return report
    lag = max(next_index - (state.applied_index + 1), 0)
    report["log_next_index"] = next_index
    report["lag_entries"] = lag
    # Upper bound on the age of the oldest entry not yet in the tree: time since it was complete.
    since = state.caught_up_at if state.caught_up_at is not None else state.updated_at
    report["lag_seconds"] = round(time.time() - since, 3) if lag else 0.0
    return report


def _iso(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="seconds")


def status(argv: Sequence[str]) -> int:
    args = status_parser().parse_args(argv)
    settings = config.load(args.config)
    cacheflush.use(settings.host.coherence)
    try:
        report = status_report(Path(args.shadow or settings.agent.shadow))
    except NoAgentState as err:
        raise SystemExit(f"famfs-agent status: {err}") from None
    if args.json:
        print(json.dumps(report, indent=1))
        return EXIT_OK
    running = f"running (pid {report['agent_pid']}, {'following' if report['following'] else 'one-shot'})" \
        if report["agent_running"] else "not running"
    lines = [
        ("shadow", report["shadow"]), ("device", report["device"]), ("fs uuid", report["fs_uuid"]),
        ("role", report["role"]), ("agent", running), ("applied index", report["applied_index"]),
        ("log next_index", report["log_next_index"]),
        ("lag", describe_lag(report)),
        ("rejected", report["rejected"]), ("stalled at", report["stalled_at"] if report["stalled_at"] is not None else "-"),
        ("last error", report["last_error"] or "-"), ("updated", report["updated_at"]),
    ]
    if report["device_error"]:
        lines.append(("device error", report["device_error"]))
    for key, value in lines:
        print(f"{key + ':':16} {value}")
    if report.get("hosts") is not None:
        print("hosts:           (* this host)")
        print("\n".join(table_lines(report["hosts"])))  # type: ignore[arg-type]
    return EXIT_OK


def describe_lag(report: dict[str, object]) -> str:
    """The entries not applied yet and since when the tree was last complete: an entry appended a
    moment ago to a tree idle for minutes is not minutes behind, so the age is not called lag."""
    entries = report["lag_entries"]
    if entries is None:
        return "unknown (device unreadable)"
    if not entries:
        return "0 entries (caught up)"
    return (f"{entries} entr{'y' if entries == 1 else 'ies'} not applied yet; "
            f"the tree was last complete {report['lag_seconds']} s ago")


def health_report(shadow: Path, max_lag_s: float, live: bool) -> dict[str, object]:
    """The probe's answer: each check "ok" or its problem, and `healthy` if all are ok.

    Lag is measured, not estimated: the agent must apply every entry logged when the probe
    starts within `max_lag_s` (the probe waits that long at most). With `live`, only what a
    restart can fix is checked: not lag, not a corrupt entry in the log.
    """
    try:
        report = status_report(shadow)
    except NoAgentState as err:
        return {"healthy": False, "shadow": str(shadow), "checks": {"state": str(err)}}
    checks: dict[str, str] = {"state": "ok"}
    running = report["agent_running"] and report["following"]
    checks["following"] = "ok" if running else (
        "the agent is not running" if not report["agent_running"] else "the agent is not following (one-shot play)")
    checks["device"] = "ok" if report["device_error"] is None else f"{report['device']}: {report['device_error']}"
    applied = report["applied_index"]
    assert isinstance(applied, int)
    checks["tree"] = tree_problem(shadow, applied) or "ok"
    if not live:
        target = report["log_next_index"]
        if isinstance(target, int) and running:
            behind = _wait_applied(shadow, target - 1, max_lag_s)
            checks["lag"] = "ok" if behind is None else (
                f"{behind} of the entries logged when the check started still unapplied after {max_lag_s} s")
        elif checks["device"] == "ok":
            checks["lag"] = "unknown: the agent is not following"
        stalled = report["stalled_at"]
        checks["log"] = "ok" if stalled is None else f"progress stopped at corrupt log entry {stalled}"
    return {"healthy": all(value == "ok" for value in checks.values()), "shadow": str(shadow), "checks": checks,
            "applied_index": report["applied_index"], "log_next_index": report["log_next_index"],
            "fs_uuid": report["fs_uuid"]}


def _wait_applied(shadow: Path, index: int, timeout_s: float) -> int | None:
    """None once the cursor reaches `index`; else, after `timeout_s`, how many entries it lacks."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = AgentState.parse(ShadowTree(shadow).read_agent_file(STATE_FILE))
        applied = state.applied_index if state is not None else -1
        if applied >= index:
            return None
        if time.monotonic() >= deadline:
            return index - applied
        time.sleep(HEALTH_POLL_S)


def health(argv: Sequence[str]) -> int:
    args = health_parser().parse_args(argv)
    settings = config.load(args.config)
    cacheflush.use(settings.host.coherence)
    max_lag_s = settings.agent.health_max_lag_s if args.max_lag_s is None else args.max_lag_s
    if not max_lag_s >= 0:
        health_parser().error(f"--max-lag-s {args.max_lag_s}: must be >= 0")
    answer = health_report(Path(args.shadow or settings.agent.shadow), max_lag_s, args.live)
    print(json.dumps(answer))
    return EXIT_OK if answer["healthy"] else EXIT_UNHEALTHY


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["status"]:
            return status(argv[1:])
        if argv[:1] == ["health"]:
            return health(argv[1:])
        return play(argv)
    except config.ConfigError as err:
        print(f"famfs-agent: {err}", file=sys.stderr)
        return EXIT_UNUSABLE


if __name__ == "__main__":
    from agent.entry import entry
    entry(main)  # the console script starts at agent.entry, which loads this module after taking the signals
