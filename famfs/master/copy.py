"""`famfsctl cp`: copy local files and trees into famfs, with coreutils' cp semantics.

Two passes. The plan walks every source first and checks everything that can be known before
writing: each target name against the format's path rules and the namespace, each reused
file's size, the number of free log slots and the free space. Any problem stops the copy with
every problem listed and nothing logged. Only then does the copy run (data in place, then each
entry, as every Session operation does), with progress on long copies.

Semantics, as GNU cp: DEST is a directory (copy into DEST/<name>) when it exists as one or is
written with a trailing slash (which then must exist); several sources need a directory DEST;
a directory source needs -r. Symbolic links are skipped (one summary line names how many) unless
-L follows them; a link named on the command line without -r is followed, as cp does. Special
files (fifos, sockets, devices) have no famfs form and are skipped with the same summary.
Restartable like upstream's cp: a destination file of the same size is rewritten in place, a
destination directory is reused. Empty files are logged too (upstream skips them).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from famfs import format as fmt
from famfs import logsetup, rules
from famfs.master import alloc
from famfs.master.writer import Created, MasterError, Ownership, Session, lookup
from famfs.progress import Progress
from famfs.units import format_size

log = logsetup.get_logger("famfsctl")

COPY_PIECE = 1 << 20  # read a source this much at a time: memory stays flat for any file size
PROBLEMS_SHOWN = 20  # a tree with thousands of bad names: the first ones say enough


class CopyRefused(MasterError):
    """The plan found problems; nothing was written. `problems` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:PROBLEMS_SHOWN]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__("\n".join(shown) + more + f"\nnothing copied: {len(problems)} "
                         f"problem{'s' if len(problems) != 1 else ''} found before writing")


class Interrupted(KeyboardInterrupt):
    """A SIGINT during a copy or a fill; the message says what was logged before it."""


@dataclass(frozen=True, slots=True)
class CopyRequest:
    """What `famfsctl cp` asks for. `mode`, `uid`, `gid` override the source's when set."""

    sources: tuple[Path, ...]
    dest: str  # a relpath; "" is the root
    dest_is_dir_syntax: bool = False  # DEST was written with a trailing slash: it must be a directory
    recursive: bool = False
    follow_links: bool = False  # -L
    mode: int | None = None
    uid: int = field(default_factory=os.geteuid)
    gid: int = field(default_factory=os.getegid)
    layout: alloc.InterleaveParams | None = None
    on: tuple[int, ...] = ()  # the devices to place files on (docs/devices.md); () = the policy's default


@dataclass(frozen=True, slots=True)
class PlannedDir:
    target: str
    owner: Ownership


@dataclass(frozen=True, slots=True)
class PlannedFile:
    target: str
    source: Path
    size: int
    owner: Ownership
    reuse: bool  # a file of this size is there already: rewritten in place, no new entry


@dataclass(slots=True)
class Plan:
    steps: list[PlannedDir | PlannedFile] = field(default_factory=list)
    links_skipped: int = 0
    specials_skipped: int = 0
    problems: list[str] = field(default_factory=list)
    planned_dirs: set[str] = field(default_factory=set)  # every directory target, new or reused
    existing_dirs: set[str] = field(default_factory=set)  # the reused ones: no entry
    planned_files: set[str] = field(default_factory=set)
    short_of: int = 0  # bytes of new files, when the free space cannot hold them

    @property
    def new_entries(self) -> int:
        new_files = sum(1 for step in self.steps if isinstance(step, PlannedFile) and not step.reuse)
        return new_files + len(self.planned_dirs) - len(self.existing_dirs)


