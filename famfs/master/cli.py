"""famfsctl: the master-side tools (mkfs, mkdir, creat, cp, rm) and the checks (fsck, verify, status).

Each writing command names its target as `--device DEV RELPATH`, or as a path inside a mounted
famfs (famfs-fuse-mount), from which the device is found. Exit status 0 on success; otherwise
one line `famfsctl: <what>: <why>` on stderr and a nonzero status.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from famfs import config, logsetup
from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.identity import SYSTEM_UUID_FLAG_HELP, system_uuid_file
from famfs.master import alloc, fsck, prng, writer
from famfs.master.mkfs import create_image, minimum_device_size, mkfs
from famfs.shadowdir import SHADOW_XATTR, recorded_device

SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
ROOT_NAMES = ("", ".", "/")
VERIFY_PIECE = 1 << 20  # read a file this much at a time: memory stays flat for any file size


class UsageError(Exception):
    """A request the command line itself gets wrong."""


# --- argument types --------------------------------------------------------------------------


def parse_int(text: str) -> int:
    """Decimal (leading zeros allowed), or 0x/0o/0b prefixed."""
    return int(text, 10) if text.isdigit() else int(text, 0)


def parse_size(text: str) -> int:
    """Bytes, with an optional k/m/g/t suffix (powers of 1024), as upstream's get_multiplier."""
    text = text.strip()
    multiplier = SIZE_UNITS.get(text[-1:].lower(), 1)
    digits = text[:-1] if multiplier != 1 else text
    try:
        value = parse_int(digits) * multiplier
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative size: {text!r}")
    return value


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


def locate_in_mount(path: str) -> tuple[str, str]:
    """(device, relpath) of a path inside a mounted famfs.

    The mount answers getxattr(user.famfs.shadow) with its shadow dir, whose .agent/state.json
    names the device. The mount root is the topmost directory on that file system (same st_dev).
    """
    absolute = os.path.abspath(path)
    probe = absolute
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    shadow: bytes | None = None
    while True:
        try:
            shadow = os.getxattr(probe, SHADOW_XATTR)
            break
        except OSError:
            if probe == "/":
                raise UsageError(f"{path}: not inside a mounted famfs (no {SHADOW_XATTR} xattr); use --device DEV RELPATH") from None
            probe = os.path.dirname(probe)
    root = probe
    while root != "/" and os.stat(os.path.dirname(root)).st_dev == os.stat(root).st_dev:
        root = os.path.dirname(root)
    try:
        device = recorded_device(os.fsdecode(shadow))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: famfs mount at {root}, but its device is unknown: {err}") from None
    relpath = os.path.relpath(absolute, root)
    return device, "" if relpath == "." else relpath


def target(args: argparse.Namespace, path: str, *, root_ok: bool = False) -> tuple[str, str]:
    if args.device:
        return args.device, relpath_for_device(path, root_ok=root_ok)
    return locate_in_mount(path)


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
            raise UsageError(f"{args.device_path}: --size {args.size} is too small: famfs with a {args.loglen:#x}-byte "
                             f"log needs at least {minimum_device_size(args.loglen)} bytes")
        create_image(args.device_path, args.size)
    result = mkfs(args.device_path, uuid_file=uuid_file(args), log_len=args.loglen, force=args.force,
                  kill=args.kill, dev_uuid=args.dev_uuid)
    if result is None:
        print(f"{args.device_path}: superblock invalidated")
        return 0
    sb = result.superblock
    print(f"{args.device_path}: famfs made: fs uuid {sb.fs_uuid}, {sb.dev_size} bytes, "
          f"{result.header.slots} log slots, master {sb.system_uuid}")
    return 0


def owner(args: argparse.Namespace, default_mode: int) -> writer.Ownership:
    return writer.Ownership(
        mode=args.mode if args.mode is not None else default_mode,
        uid=args.uid if args.uid is not None else os.geteuid(),
        gid=args.gid if args.gid is not None else os.getegid(),
    )


def cmd_mkdir(args: argparse.Namespace) -> int:
    device, relpath = target(args, args.path)
    with writer.session(device, uuid_file(args)) as current:
        current.mkdir(relpath, owner(args, 0o755), parents=args.parents)
    return 0


def cmd_creat(args: argparse.Namespace) -> int:
    if args.seed is not None and not args.randomize:
        raise UsageError("--seed needs --randomize")
    if args.randomize and not args.seed:
        raise UsageError("--randomize needs a nonzero --seed (upstream silently skips the fill without one)")
    layout = interleave(args)
    device, relpath = target(args, args.path)
    fill = prng.pattern_blocks(args.seed, args.size) if args.randomize else None
    with writer.session(device, uuid_file(args)) as current:
        current.create(relpath, args.size, owner(args, 0o644), layout=layout, fill=fill, reuse=True)
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise UsageError("cp needs at least one source and a destination")
    *sources, dest = args.paths
    device, relpath = target(args, dest, root_ok=True)
    request = writer.CopyRequest(
        sources=tuple(Path(source) for source in sources), dest=relpath, recursive=args.recursive, mode=args.mode,
        uid=args.uid if args.uid is not None else os.geteuid(), gid=args.gid if args.gid is not None else os.getegid(),
        layout=interleave(args),
    )
    with writer.session(device, uuid_file(args)) as current:
        writer.copy_in(current, request)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    device, relpath = target(args, args.path)
    with writer.session(device, uuid_file(args)) as current:
        current.remove(relpath)
    return 0


