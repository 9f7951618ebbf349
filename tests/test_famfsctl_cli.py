"""famfsctl as coreutils users expect it: cp's trailing slashes, symlinks, pre-flight and summary;
rm of many paths; options anywhere; sizes in human units; --version on every program."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from famfs import format as fmt
from famfs import logsetup, progress, units
from famfs.master import copy
from tests.famfsctl_util import FAMFSCTL_TIMEOUT_S, digest, entries, famfsctl, file_bytes, make_image
from tests.fuse_util import wait_for

LONG_NAME = "n" * 70  # under data/tree/: a relpath over the format's 79 bytes


def tree_with_links(root: Path) -> Path:
    """A source tree: two files, a subdirectory, a symlink to a file, one to a directory, one dangling."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.txt").write_bytes(b"beta\n")
    (root / "link.txt").symlink_to("a.txt")
    (root / "sub" / "up").symlink_to("..")
    (root / "dangling").symlink_to("nowhere")
    return root


def test_cp_with_a_name_over_the_limit_logs_nothing(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    famfsctl("mkdir", "--device", image, "data")
    source = tmp_path / "tree"
    for n in range(30):  # names before and after the bad one, in the order cp walks them
        (source / f"d{n:02}").mkdir(parents=True)
        (source / f"d{n:02}" / "f").write_bytes(b"x" * n)
    (source / "d15" / LONG_NAME).write_bytes(b"too long a path")
    before = digest(image)
    done = famfsctl("cp", "-r", "--device", image, source, "data/", check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"famfsctl: {source / 'd15' / LONG_NAME} -> data/tree/d15/{LONG_NAME}: path is 84 bytes, the limit is 79",
        "famfsctl: nothing copied: 1 problem found before writing"]
    assert digest(image) == before
    (source / "d15" / LONG_NAME).unlink()
    done = famfsctl("cp", "-r", "--device", image, source, "data/")
    assert done.stdout == f"copied 30 files (435 bytes) and 31 directories into {image}:data\n"
    assert file_bytes(image, "data/tree/d29/f") == b"x" * 29


def test_cp_trailing_slash_names_a_directory_that_must_exist(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    famfsctl("creat", "-s", "1k", "--device", image, "afile")
    before = digest(image)
    hostname = tmp_path / "hostname"
    hostname.write_bytes(b"host\n")
    for dest, why in [("nodir/", "nodir/: No such directory"), ("afile/", "afile/: Not a directory")]:
        done = famfsctl("cp", "--device", image, hostname, dest, check=False)
        assert done.returncode == 1 and f"famfsctl: {why} (a trailing slash names a directory)" in done.stderr
    assert digest(image) == before
    famfsctl("mkdir", "--device", image, "dir")
    famfsctl("cp", "--device", image, hostname, "dir/")  # into it, as cp does
    famfsctl("cp", "--device", image, hostname, "plain")  # no slash: the file's own name
    assert [getattr(entry, "relpath", None) for entry in entries(image)] == ["afile", "dir", "dir/hostname", "plain"]


def test_cp_skips_symlinks_with_one_summary_line_or_follows_them_with_L(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    source = tree_with_links(tmp_path / "src")
    done = famfsctl("cp", "-r", "--device", image, source, "/")
    assert done.stdout == f"copied 2 files (11 bytes) and 2 directories into {image}:/\n"
    assert done.stderr == "famfsctl cp: skipped 3 symbolic links (-L follows them)\n"
    assert {entry.relpath for entry in entries(image)} == {"src", "src/a.txt", "src/sub", "src/sub/b.txt"}

    # -L follows: the dangling link is a problem before anything is written, the loop too.
    before = digest(image)
    refused = famfsctl("cp", "-r", "-L", "--device", image, source, "followed", check=False)
    assert refused.returncode == 1 and digest(image) == before
    assert f"famfsctl: {source / 'dangling'}: No such file or directory (a dangling symbolic link)" in refused.stderr
    assert f"famfsctl: {source / 'sub' / 'up'}: symbolic link loop (a directory inside itself)" in refused.stderr
    (source / "dangling").unlink()
    (source / "sub" / "up").unlink()
    famfsctl("cp", "-r", "-L", "--device", image, source, "followed")
    assert file_bytes(image, "followed/link.txt") == b"alpha\n"

    # A link named on the command line without -r is followed, as cp does.
    famfsctl("cp", "--device", image, source / "link.txt", "named.txt")
    assert file_bytes(image, "named.txt") == b"alpha\n"


def test_cp_options_between_operands_and_many_sources(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"1")
    two.write_bytes(b"22")
    famfsctl("-v", "mkdir", "--device", image, "d")  # a global option before the command
    done = famfsctl("cp", one, "--device", image, two, "-m", "0600", "d")
    assert done.stdout == f"copied 2 files (3 bytes) into {image}:d\n"
    assert [(entry.relpath, entry.mode) for entry in entries(image)[1:]] == [("d/one", 0o600), ("d/two", 0o600)]
    missing = famfsctl("cp", "--device", image, one, check=False)
    assert missing.returncode == 2 and missing.stderr == f"famfsctl cp: missing destination file operand after '{one}'\n"


def test_rm_of_many_paths_is_all_or_nothing(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    for name in ("a", "b", "c"):
        famfsctl("creat", "-s", "4k", "--device", image, name)
    before = digest(image)
    done = famfsctl("rm", "--device", image, "a", "nope", "b", check=False)
    assert done.returncode == 1 and done.stderr == f"famfsctl: {image}: nope: no such file\nfamfsctl: nothing removed\n"
    assert digest(image) == before
    famfsctl("rm", "--device", image, "a", "c")
    assert [type(entry).__name__ for entry in entries(image)] == ["FileEntry"] * 3 + ["DeleteEntry"] * 2


@pytest.mark.parametrize(("size", "expected"), [("1.5m", 3 << 19), ("1MB", 1_000_000), ("1MiB", 1 << 20), ("0x1000", 4096)])
def test_sizes_in_human_units(tmp_path: Path, system_uuid_file: Path, size: str, expected: int) -> None:
    image = make_image(tmp_path / "dev.img")
    famfsctl("creat", "-s", size, "--device", image, "f")
    assert entries(image)[0].size == expected


def test_bad_sizes_say_what_is_accepted(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    bad = famfsctl("creat", "-s", "1.5gg", "--device", image, "f", check=False)
    assert bad.returncode == 2 and "not a size: '1.5gg' (a byte count or a number with a unit: 4096" in bad.stderr
    zero = famfsctl("creat", "-s", "0", "--device", image, "f", check=False)
    assert zero.returncode == 2 and "-s 0: a famfs file created this way needs a size above 0" in zero.stderr
    assert famfsctl("status", "--device", image).returncode == 0  # as the usage message offers
    assert "the file's size, above 0" in famfsctl("creat", "--help").stdout


@pytest.mark.parametrize("program", ["famfsctl", "famfs-agent", "famfs-fuse-mount"])
def test_version(program: str) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / program), "--version"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.startswith(f"{program} 0.") and "famfs format version 48" in done.stdout


def test_the_refusal_lists_every_problem_up_to_a_limit(tmp_path: Path, system_uuid_file: Path) -> None:
    problems = [f"problem {n}" for n in range(copy.PROBLEMS_SHOWN + 5)]
    lines = str(copy.CopyRefused(problems)).splitlines()
    assert lines[:copy.PROBLEMS_SHOWN] == problems[:copy.PROBLEMS_SHOWN]
    assert lines[copy.PROBLEMS_SHOWN:] == ["... and 5 more", f"nothing copied: {len(problems)} problems found before writing"]


def test_progress_is_logged_when_not_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("console", "info")
    monkeypatch.setattr(progress, "LOG_PERIOD_S", 0.0)  # every update is due
    tracker = progress.Progress("copying", 4 << 20, bar=False)
    tracker.advance(1 << 20)
    tracker.finish()
    line = capsys.readouterr().err
    assert "event='progress'" in line and "what='copying'" in line and "done='1 MiB'" in line and "total='4 MiB'" in line
    assert "eta=" in line and line.count("\n") == 1


def test_double_dash_ends_the_options_of_every_command(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    (tmp_path / "-src").write_bytes(b"dash\n")
    famfsctl("mkdir", "--device", image, "--", "-dash")
    famfsctl("mkdir", "-p", "--device", image, "--", "-x/-y")
    famfsctl("creat", "-s", "1m", "--device", image, "--", "-dash/-f")
    famfsctl("creat", "-s", "1m", "--device", image, "--", "--device")  # an option's name, as a file name
    famfsctl("cp", "--device", image, "--", tmp_path / "-src", "-x/-y/")
    famfsctl("rm", "--device", image, "--", "--device")
    assert file_bytes(image, "-x/-y/-src") == b"dash\n"
    assert [entry.relpath for entry in entries(image)] == ["-dash", "-x", "-x/-y", "-dash/-f", "--device",
                                                           "-x/-y/-src", "--device"]
    done = famfsctl("mkdir", "--device", image, "--", check=False)
    assert done.returncode == 2 and "required: PATH" in done.stderr


def test_errors_give_sizes_in_human_units(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    done = famfsctl("creat", "-s", "9g", "--device", image, "big", check=False)
    assert done.returncode == 1 and ("cannot allocate 9 GiB: no free run of 9 GiB, nor 16 that hold it "
                                       "(free: 1014 MiB, largest free run: 1014 MiB)") in done.stderr
    assert units.describe_size(1431655765) == "1.33 GiB (1431655765 bytes)"  # rounded: the exact count too
    assert units.describe_size(512) == "512 bytes"


def interrupted(tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """famfsctl -v ARGS, sent SIGINT once its first progress event shows the work under way."""
    errors = tmp_path / "stderr"
    with errors.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "famfs.master.famfsctl", "-v", *map(str, args)],
                                   stdout=subprocess.PIPE, stderr=sink, text=True)
    try:
        wait_for(lambda: process.poll() is not None or "event='progress'" in errors.read_text(), "a progress event")
        assert process.poll() is None, errors.read_text()
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=FAMFSCTL_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, errors.read_text())


def test_an_interrupted_creat_or_cp_says_what_was_logged(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img", "8g")
    done = interrupted(tmp_path, "creat", "-s", "6g", "-r", "-S", "5", "--device", image, "big")
    assert done.returncode == 130 and done.stderr.splitlines()[-1] == "famfsctl creat: interrupted: big: nothing was logged"
    assert entries(image) == []
    source = tmp_path / "src"
    source.mkdir()
    for name in ("a", "b", "c"):
        with (source / name).open("wb") as sparse:
            sparse.truncate(2 << 30)
    done = interrupted(tmp_path, "cp", "-r", "--device", image, source, "dest")
    last = done.stderr.splitlines()[-1]
    assert done.returncode == 130 and last.startswith("famfsctl cp: interrupted: "), done.stderr
    files = sum(1 for entry in entries(image) if isinstance(entry, fmt.FileEntry))
    assert f"{files} of 3 files and 1 directories were logged" in last