@dataclass(frozen=True, slots=True)
class CopyResult:
    created: list[Created]
    files: int
    dirs: int
    bytes: int
    links_skipped: int
    specials_skipped: int

    def summary(self) -> str:
        text = f"copied {self.files} file{'s' if self.files != 1 else ''} ({format_size(self.bytes)})"
        if self.dirs:
            text += f" and {self.dirs} director{'ies' if self.dirs != 1 else 'y'}"
        return text

    def skipped(self) -> str | None:
        """One line for what has no famfs form, or None."""
        parts = []
        if self.links_skipped:
            parts.append(f"{self.links_skipped} symbolic link{'s' if self.links_skipped != 1 else ''} (-L follows them)")
        if self.specials_skipped:
            parts.append(f"{self.specials_skipped} special file{'s' if self.specials_skipped != 1 else ''} "
                         "(fifo, socket or device: famfs holds only files and directories)")
        return f"skipped {' and '.join(parts)}" if parts else None


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class _Planner:
    def __init__(self, current: Session, request: CopyRequest) -> None:
        self.current = current
        self.request = request
        self.plan = Plan()
        self.walking: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the directories being walked: -L loops

    def name_problem(self, target: str) -> str | None:
        try:
            fmt.encode_relpath(target)
            rules.name_not_reserved(target)
            rules.owner_valid(self.request.uid, self.request.gid)
        except UnicodeEncodeError:
            return "the name is not valid UTF-8"
        except fmt.FormatError as err:
            return str(err)
        return None

    def parent_ok(self, target: str, source: Path) -> bool:
        parent = os.path.dirname(target)
        if parent in self.plan.planned_dirs or lookup(self.current, parent) == "dir":
            return True
        self.plan.problems.append(f"{source}: destination directory {parent or '/'!r} does not exist")
        return False

    def add_dir(self, target: str, source: Path, info: os.stat_result) -> bool:
        problem = self.name_problem(target)
        existing = lookup(self.current, target)
        if problem is None and isinstance(existing, fmt.FileEntry):
            problem = "a file of that name exists; cannot make it a directory"
        if problem is not None:
            self.plan.problems.append(f"{source} -> {target}: {problem}")
            return False
        if not self.parent_ok(target, source):
            return False
        self.plan.steps.append(PlannedDir(target, Ownership(info.st_mode & 0o7777, self.request.uid, self.request.gid)))
        self.plan.planned_dirs.add(target)
        if existing == "dir":
            self.plan.existing_dirs.add(target)
        return True

    def add_file(self, target: str, source: Path, info: os.stat_result) -> None:
        problem = self.name_problem(target)
        existing = lookup(self.current, target)
        if problem is None and existing == "dir":
            problem = "a directory of that name exists"
        if problem is None and isinstance(existing, fmt.FileEntry) and existing.size != info.st_size:
            problem = f"exists with size {existing.size}, not {info.st_size} (famfs files never change size; rm it first)"
        if problem is None and target in self.plan.planned_files:
            problem = "named twice by this copy"
        if problem is not None:
            self.plan.problems.append(f"{source} -> {target}: {problem}")
            return
        if not self.parent_ok(target, source):
            return
        if not os.access(source, os.R_OK):
            self.plan.problems.append(f"{source}: Permission denied")
            return
        mode = self.request.mode if self.request.mode is not None else info.st_mode & 0o777
        self.plan.steps.append(PlannedFile(target, source, info.st_size, Ownership(mode, self.request.uid, self.request.gid),
                                           reuse=existing is not None))
        self.plan.planned_files.add(target)

    def add(self, source: Path, target: str, *, follow: bool) -> None:
        try:
            info = os.stat(source) if follow else os.lstat(source)
        except OSError as err:
            self.plan.problems.append(f"{source}: {err.strerror}" + (" (a dangling symbolic link)" if follow and
                                                                       os.path.islink(source) else ""))
            return
        if stat.S_ISLNK(info.st_mode):
            self.plan.links_skipped += 1
        elif stat.S_ISDIR(info.st_mode):
            if not self.request.recursive:
                self.plan.problems.append(f"{source}: is a directory (use -r)")
            else:
                self.add_tree(source, target, info)
        elif stat.S_ISREG(info.st_mode):
            self.add_file(target, source, info)
        else:
            self.plan.specials_skipped += 1

    def add_tree(self, source: Path, target: str, info: os.stat_result) -> None:
        key = (info.st_dev, info.st_ino)
        if key in self.walking:
            self.plan.problems.append(f"{source}: symbolic link loop (a directory inside itself)")
            return
        if not self.add_dir(target, source, info):
            return
        try:
            with os.scandir(source) as listing:
                names = sorted(child.name for child in listing)
        except OSError as err:
            self.plan.problems.append(f"{source}: {err.strerror}")
            return
        self.walking.add(key)
        for name in names:
            self.add(source / name, _join(target, name), follow=self.request.follow_links)
        self.walking.discard(key)


