"""One rule book, three policies: the writer refuses, fsck lists, the follower rejects or skips.

The named regressions are the cases where the three used to disagree (issue: one rule book);
the property test drives random sequences of master operations and raw entries through all
three and checks they agree on every entry, and that the follower's tree is the rule book's
namespace.
"""

from __future__ import annotations

import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.follower import Follower
from famfs import format as fmt
from famfs import rules
from famfs.config import AgentSettings
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master import alloc, fsck, writer
from famfs.master.mkfs import create_image, mkfs
from famfs.shadowyaml import emit_file_yaml
from tests.agent_util import (
    append,
    append_raw,
    dir_attrs,
    file_entry,
    make_device,
    mkdir_entry,
    run_agent,
)
from tests.famfsctl_util import digest, famfsctl

# --- the five cases that used to drift ---------------------------------------------------------


@pytest.mark.parametrize(("command", "rule"), [
    (["mkdir", ".meta"], "name_not_reserved"),
    (["mkdir", "-u", "4294967295", "d"], "owner_valid"),
    (["mkdir", "-g", "4294967295", "d"], "owner_valid"),
    (["creat", "-s", "1k", ".meta/f"], "name_not_reserved"),
])
def test_the_writer_refuses_what_every_client_would_reject(tmp_path: Path, system_uuid_file: Path,
                                                          command: list[str], rule: str) -> None:
    image = make_device(tmp_path, system_uuid_file)
    before = digest(image)
    done = famfsctl(command[0], "--device", image, *command[1:], check=False)
    assert done.returncode == 1 and f"(rule {rule})" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert digest(image) == before
    assert famfsctl("fsck", image).stdout.endswith("fsck: clean\n")


@pytest.mark.parametrize(("entry", "rule"), [
    (fmt.MkdirEntry(".meta", 0o755, 0, 0), "name_not_reserved"),
    (fmt.MkdirEntry("d", 0o755, 0xFFFFFFFF, 0), "owner_valid"),
    (fmt.AddDaxdevEntry(dev_size=1 << 30, dev_uuid=uuid.UUID(int=7), dev_index=3), "daxdev_dense"),
    (fmt.AddDaxdevEntry(dev_size=0, dev_uuid=uuid.UUID(int=7), dev_index=1), "daxdev_sized"),
    (file_entry("over", 0), "space_unclaimed"),  # unit 0 is d/live's
])
def test_fsck_lists_exactly_what_the_follower_rejects(tmp_path: Path, system_uuid_file: Path,
                                                      entry: fmt.Entry, rule: str) -> None:
    image = make_device(tmp_path, system_uuid_file)
    append(image, [mkdir_entry("d"), file_entry("d/live", 0)])
    append_raw(image, [fmt.encode_entry(entry, 2)])
    report = famfsctl("fsck", image, check=False)
    assert report.returncode == 1 and "entry 2" in report.stdout and f"rule {rule}" in report.stdout, report.stdout
    played = run_agent("--shadow", tmp_path / "shadow", "--no-progress", image)
    assert played.returncode == 1 and "log entry 2: " in played.stderr and f"(rule {rule})" in played.stderr, played.stderr
    live = tmp_path / "shadow" / "root" / "d" / "live"
    assert live.read_bytes() == emit_file_yaml(file_entry("d/live", 0))
    assert not (tmp_path / "shadow" / "root" / "over").exists()


