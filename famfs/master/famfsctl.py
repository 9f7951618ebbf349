"""famfsctl: the master-side tools (mkfs, mkdir, creat, cp, rm) and the checks (fsck, verify, status).

Each writing command names its target as `--device DEV RELPATH`, or as a path inside a mounted
famfs (famfs-fuse-mount), from which the device is found. Options may come before, between or
after the operands, as with coreutils. Exit status: 0 success; 1 the operation failed or found a
problem (one line `famfsctl: <what>: <why>` on stderr each); 2 the command line or the config
file is wrong (nothing was done).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from famfs import cacheflush, config, devices, hosts, logsetup, mapping, service, shadowdir, units
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.identity import SYSTEM_UUID_FLAG_HELP, system_uuid_file
from famfs.master import alloc, copy, fsck, prng, reclaim, units_install, writer
from famfs.master.api import Master
from famfs.master.mkfs import create_image, default_dev_uuid, minimum_device_size, mkfs
from famfs.progress import Progress
from famfs.units import format_size
from famfs.version import add_version_flag

ROOT_NAMES = ("", ".", "/")
VERIFY_PIECE = 1 << 20  # read a file this much at a time: memory stays flat for any file size
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + 2  # SIGINT, as a shell reports it
# A command given a path inside a mount waits at most this long, once it has logged, for that
# mount to show the change (this host's following agent plays an entry within milliseconds).
MOUNT_WAIT_S = 10.0


class UsageError(Exception):
    """A request the command line itself gets wrong."""


# --- argument types --------------------------------------------------------------------------


def parse_int(text: str) -> int:
    """Decimal (leading zeros allowed), or 0x/0o/0b prefixed."""
    return int(text, 10) if text.isdigit() else int(text, 0)


def parse_size(text: str) -> int:
    """famfs.units.parse_size for argparse: upstream's k/m/g, IEC and SI suffixes, decimals."""
    try:
        return units.parse_size(text)
    except units.SizeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"mode {text} is outside 0..07777")
    return value


def parse_id(text: str) -> int:
    value = parse_int(text)
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} is not a 32-bit uid/gid")
    return value


# --- targets: --device DEV RELPATH, or a path inside a mounted famfs -------------------------------


def relpath_for_device(path: str, *, root_ok: bool = False) -> str:
    """The relpath as given (the format's rules are checked when it is used); "/" and "." name
    the root where a root makes sense."""
    if root_ok and path in ROOT_NAMES:
        return ""
    return path.rstrip("/") if path.rstrip("/") else path


def locate_in_mount(path: str) -> shadowdir.MountTarget:
    """Device, relpath and mount of a path inside a mounted famfs (shadowdir.locate_in_mount)."""
    try:
        return shadowdir.locate_in_mount(path)
    except shadowdir.MountError as err:
        raise UsageError(f"{err}; use --device DEV RELPATH") from None


def target(args: argparse.Namespace, path: str, *, root_ok: bool = False) -> tuple[str, str, shadowdir.MountTarget | None]:
    """(device, relpath, the mount the path is in: None with --device)."""
    if args.device:
        return args.device, relpath_for_device(path, root_ok=root_ok), None
    found = locate_in_mount(path)
    return found.device, found.relpath, found


def shown_in_mount(found: shadowdir.MountTarget | None, relpaths: Iterable[str], *, gone: bool = False) -> None:
    """After logging through a path in a mount: wait, at most MOUNT_WAIT_S, until that mount shows
    each of `relpaths` (with `gone`, none of them), so that `famfsctl creat MNT/f && cat MNT/f`
    never races this host's agent. Only while that agent follows the log (nothing else plays it:
    a one-shot agent's mount shows the change after its next play). A mount still behind at the
    bound is said on stderr; the exit status stays the logging's, which is done."""
    if found is None or not following(found.shadow):
        return
    deadline = time.monotonic() + MOUNT_WAIT_S
    for relpath in relpaths:
        path = os.path.join(found.root, relpath)
        try:
            mapping.awaited(functools.partial(shows, path, gone), deadline)
        except FileNotFoundError:
            print(f"famfsctl: {path}: logged, but the mount {'still shows it' if gone else 'does not show it'} "
                  f"after {MOUNT_WAIT_S:g} s: is this host's famfs-agent --follow running?", file=sys.stderr)
            return


