"""SETATTR (docs/format.md): a live file's or directory's new mode and owner, played by the agent
(a first play and a resumed one), checked by the mount's ShadowCheck against the latest entry."""

from __future__ import annotations

import os
from pathlib import Path

from famfs import format as fmt
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.ownership import ShadowCheck
from famfs.shadowdir import AGENT_DIR, DIR_XATTR, OWNERS_FILE, DirRecord
from famfs.shadowyaml import emit_file_yaml
from tests.agent_util import append, dir_attrs, file_entry, make_device, mkdir_entry, run_agent
from tests.famfsctl_util import famfsctl


def test_setattr_played_and_checked(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    made = file_entry("d/f", 0, mode=0o600, uid=1, gid=1)
    append(image, [mkdir_entry("d", 0o700), made,
                   fmt.SetattrEntry("d", 0, 0o2775, 0, 5), fmt.SetattrEntry("d/f", 1, 0o644, 7, 8)])
    run_agent("--shadow", shadow, "--no-progress", image, check=True)  # a first play: the tree built whole
    changed = made._replace(mode=0o644, uid=7, gid=8)
    assert (shadow / "root" / "d" / "f").read_bytes() == emit_file_yaml(changed)
    assert dir_attrs(shadow / "root" / "d") == (0o2775, 0, 5)
    assert DirRecord.decode(os.getxattr(shadow / "root" / "d", DIR_XATTR)) == DirRecord(2, 0o2775, 0, 5)

    append(image, [fmt.SetattrEntry("d/f", 1, 0o4750, 7, 9)])  # played by a resumed agent
    run_agent("--shadow", shadow, "--no-progress", image, check=True)
    again = made._replace(mode=0o4750, uid=7, gid=9)
    assert (shadow / "root" / "d" / "f").read_bytes() == emit_file_yaml(again)
    with Device(str(image)) as device:
        check = ShadowCheck(FamfsLog(device), shadow / AGENT_DIR / OWNERS_FILE)
        assert check.file_problem(again) is None
        for stale in (made, changed):  # the FILE entry's attributes, or an earlier SETATTR's: not served
            assert check.file_problem(stale) == "not the live log entry for this path (log entry 4 differs)"
        assert check.dir_problem("d", DirRecord(2, 0o2775, 0, 5).encode()) == DirRecord(2, 0o2775, 0, 5)
        assert "differs" in str(check.dir_problem("d", DirRecord(2, 0o775, 0, 5).encode()))
        assert "not a MKDIR or SETATTR of this path" in str(check.dir_problem("d", DirRecord(3, 0o644, 7, 8).encode()))
        check.close()
    assert famfsctl("fsck", image).stdout.endswith("fsck: clean\n")


def test_a_setattr_of_a_removed_or_other_target_is_rejected(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_device(tmp_path, system_uuid_file)
    shadow = tmp_path / "shadow"
    append(image, [mkdir_entry("d"), file_entry("d/f", 0), fmt.DeleteEntry("d/f", 1),
                   fmt.SetattrEntry("d/f", 1, 0o600, 0, 0),  # its file is deleted
                   fmt.SetattrEntry("d", 1, 0o700, 0, 0)])  # entry 1 is another path's
    played = run_agent("--shadow", shadow, "--no-progress", image)
    assert played.returncode == 1 and "2 log entries rejected" in played.stderr, played.stderr
    report = famfsctl("fsck", image, check=False).stdout
    assert "rule setattr_target_live" in report and "rule setattr_target_is_that_entry" in report, report
    assert dir_attrs(shadow / "root" / "d") == (0o755, 0, 0)