def split(offset: int, length: int, piece: int) -> Iterator[tuple[int, int]]:
    for start in range(offset, offset + length, piece):
        yield start, min(piece, offset + length - start)


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.seed:
        raise UsageError("verify needs a nonzero --seed")
    device, relpath = target(args, args.path)
    with Device(device) as opened:
        namespace = writer.load(FamfsLog(opened))
        found = namespace.files.get(relpath)
        if found is None:
            raise writer.MasterError(f"{device}: {relpath}: no such file")
        entry = found[1]
        pieces = (opened.read(start, size) for offset, length in fmt.device_ranges(entry)
                  for start, size in split(offset, length, VERIFY_PIECE))
        mismatch = prng.first_mismatch(args.seed, pieces)
    if mismatch is not None:
        print(f"famfsctl: {device}: {relpath}: mismatch at offset {mismatch} (seed {args.seed})", file=sys.stderr)
        return 1
    print(f"{relpath}: {entry.size} bytes match seed {args.seed}")
    return 0


def checked_device(path: str) -> str:
    """fsck and status take the device itself, or a directory of a mounted famfs."""
    return locate_in_mount(path)[0] if os.path.isdir(path) else path


def cmd_fsck(args: argparse.Namespace) -> int:
    with Device(checked_device(args.device_path)) as opened:
        report = fsck.check(opened)
    print(report.render(), end="")
    return 0 if report.clean else 1


def cmd_status(args: argparse.Namespace) -> int:
    with Device(checked_device(args.device_path)) as opened:
        text, usable = fsck.status(opened, uuid_file(args))
    print(text, end="")
    return 0 if usable else 1


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--system-uuid-file", help=SYSTEM_UUID_FLAG_HELP)
    common.add_argument("--config", help=config.CONFIG_FLAG_HELP)
    common.add_argument("-v", "--verbose", action="store_true", help="log each operation (structlog, stderr)")

    ownership = argparse.ArgumentParser(add_help=False)
    ownership.add_argument("-m", "--mode", type=parse_mode)
    ownership.add_argument("-u", "--uid", type=parse_id)
    ownership.add_argument("-g", "--gid", type=parse_id)

    layout = argparse.ArgumentParser(add_help=False)
    layout.add_argument("-N", "--nstrips", type=int, help="interleave over this many strips")
    layout.add_argument("-B", "--nbuckets", type=int, help="device split into this many buckets (<= 64)")
    layout.add_argument("-C", "--chunksize", type=parse_size, help="interleave chunk (default 2m)")

    targeted = argparse.ArgumentParser(add_help=False)
    targeted.add_argument("--device", help="the device or image; else PATH is inside a mounted famfs")

    parser = argparse.ArgumentParser(prog="famfsctl", description="famfs master tools and checks")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, run: Callable[[argparse.Namespace], int], help_text: str,
            parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, parents=[common, *parents])
        sub.set_defaults(run=run)
        return sub

    sub = add("mkfs", cmd_mkfs, "make a file system on a device or image file")
    sub.add_argument("--size", type=parse_size, help="create or extend a sparse image file to this size first")
    sub.add_argument("--loglen", type=parse_size, default=fmt.DEFAULT_LOG_LEN, help="log length (power of 2, >= 8m)")
    sub.add_argument("-f", "--force", action="store_true", help="overwrite an existing famfs")
    sub.add_argument("-k", "--kill", action="store_true", help="with --force: only invalidate the superblock")
    sub.add_argument("--dev-uuid", type=uuid.UUID, help="device UUID (default: the DCD tag, else random)")
    sub.add_argument("device_path", metavar="DEVICE")

    sub = add("mkdir", cmd_mkdir, "log a directory", [ownership, targeted])
    sub.add_argument("-p", "--parents", action="store_true", help="also each missing parent; no error if it exists")
    sub.add_argument("path", metavar="PATH")

    sub = add("creat", cmd_creat, "allocate and log a file", [ownership, layout, targeted])
    sub.add_argument("-s", "--size", type=parse_size, required=True)
    sub.add_argument("-r", "--randomize", action="store_true", help="fill with upstream's pattern for --seed")
    sub.add_argument("-S", "--seed", type=int)
    sub.add_argument("path", metavar="PATH")

    sub = add("cp", cmd_cp, "copy local files (and with -r trees) into famfs", [ownership, layout, targeted])
    sub.add_argument("-r", "--recursive", action="store_true")
    sub.add_argument("paths", nargs="+", metavar="SRC... DEST")

    sub = add("rm", cmd_rm, "log the deletion of a file", [targeted])
    sub.add_argument("path", metavar="PATH")

    sub = add("verify", cmd_verify, "check a file against upstream's pattern for a seed", [targeted])
    sub.add_argument("-S", "--seed", type=int, required=True)
    sub.add_argument("path", metavar="PATH")

    sub = add("fsck", cmd_fsck, "check superblock, log, every entry and the allocation")
    sub.add_argument("device_path", metavar="DEVICE")

    sub = add("status", cmd_status, "UUIDs, sizes, log and space use, this host's role")
    sub.add_argument("device_path", metavar="DEVICE")
    return parser


def describe(err: Exception) -> str:
    """One line for an error: OSErrors made by our modules carry the whole message in strerror."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.settings = config.load(args.config)
    logsetup.configure(args.settings.host.log_format, args.settings.host.log_level if args.verbose else "warning")
    try:
        return args.run(args)
    except UsageError as err:
        parser.exit(2, f"famfsctl {args.command}: {err}\n")
    except (writer.MasterError, fmt.FormatError, fmt.EntryError, OSError, ValueError) as err:
        print(f"famfsctl: {describe(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