def plan_copy(current: Session, request: CopyRequest) -> Plan:
    """Every step of the copy, or every problem with it, before anything is written."""
    planner = _Planner(current, request)
    existing = lookup(current, request.dest)
    dest_is_dir = existing == "dir"
    where = request.dest or "/"
    if request.dest_is_dir_syntax and not dest_is_dir:
        why = "Not a directory" if existing is not None else "No such directory"
        planner.plan.problems.append(f"{where}/: {why} (a trailing slash names a directory)")
        return planner.plan
    if len(request.sources) > 1 and not dest_is_dir:
        planner.plan.problems.append(f"{where}: target is not a directory (copying several sources needs one)")
        return planner.plan
    for source in request.sources:
        name = Path(os.path.abspath(source)).name  # a/b/ and a/b/. are b, as for cp; a link keeps its own name
        if dest_is_dir and not name:
            planner.plan.problems.append(f"{source}: cannot copy the root directory into itself")
            continue
        target = _join(request.dest, name) if dest_is_dir else request.dest
        # A link named on the command line is followed unless copying recursively (as cp -r).
        planner.add(source, target, follow=request.follow_links or not request.recursive)
    _check_room(current, request, planner.plan)
    return planner.plan


def _check_room(current: Session, request: CopyRequest, plan: Plan) -> None:
    header = current.log.header()
    free_slots = header.slots - header.next_index
    if plan.new_entries > free_slots:
        plan.problems.append(f"{current.log.path}: the log has {free_slots} free entries, this copy needs {plan.new_entries}")
    unit = current.log.superblock.alloc_unit
    needed = sum(-(-step.size // unit) for step in plan.steps if isinstance(step, PlannedFile) and not step.reuse)
    if needed > current.namespace.units.free_units:
        plan.short_of = needed * unit
        plan.problems.append(f"{current.log.path}: {format_size(current.namespace.units.free_units * unit)} free, this copy needs "
                             f"at least {format_size(needed * unit)}")


def _blocks(path: Path, size: int, progress: Progress) -> Iterator[bytes]:
    """The bytes of a local file, COPY_PIECE at a time, exactly `size` of them."""
    with open(path, "rb") as source:
        remaining = size
        while remaining:
            block = source.read(min(COPY_PIECE, remaining))
            if not block:
                raise MasterError(f"{path}: shrank while being copied")
            remaining -= len(block)
            progress.advance(len(block))
            yield block


def copy_in(current: Session, request: CopyRequest) -> CopyResult:
    """Plan the copy, refuse it whole if the plan has problems, else copy (see the module doc)."""
    plan = plan_copy(current, request)
    if plan.short_of and len(plan.problems) == 1 and current.namespace.deleted:
        # Space alone is short and deleted files hold some: the caller may wait for reclaim.
        raise current.space_held(f"{plan.problems[0]}; nothing copied", plan.short_of)
    if plan.problems:
        raise CopyRefused(plan.problems)
    files = [step for step in plan.steps if isinstance(step, PlannedFile)]
    total = sum(step.size for step in files)
    progress = Progress("copying", total)
    created: list[Created] = []
    dirs = 0
    try:
        for step in plan.steps:
            if isinstance(step, PlannedDir):
                if step.target not in plan.existing_dirs:
                    current.mkdir(step.target, step.owner)
                    dirs += 1
            else:
                created.append(current.create(step.target, step.size, step.owner, layout=request.layout, on=request.on,
                                              fill=_blocks(step.source, step.size, progress), reuse=True))
    except KeyboardInterrupt:
        # Each entry is appended whole after its data: what was logged is what completed.
        raise Interrupted(f"{len(created)} of {len(files)} files and {dirs} directories were logged; the rest "
                          f"was not (run the same cp again: files of the same size are reused)") from None
    finally:
        progress.finish()
    result = CopyResult(created, len(files), dirs, total, plan.links_skipped, plan.specials_skipped)
    log.info("cp", device=current.log.path, files=result.files, dirs=dirs, bytes=total,
             links_skipped=plan.links_skipped, specials_skipped=plan.specials_skipped)
    return result