def test_recreating_a_deleted_path_warns_and_fsck_says_upstream_sees_the_old_file(
        tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    famfsctl("creat", "--device", image, "-s", "1m", "f")
    famfsctl("rm", "--device", image, "f")
    again = famfsctl("creat", "--device", image, "-s", "2m", "f")
    assert "recreated_deleted_path" in again.stdout + again.stderr
    report = famfsctl("fsck", image).stdout
    assert "'f' was deleted and made again: shadowed for upstream readers" in report
    assert report.endswith("fsck: clean\n")  # a warning: our own readers show the new file


# --- the property: three policies agree ---------------------------------------------------------

NAMES = ("a", "b", ".meta")
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map("/".join)
IDS = st.sampled_from([0, 1000, 0xFFFFFFFF])


@dataclass(frozen=True)
class Op:
    """One step: a master operation through the writer, or a raw entry appended as is."""

    kind: str  # mkdir | creat | rm | rmdir | chmod | raw_file | raw_mkdir | raw_delete | raw_rmdir | raw_setattr | raw_daxdev
    path: str = "a"
    uid: int = 0
    number: int = 0  # units (creat, raw_file), first unit (raw_file), target (raw_delete, raw_rmdir, raw_setattr),
    # index (raw_daxdev)
    extra: int = 1


OPS = st.one_of(
    st.builds(Op, st.just("mkdir"), PATHS, IDS),
    st.builds(Op, st.just("creat"), PATHS, IDS, st.integers(0, 3)),
    st.builds(Op, st.just("rm"), PATHS),
    st.builds(Op, st.just("rmdir"), PATHS),
    st.builds(Op, st.just("chmod"), PATHS, IDS),
    st.builds(Op, st.just("raw_setattr"), PATHS, IDS, st.integers(0, 12)),
    st.builds(Op, st.just("raw_file"), PATHS, IDS, st.integers(0, 6), st.integers(1, 2)),
    st.builds(Op, st.just("raw_mkdir"), PATHS, IDS),
    st.builds(Op, st.just("raw_delete"), PATHS, st.just(0), st.integers(0, 12)),
    st.builds(Op, st.just("raw_rmdir"), PATHS, st.just(0), st.integers(0, 12)),
    st.builds(Op, st.just("raw_daxdev"), st.just(""), st.just(0), st.integers(0, 3), st.integers(0, 1)),
)
OWNER = writer.Ownership(0o755, 0, 0)


def chmod_to(uid: int) -> writer.Ownership:
    return writer.Ownership(0o1750, uid, uid)
AU = fmt.ALLOC_UNIT


def run_op(image: Path, uuid_file: Path, op: Op) -> tuple[int, bool] | None:
    """Apply `op`; (its log index, whether the writer accepted it), or None if nothing was
    logged. An operation the writer refuses is then logged raw, so the follower meets it too."""
    with Device(image) as device:
        index = FamfsLog(device).next_index()
    if op.kind in ("mkdir", "creat", "rm", "rmdir", "chmod"):
        try:
            with writer.session(str(image), uuid_file) as session:
                owner = writer.Ownership(0o755, op.uid, op.uid)
                if op.kind == "chmod":
                    if session.setattr(op.path, chmod_to(op.uid)) is None:
                        return None  # it had that mode and owner: nothing logged
                elif op.kind == "mkdir":
                    session.mkdir(op.path, owner)
                elif op.kind == "creat":
                    session.create(op.path, op.number * AU, owner)
                elif op.kind == "rmdir":
                    session.rmdir(op.path)
                else:
                    session.remove(op.path)
            return index, True
        except writer.MasterError:
            pass
        with Device(image) as device:
            namespace = rules.replay(FamfsLog(device), lambda _: None)
        if op.kind == "mkdir":
            refused: fmt.Entry = fmt.MkdirEntry(op.path, 0o755, op.uid, op.uid)
        elif op.kind == "creat":
            extent = alloc.allocate_contiguous(namespace.units, op.number * AU)
            refused = fmt.FileEntry(op.path, op.number * AU, 0o644, op.uid, op.uid, extents=(extent,))
        elif op.kind == "rmdir":
            refused = fmt.RmdirEntry(op.path, namespace.dirs.get(op.path, 0))
        elif op.kind == "chmod":
            made = namespace.files[op.path][0] if op.path in namespace.files else namespace.dirs.get(op.path, 0)
            mode = chmod_to(op.uid)
            refused = fmt.SetattrEntry(op.path, max(made, 0), mode.mode, mode.uid, mode.gid)
        else:
            live = namespace.files.get(op.path)
            refused = fmt.DeleteEntry(op.path, live[0] if live else 0)
        append_raw(image, [fmt.encode_entry(refused, index)])
        return index, False
    if op.kind == "raw_file":
        start = fmt.data_start(fmt.DEFAULT_LOG_LEN) + op.number * AU
        raw: fmt.Entry = fmt.FileEntry(op.path, op.extra * AU, 0o644, op.uid, op.uid,
                                       extents=(fmt.Extent(start, op.extra * AU),))
    elif op.kind == "raw_mkdir":
        raw = fmt.MkdirEntry(op.path, 0o755, op.uid, op.uid)
    elif op.kind == "raw_delete":
        raw = fmt.DeleteEntry(op.path, op.number)
    elif op.kind == "raw_rmdir":
        raw = fmt.RmdirEntry(op.path, op.number)
    elif op.kind == "raw_setattr":
        raw = fmt.SetattrEntry(op.path, op.number, 0o2750, op.uid, op.uid)
    else:
        raw = fmt.AddDaxdevEntry(dev_size=op.extra << 30, dev_uuid=uuid.UUID(int=op.number % 2 + 1), dev_index=op.number)
    append_raw(image, [fmt.encode_entry(raw, index)])
    return None


def follower_skips(image: Path, shadow: Path, uuid_file: Path) -> set[int]:
    """Play the log once, in process; the indexes the follower rejected or skipped."""
    with structlog.testing.capture_logs() as events:
        Follower(str(image), str(shadow), AgentSettings(), uuid_file, follow=False).run()
    return {event["index"] for event in events if event["event"] in ("entry_rejected", "duplicate_path")}


def tree_of(root: Path) -> dict[str, object]:
    tree: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            relpath = str(path.relative_to(root))
            if relpath == ".meta" or relpath.startswith(".meta/"):
                continue
            info = path.lstat()
            # A directory: the logged mode and owner the agent records on it (trusted.famfs.dir).
            tree[relpath] = dir_attrs(path) if stat.S_ISDIR(info.st_mode) else path.read_bytes()
    return tree


@settings(max_examples=int(os.environ.get("FAMFS_RULEBOOK_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=12))
def test_writer_fsck_and_follower_apply_one_rule_book(tmp_path_factory: pytest.TempPathFactory, ops: list[Op]) -> None:
    work = tmp_path_factory.mktemp("rulebook")
    uuid_file = work / "system_uuid"
    image = work / "dev.img"
    create_image(image, 4 << 30)
    mkfs(str(image), uuid_file=uuid_file)
    verdicts = [found for op in ops if (found := run_op(image, uuid_file, op)) is not None]

    problems: list[rules.Problem] = []
    with Device(image) as device:
        famfs_log = FamfsLog(device)
        namespace = rules.replay(famfs_log, problems.append)
        report = fsck.check(device)
        made_dirs = {path: famfs_log.entry(index) for path, index in namespace.dirs.items() if path}
    flagged = {problem.index for problem in problems}
    # the writer accepts an operation <=> its entry passes the rules
    for index, accepted in verdicts:
        assert accepted == (index not in flagged), (index, ops)
    # fsck reports a problem <=> the follower rejects or skips an entry
    assert report.problems == len(flagged), report.render()
    assert follower_skips(image, work / "shadow", uuid_file) == flagged
    # the follower's tree is the rule book's namespace
    made_dirs |= namespace.dir_attrs  # as SETATTRs left them
    expected: dict[str, object] = {path: (entry.mode & 0o7777, entry.uid, entry.gid)
                                   for path, entry in made_dirs.items() if isinstance(entry, fmt.MkdirEntry)}
    expected |= {path: emit_file_yaml(entry) for path, (_, entry) in namespace.files.items()}
    assert tree_of(work / "shadow" / "root") == expected
    # the agent's self-check (at start, and every 2 s while following) finds that tree whole
    with structlog.testing.capture_logs() as events:
        Follower(str(image), str(work / "shadow"), AgentSettings(), uuid_file, follow=False).run()
    assert [event for event in events if event["log_level"] in ("warning", "error")] == [], (events, ops)