def following(shadow: str) -> bool:
    """Whether a famfs-agent --follow runs on `shadow` (its state says so and it holds the lock)."""
    state = shadowdir.read_state(shadow)
    return state is not None and state.following and shadowdir.agent_pid(shadow) is not None


def shows(path: str, gone: bool) -> None:
    """FileNotFoundError (look again: mapping.awaited) while the mount does not show the change:
    `path` is missing, or with `gone` still there."""
    if os.path.lexists(path) == gone:
        raise FileNotFoundError(errno.ENOENT, f"{path}: {'still there' if gone else 'not there yet'}")


def uuid_file(args: argparse.Namespace) -> Path:
    return system_uuid_file(args.system_uuid_file, args.settings.host.system_uuid_file)


def interleave(args: argparse.Namespace) -> alloc.InterleaveParams | None:
    given = (args.nstrips, args.nbuckets, args.chunksize)
    if all(value is None for value in given):
        return None
    if args.nstrips is None or args.nbuckets is None:
        raise UsageError("interleaved allocation needs both --nstrips and --nbuckets (--chunksize defaults to 2m)")
    return alloc.InterleaveParams(nbuckets=args.nbuckets, nstrips=args.nstrips,
                                  chunk_size=args.chunksize if args.chunksize is not None else fmt.ALLOC_UNIT)


# --- commands --------------------------------------------------------------------------------


def cmd_mkfs(args: argparse.Namespace) -> int:
    if args.kill and not args.force:
        raise UsageError("--kill destroys a file system: it needs --force too")
    if args.size is not None:
        if os.path.exists(args.device_path) and not os.path.isfile(args.device_path):
            raise UsageError(f"{args.device_path}: --size makes or extends an image file; this is not a regular file")
        if args.size < minimum_device_size(args.loglen):
            raise UsageError(f"{args.device_path}: --size {format_size(args.size)} is too small: famfs with a "
                             f"{format_size(args.loglen)} log needs at least {format_size(minimum_device_size(args.loglen))}")
        create_image(args.device_path, args.size)
    result = mkfs(args.device_path, uuid_file=uuid_file(args), log_len=args.loglen, force=args.force,
                  kill=args.kill, dev_uuid=args.dev_uuid)
    if result is None:
        print(f"{args.device_path}: superblock invalidated")
        return 0
    sb = result.superblock
    print(f"{args.device_path}: famfs made: fs uuid {sb.fs_uuid}, {format_size(sb.dev_size)}, "
          f"{result.header.slots} log slots, master {sb.system_uuid}")
    return 0


def owner(args: argparse.Namespace, default_mode: int) -> writer.Ownership:
    return writer.Ownership(
        mode=args.mode if args.mode is not None else default_mode,
        uid=args.uid if args.uid is not None else os.geteuid(),
        gid=args.gid if args.gid is not None else os.getegid(),
    )


def cmd_mkdir(args: argparse.Namespace) -> int:
    device, relpath, found = target(args, args.path)
    mode = owner(args, 0o755)
    Master(device, system_uuid_file=uuid_file(args)).mkdir(relpath, mode.mode, mode.uid, mode.gid, parents=args.parents)
    shown_in_mount(found, [relpath])
    return 0


def cmd_creat(args: argparse.Namespace) -> int:
    if args.size == 0:
        raise UsageError("-s 0: a famfs file created this way needs a size above 0 (cp copies empty files)")
    if args.seed is not None and not args.randomize:
        raise UsageError("--seed needs --randomize")
    if args.randomize and not args.seed:
        raise UsageError("--randomize needs a nonzero --seed (upstream silently skips the fill without one)")
    layout = interleave(args)
    device, relpath, found = target(args, args.path)
    progress = Progress("filling", args.size)
    fill = counted(prng.pattern_blocks(args.seed, args.size), progress) if args.randomize else None

    def attempt() -> None:
        with writer.session(device, uuid_file(args), device_paths=args.settings.host.devices) as current:
            current.create(relpath, args.size, owner(args, 0o644), layout=layout, fill=fill, reuse=True,
                           on=[current.device_index(spec) for spec in args.on_device or ()])

    try:
        reclaim.wait_for_space(device, attempt, args.settings.master.reclaim_wait, args.settings.master.reclaim_poll)
    except KeyboardInterrupt:
        raise copy.Interrupted(f"{relpath}: {'in the log' if logged(device, relpath) else 'nothing was logged'}") from None
    finally:
        progress.finish()
    shown_in_mount(found, [relpath])
    return 0


def logged(device: str, relpath: str) -> bool:
    """Whether the log holds a file `relpath` now (after an interrupted creat: it may, or not)."""
    with Device(device) as opened:
        return relpath in writer.load(FamfsLog(opened)).files


def counted(blocks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for block in blocks:
        progress.advance(len(block))
        yield block


def cmd_cp(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise UsageError(f"missing destination file operand after {args.paths[0]!r}" if args.paths else
                         "missing file operand")
    *sources, dest = args.paths
    device, relpath, found = target(args, dest, root_ok=True)
    request = copy.CopyRequest(
        sources=tuple(Path(source) for source in sources), dest=relpath,
        dest_is_dir_syntax=dest.endswith("/") and relpath != "", recursive=args.recursive,
        follow_links=args.dereference, mode=args.mode,
        uid=args.uid if args.uid is not None else os.geteuid(), gid=args.gid if args.gid is not None else os.getegid(),
        layout=interleave(args),
    )

    def attempt() -> copy.CopyResult:
        with writer.session(device, uuid_file(args), device_paths=args.settings.host.devices) as current:
            on = [current.device_index(spec) for spec in args.on_device or ()]
            return copy.copy_in(current, dataclasses.replace(request, on=tuple(on)))

    result = reclaim.wait_for_space(device, attempt, args.settings.master.reclaim_wait, args.settings.master.reclaim_poll)
    shown_in_mount(found, [relpath, *(created.relpath for created in result.created)])
    print(f"{result.summary()} into {device}:{relpath or '/'}")
    if (skipped := result.skipped()) is not None:
        print(f"famfsctl cp: {skipped}", file=sys.stderr)
    return 0


def cmd_add_device(args: argparse.Namespace) -> int:
    if not args.device:
        raise UsageError("add-device needs --device PRIMARY: the file system's primary device or image")
    if args.size is not None:
        if os.path.exists(args.new_device) and not os.path.isfile(args.new_device):
            raise UsageError(f"{args.new_device}: --size makes or extends an image file; this is not a regular file")
        create_image(args.new_device, args.size)
    with writer.session(args.device, uuid_file(args), device_paths=args.settings.host.devices) as current:
        index = current.add_device(args.new_device, args.dev_uuid or default_dev_uuid(args.new_device), force=args.force)
    print(f"{args.new_device}: device {index} of {args.device}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    targets = [target(args, path) for path in args.paths]
    devices = {device for device, _, _ in targets}
    if len(devices) > 1:
        raise UsageError(f"the paths are on different famfs devices ({', '.join(sorted(devices))}): one at a time")
    device = targets[0][0]
    Master(device, system_uuid_file=uuid_file(args)).remove(*(relpath for _, relpath, _ in targets))
    shown_in_mount(targets[0][2], [relpath for _, relpath, _ in targets], gone=True)  # one namespace: one mount to ask
    return 0


def split(offset: int, length: int, piece: int) -> Iterator[tuple[int, int]]:
    for start in range(offset, offset + length, piece):
        yield start, min(piece, offset + length - start)


def cmd_verify(args: argparse.Namespace) -> int:
    """With --device, the file's bytes on the device; else the file PATH names (through the
    mount, for a path in a mounted famfs): what the user named is what is read."""
    if not args.seed:
        raise UsageError("verify needs a nonzero --seed")
    if args.device:
        relpath = relpath_for_device(args.path)
        with Device(args.device) as opened, contextlib.ExitStack() as stack:
            famfs_log = FamfsLog(opened)
            namespace = writer.load(famfs_log)
            found = namespace.files.get(relpath)
            if found is None:
                raise writer.MasterError(f"{args.device}: {relpath}: no such file")
            size = found[1].size
            on = {0: opened}
            rows = devices.namespace_rows(namespace)
            for row in devices.resolve(famfs_log.superblock.fs_uuid, rows, args.settings.host.devices)[1:]:
                if row.path is not None:
                    on[row.index] = stack.enter_context(Device(row.path))
            for devindex in {extent.devindex for extent in found[1].all_extents()} - set(on):
                raise writer.MasterError(f"{args.device}: {relpath}: device {devindex} ({rows[devindex].uuid}) is not "
                                         f"found on this host (list its path in [host] devices)")
            pieces = (on[devindex].read(start, length) for devindex, offset, extent in fmt.device_pieces(found[1])
                      for start, length in split(offset, extent, VERIFY_PIECE))
            mismatch = check_pattern(args.seed, size, pieces)
        name = f"{args.device}: {relpath}"
    else:
        with open(args.path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            mismatch = check_pattern(args.seed, size, iter(lambda: source.read(VERIFY_PIECE), b""))
        name = args.path
    if mismatch is not None:
        print(f"famfsctl: {name}: mismatch at offset {mismatch} (seed {args.seed})", file=sys.stderr)
        return EXIT_FAILED
    print(f"{name}: {format_size(size)} ({size} bytes) match seed {args.seed}")
    return 0


def check_pattern(seed: int, size: int, pieces: Iterator[bytes]) -> int | None:
    progress = Progress("verifying", size)
    try:
        return prng.first_mismatch(seed, counted(pieces, progress))
    finally:
        progress.finish()


def checked_device(args: argparse.Namespace) -> str:
    """fsck and status take the device itself (DEVICE or --device), or a directory of a mounted famfs."""
    if (args.device is None) == (args.device_path is None):
        raise UsageError("give the device (or a directory of a mounted famfs) once: DEVICE or --device DEVICE")
    path = args.device or args.device_path
    return locate_in_mount(path).device if os.path.isdir(path) else path


def cmd_fsck(args: argparse.Namespace) -> int:
    with Device(checked_device(args)) as opened:
        report = fsck.check(opened, args.settings.host.devices)
    print(report.render(), end="")
    return 0 if report.clean else 1


def cmd_status(args: argparse.Namespace) -> int:
    with Device(checked_device(args)) as opened:
        text, usable = fsck.status(opened, uuid_file(args), args.settings.host.devices)
    print(text, end="")
    return 0 if usable else 1


def cmd_compact(args: argparse.Namespace) -> int:
    with writer.session(checked_device(args), uuid_file(args)) as current:
        done = current.compact()
    print(f"{current.log.path}: log compacted to epoch {done.epoch}: {done.entries_before} -> {done.entries_after} "
          f"entries ({done.held} held by deleted files not yet reclaimed), {done.seconds * 1000:.1f} ms")
    return 0


def cmd_reclaimd(args: argparse.Namespace) -> int:
    """The reclaim coordinator in the foreground until SIGTERM or SIGINT (docs/reclaim.md)."""
    settings = args.settings.master
    logsetup.configure(args.settings.host.log_format, args.settings.host.log_level)
    stop = threading.Event()
    service.stop_on_signals(stop)  # (not stop.set() in a handler: a deadlock, see there)
    device = args.device_path or args.settings.agent.device
    if not device:
        raise UsageError("no device: give DEVICE, or set [agent] device in the config file")
    try:
        coordinator = reclaim.Coordinator(device, uuid_file(args), settings, stop=stop)
    except reclaim.CoordinatorError as err:
        print(f"famfsctl reclaimd: {err}", file=sys.stderr)
        return EXIT_FAILED
    server = None
    try:
        address = settings.metrics_address if args.metrics_address is None else args.metrics_address
        if address:
            from famfs import metrics  # noqa: PLC0415 (prometheus_client only when metrics are on)
            from famfs.master.reclaim_metrics import ReclaimCollector  # noqa: PLC0415
            try:
                server = metrics.MetricsServer(address, ReclaimCollector(coordinator))
            except metrics.MetricsError as err:
                raise UsageError(str(err)) from None
        coordinator.run()
    except reclaim.CoordinatorError as err:
        print(f"famfsctl reclaimd: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if server is not None:
            server.close()
        coordinator.close()
    return 0


def cmd_host_list(args: argparse.Namespace) -> int:
    with Device(args.device_path) as opened:
        famfs_log = FamfsLog(opened)
        fenced = set(writer.load(famfs_log).fenced)  # the log replayed once
        header, table = famfs_log.header(), list(hosts.read_table(opened.fresh(*hosts.TABLE_SPAN)))
        moving: dict[int, bool] = {}
        if args.sample > 0:  # the table read again, the log not
            time.sleep(args.sample)
            before = {found.slot: found for found in table}
            moving = {found.slot: found != before.get(found.slot) for found in hosts.read_table(opened.fresh(*hosts.TABLE_SPAN))
                      if isinstance(found, hosts.HostRecord)}
    print(f"log: {header.next_index} entries")
    print("slot  state    system uuid                           incarnation          hostname          "
          "applied  lag  pin floor  heartbeat  serve window" + ("  renewing" if args.sample > 0 else ""))
    for found in table:
        if isinstance(found, hosts.DamagedSlot):
            print(f"{found.slot:<5} damaged  ({found.reason}: blocks reclaim until famfsctl host fence --slot {found.slot})")
            continue
        pin = "-" if found.pin_floor == hosts.NO_PIN else str(found.pin_floor)
        line = (f"{found.slot:<5} {fsck.host_state(found, fenced):<8} {found.system_uuid!s:<37} {found.incarnation:<20} "
                f"{found.hostname[:17]:<17} {found.applied:>7} {max(0, header.next_index - found.applied):>4} "
                f"{pin:>10} {found.heartbeat:>10} {found.serve_window_ns / 1e9:>11g}s")
        if args.sample > 0:
            line += f"  {'yes' if moving.get(found.slot) else 'no'}"
        print(line)
    if not table:
        print("(no host has joined)")
    return 0


def cmd_host_fence(args: argparse.Namespace) -> int:
    if (args.host_uuid is None) == (args.slot is None):
        raise UsageError("name the host once: its system UUID, or --slot N")
    with writer.session(args.device_path, uuid_file(args)) as current:
        table = list(hosts.read_table(current.device.fresh(*hosts.TABLE_SPAN)))
        if args.slot is not None:
            found = next((item for item in table if item.slot == args.slot), None)
            if found is None:
                raise writer.MasterError(f"{args.device_path}: host slot {args.slot} is empty")
        else:
            found = next((item for item in table if isinstance(item, hosts.HostRecord)
                          and item.system_uuid == args.host_uuid), None)
            if found is None:
                raise writer.MasterError(f"{args.device_path}: no host record has system UUID {args.host_uuid}")
        if isinstance(found, hosts.DamagedSlot):
            crc = reclaim.damage_crcs(current.device.map, [found])[found.slot]
            entry = fmt.FenceEntry(system_uuid=uuid.UUID(int=0), incarnation=0, slot=found.slot,
                                   reason=fmt.FenceReason.RECORD_LOST, heartbeat=crc, applied=0)
            name = f"damaged slot {found.slot}"
        else:
            entry = fmt.FenceEntry(system_uuid=found.system_uuid, incarnation=found.incarnation, slot=found.slot,
                                   reason=fmt.FenceReason.OPERATOR, heartbeat=found.heartbeat, applied=found.applied)
            name = f"{reclaim.host_name(found)}, incarnation {found.incarnation}"
        index = current.fence(entry)
    print(f"{name}: {'already fenced' if index is None else f'fenced (log entry {index})'}")
    return 0


def cmd_install_units(args: argparse.Namespace) -> int:
    written = units_install.install(Path(args.unit_dir), Path(args.bindir) if args.bindir else None)
    for path in written:
        print(f"installed {path}")
    print("next: put the host's settings in /etc/famfs/famfs-agent.toml (config/ has examples), then "
          "systemctl daemon-reload && systemctl enable --now famfs-agent famfs-fuse-mount (and on the master, "
          "for reclaim: famfs-reclaimd)")
    return 0


# --- parser ----------------------------------------------------------------------------------


OPERAND_MARK = "\0"  # no command-line argument holds a NUL: a placeholder can never be a real one


def _unmark(value: object, operands: dict[str, str]) -> object:
    if isinstance(value, str):
        return operands.get(value, value)
    if isinstance(value, list):
        return [_unmark(item, operands) for item in value]
    return value


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: options may come between operands (`cp SRC --device DEV DEST`),
    as coreutils allow, and `--` ends the options (`mkdir -- -dash`), as everywhere. argparse's
    intermixed parsing calls parse_known_args itself: the flag keeps that inner call the plain
    one. It also mishandles `--`, so each operand after it is handed over as a placeholder no
    option can look like, and put back in the result."""

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing or self._subparsers is not None:  # (a command with actions: `host list`)
            return super().parse_known_args(args, namespace)
        given = list(sys.argv[1:] if args is None else args)
        operands: dict[str, str] = {}
        if "--" in given:
            end = given.index("--")
            for operand in given[end + 1:]:
                operands[f"{OPERAND_MARK}{len(operands)}"] = operand
            given = given[:end] + list(operands)
        self._intermixing = True
        try:
            parsed, rest = self.parse_known_intermixed_args(given, namespace)
        finally:
            self._intermixing = False
        for name, value in vars(parsed).items():
            setattr(parsed, name, _unmark(value, operands))
        return parsed, [str(_unmark(item, operands)) for item in rest]


def add_common(parser: argparse.ArgumentParser, default: object) -> None:
    """The options every command takes, before the command name or after it. After it they
    default to SUPPRESS, so they do not undo the same option given before it."""
    parser.add_argument("--system-uuid-file", default=default, help=SYSTEM_UUID_FLAG_HELP)
    parser.add_argument("--config", default=default, help=config.CONFIG_FLAG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", default=default if default is argparse.SUPPRESS else False,
                        help="log each operation, and progress when stderr is not a terminal (structlog, stderr)")


SIZE_HELP = "4096, 0x1000, 100m, 1.5g, 2GiB (1024-based) or 1GB (1000-based)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common(common, argparse.SUPPRESS)

    ownership = argparse.ArgumentParser(add_help=False)
    ownership.add_argument("-m", "--mode", type=parse_mode, help="octal mode (default: 0755 directories, 0644 files; "
                           "cp: the source's)")
    ownership.add_argument("-u", "--uid", type=parse_id, help="owner (default: yours)")
    ownership.add_argument("-g", "--gid", type=parse_id, help="group (default: yours)")

    layout = argparse.ArgumentParser(add_help=False)
    layout.add_argument("-N", "--nstrips", type=int, help="interleave over this many strips")
    layout.add_argument("-B", "--nbuckets", type=int, help="device split into this many buckets (<= 64)")
    layout.add_argument("-C", "--chunksize", type=parse_size, help=f"interleave chunk (default 2m): {SIZE_HELP}")
    layout.add_argument("--on-device", action="append", metavar="INDEX|UUID",
                        help="place the file on this device of the file system (repeat for several; default: "
                             "contiguous on the first with room, interleaved over all; docs/devices.md)")

    targeted = argparse.ArgumentParser(add_help=False)
    targeted.add_argument("--device", help="the device or image; else PATH is inside a mounted famfs")

    parser = argparse.ArgumentParser(
        prog="famfsctl", description="famfs master tools and checks. Exit status: 0 done, 1 failed (one line on "
        "stderr each problem), 2 bad command line or config file. `famfsctl COMMAND --help` for each command.")
    add_version_flag(parser)
    add_common(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)

    def add(name: str, run: Callable[[argparse.Namespace], int], help_text: str,
            parents: Sequence[argparse.ArgumentParser] = (), usage: str | None = None) -> argparse.ArgumentParser:
        # (typeshed types `parents` by the subparser class; any ArgumentParser is what argparse takes)
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common, *parents],  # type: ignore[list-item]
                                  usage=usage)
        sub.set_defaults(run=run)
        return sub

    sub = add("mkfs", cmd_mkfs, "make a file system on a device or image file; this host becomes the master")
    sub.add_argument("--size", type=parse_size, help=f"create or extend a sparse image file to this size first: {SIZE_HELP}")
    sub.add_argument("--loglen", type=parse_size, default=fmt.DEFAULT_LOG_LEN,
                     help=f"log length, a power of 2 of at least 8m (default {format_size(fmt.DEFAULT_LOG_LEN)})")
    sub.add_argument("-f", "--force", action="store_true", help="overwrite an existing famfs")
    sub.add_argument("-k", "--kill", action="store_true", help="with --force: only invalidate the superblock")
    sub.add_argument("--dev-uuid", type=uuid.UUID, help="device UUID (default: the DCD tag, else random)")
    sub.add_argument("device_path", metavar="DEVICE", help="devdax, pmem or image file")

    sub = add("mkdir", cmd_mkdir, "log a directory", [ownership, targeted])
    sub.add_argument("-p", "--parents", action="store_true", help="also each missing parent; no error if it exists")
    sub.add_argument("path", metavar="PATH", help="RELPATH with --device, else a path in a mounted famfs")

    sub = add("creat", cmd_creat, "allocate and log a file of a fixed size", [ownership, layout, targeted])
    sub.add_argument("-s", "--size", type=parse_size, required=True, help=f"the file's size, above 0: {SIZE_HELP}")
    sub.add_argument("-r", "--randomize", action="store_true", help="fill with upstream's pattern for --seed")
    sub.add_argument("-S", "--seed", type=int, help="the pattern's seed (nonzero), for --randomize")
    sub.add_argument("path", metavar="PATH", help="RELPATH with --device, else a path in a mounted famfs")

    sub = add("cp", cmd_cp, "copy local files (and with -r trees) into famfs: every name, size and the log's free "
              "entries are checked before anything is written", [ownership, layout, targeted],
              usage="%(prog)s [options] [-r] [-L] SRC... DEST")
    sub.add_argument("-r", "-R", "--recursive", action="store_true", help="copy directories and their contents")
    sub.add_argument("-L", "--dereference", action="store_true",
                     help="follow symbolic links (else they are skipped, and counted in one line)")
    sub.add_argument("paths", nargs="*", metavar="SRC",
                     help="the sources, then DEST: a directory (copy into it) when it exists as one; a trailing "
                          "slash says it must")

    sub = add("add-device", cmd_add_device, "add a device to the file system on --device: write its secondary "
              "superblock, log ADD_DAXDEV (docs/devices.md)", [targeted])
    sub.add_argument("--size", type=parse_size, help=f"create or extend a sparse image file to this size first: {SIZE_HELP}")
    sub.add_argument("-f", "--force", action="store_true", help="overwrite a famfs superblock found on it")
    sub.add_argument("--dev-uuid", type=uuid.UUID, help="its device UUID (default: the DCD tag, else random)")
    sub.add_argument("new_device", metavar="NEWDEV", help="devdax, pmem or image file to add")

    sub = add("rm", cmd_rm, "log the deletion of files (all are checked first; none is removed if one cannot be)",
              [targeted])
    sub.add_argument("paths", nargs="+", metavar="PATH", help="RELPATH with --device, else a path in a mounted famfs")

    sub = add("verify", cmd_verify, "check a file against upstream's pattern for a seed; reads PATH itself "
              "(through the mount), or with --device the file's bytes on the device", [targeted])
    sub.add_argument("-S", "--seed", type=int, required=True, help="the seed the file was filled with")
    sub.add_argument("path", metavar="PATH", help="a file (in a mounted famfs), or RELPATH with --device")

    for name, run, text in (("fsck", cmd_fsck, "check superblock, log, every entry and the allocation"),
                            ("status", cmd_status, "UUIDs, sizes, log and space use, this host's role")):
        sub = add(name, run, text, [targeted])
        sub.add_argument("device_path", metavar="DEVICE", nargs="?",
                         help="the device or image, or a directory of a mounted famfs (or give --device)")

    sub = add("compact", cmd_compact, "replace the log by one holding only the live namespace (docs/reclaim.md): "
              "every host follows; a kill at any instant leaves the old log or the new one", [targeted])
    sub.add_argument("device_path", metavar="DEVICE", nargs="?",
                     help="the device or image, or a directory of a mounted famfs (or give --device)")

    sub = add("reclaimd", cmd_reclaimd, "run the reclaim coordinator in the foreground: give deleted files' space back "
              "once every host is past them (docs/reclaim.md); SIGTERM stops it")
    sub.add_argument("--metrics-address", help="HOST:PORT to serve Prometheus metrics on (':PORT' is loopback, '0.0.0.0:PORT' every interface; '' = off; default: "
                     "[master] metrics_address)")
    sub.add_argument("device_path", metavar="DEVICE", nargs="?", help="the device or image (default: [agent] device)")

    sub = add("host", lambda args: 0, "the host table: list the hosts, fence one")
    hosts_commands = sub.add_subparsers(dest="host_command", required=True, metavar="ACTION", parser_class=CommandParser)
    listing = hosts_commands.add_parser("list", help="every host record: state, incarnation, applied and lag, pin "
                                        "floor, heartbeat counter", parents=[common])  # type: ignore[list-item]
    listing.set_defaults(run=cmd_host_list)
    listing.add_argument("--sample", type=float, default=0.0, metavar="SECONDS",
                         help="read the table twice this far apart and say which records are renewing")
    listing.add_argument("device_path", metavar="DEVICE", help="the device or image")
    fence = hosts_commands.add_parser("fence", help="log a FENCE: the master stops waiting for this host (assert it "
                                      "is gone, or let it rejoin with a fresh play)", parents=[common])  # type: ignore[list-item]
    fence.set_defaults(run=cmd_host_fence)
    fence.add_argument("--slot", type=int, help="the host's slot (the only way to name a damaged slot)")
    fence.add_argument("device_path", metavar="DEVICE", help="the device or image")
    fence.add_argument("host_uuid", metavar="UUID", nargs="?", type=uuid.UUID, help="the host's system UUID")

    sub = add("install-units", cmd_install_units, "install the systemd units of famfs-agent, famfs-fuse-mount and "
              "the reclaim coordinator (famfs-reclaimd), pointing at this installation's programs")
    sub.add_argument("--unit-dir", default=str(units_install.UNIT_DIR), help=f"default {units_install.UNIT_DIR}")
    sub.add_argument("--bindir", help=f"where the programs are (default: {units_install.scripts_dir()})")
    return parser


def describe(err: Exception) -> str:
    """One line for an error: OSErrors made by our modules carry the whole message in strerror."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.settings = config.load(args.config)
        cacheflush.use(args.settings.host.coherence)
    except config.ConfigError as err:
        print(f"famfsctl: {err}", file=sys.stderr)
        return EXIT_USAGE
    logsetup.configure(args.settings.host.log_format, args.settings.host.log_level if args.verbose else "warning")
    try:
        return args.run(args)
    except UsageError as err:
        print(f"famfsctl {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (writer.MasterError, fmt.FormatError, fmt.EntryError, OSError, ValueError) as err:
        print("\n".join(f"famfsctl: {line}" for line in describe(err).splitlines()), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as err:
        print(f"famfsctl {args.command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
