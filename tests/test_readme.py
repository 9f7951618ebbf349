"""The README's "A host, by hand" block, its client block (checked between its lines), then its
Python block, run exactly as written in a fresh copy of the repository; and every command block of docs/*.md, run as written after the README's
by-hand block, in the same shell, in a fresh copy of its own.

Every fenced block of the README and docs/*.md says what it is. In docs/*.md a block tagged `sh`
is commands (run by bash, in one shell with the README's block, so `&` jobs and `kill %1` work
across blocks) and one tagged `python` is a program (run by `.venv/bin/python` from the top of the
copy, in order). `make` blocks name Makefile targets (`make test` is CI itself, `make demo` runs in
tests/test_demo.py, `make churn` in small in tests/test_churn.py); `text` blocks are synopses,
diagrams and sample output, not run.

The blocks name fixed paths (/var/tmp/famfs.img, /run/famfs/shadow, /mnt/famfs, the mount's log
in /var/log, the host identity /opt/famfs/system_uuid): they run in a private mount namespace
with a tmpfs over each of those directories, so neither this machine nor a concurrent run sees
them. The copy holds every tracked file as it is in the worktree (uncommitted changes included)
and none of its build products, so `make install` really installs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
RUN = ("sh", "python")
SHOWN = ("make", "text")
# What a doc's blocks print, where they say what they print.
DOC_OUTPUT = {"library.md": ["\n999\n", "\n13107200\n", "\n499999500000\n"], "fusefs.md": ["search_count"]}
BLOCK_TIMEOUT_S = 600  # make install (pip) is most of it
PRIVATE_TMPFS = ("/var/tmp", "/var/log", "/run", "/mnt", "/opt")  # /var/log: the mount's log; /opt: identity


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"^A host, by hand,.*?\n```sh\n(.*?)```\n", text, re.S | re.M)
    assert found, "README.md has no 'A host, by hand' block"
    return found[1]


def readme_python_block() -> str:
    found = re.search(r"^```python\n(.*?)```\n", (REPO / "README.md").read_text(), re.S | re.M)
    assert found, "README.md has no Python block"
    return found[1]


def fresh_copy(target: Path) -> Path:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # (a file deleted in the worktree but still tracked is left out)
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name, follow_symlinks=False)
    return target


CLIENT_UNMOUNT = "fusermount3 -u /mnt/client"  # the client block's line before which its mount is checked


def readme_client_blocks() -> tuple[str, str]:
    """The README's client block, cut before its unmount: (up to the live client mount, the rest)."""
    found = re.search(r"^A client is the same pair.*?\n```sh\n(.*?)```\n", (REPO / "README.md").read_text(), re.S | re.M)
    assert found, "README.md has no client block"
    head, cut, tail = found[1].partition(CLIENT_UNMOUNT)
    assert cut, f"the README's client block has no {CLIENT_UNMOUNT!r}"
    return head, cut + tail


# Run in the client's mount, between the README's lines: every namespace change is EPERM and the
# log (superblock and log, compared byte for byte) is unchanged; the mount said it is a client.
CLIENT_CHECK = """
import errno, os, sys
from famfs.device import Device
from famfs.famfslog import FamfsLog

def metadata():
    with Device("/var/tmp/famfs.img") as device:
        return device.read(0, FamfsLog(device).superblock.data_start)

before = metadata()
m = "/mnt/client/data"
changes = {
    "mkdir": lambda: os.mkdir(f"{m}/d"), "creat": lambda: open(f"{m}/new", "x"),
    "touch": lambda: os.close(os.open(f"{m}/t", os.O_WRONLY | os.O_CREAT, 0o644)),
    "rm": lambda: os.unlink(f"{m}/sets/r1"), "rmdir": lambda: os.rmdir(f"{m}/sets"),
    "rename": lambda: os.rename(f"{m}/sets/r1", f"{m}/r2"), "truncate": lambda: os.truncate(f"{m}/sets/r1", 5),
}
for name, change in changes.items():
    try:
        change()
    except PermissionError:
        continue
    except OSError as err:
        sys.exit(f"client {name}: {err}, not EPERM")
    sys.exit(f"client {name}: done; it must get EPERM")
assert os.path.getsize(f"{m}/sets/r1") == 100 << 20 and not os.path.exists(f"{m}/d")
assert metadata() == before, "the client's mount changed the log"
mounted = [line for line in open("/var/log/famfs-fuse-mount.log")
           if "event='mounted'" in line and "mountpoint='/mnt/client'" in line]
assert mounted and "namespace='read-only here'" in mounted[-1], mounted
print("client: every namespace change EPERM, the log unchanged")
"""


def doc_blocks(doc: Path) -> list[tuple[str, str]]:
    """The (language, text) of each block of `doc` that runs, in order."""
    return [(language, text) for language, text in FENCE.findall(doc.read_text()) if language in RUN]


def run_in_private_namespace(tmp_path: Path, script: str) -> str:
    """`script` (bash, -e) from the top of a fresh copy, with private tmpfs mounts; its output.
    Whatever it leaves running is ended: its process group and every mount daemon it announced."""
    clone = fresh_copy(tmp_path / "famfs-agent")
    (tmp_path / "script.sh").write_text(script)
    mounts = " && ".join(f"mount -t tmpfs -o mode=1777 tmpfs {path}" for path in PRIVATE_TMPFS)
    # -e: the first failing line fails the test; the blocks' own commands are untouched.
    command = f"{mounts} && cd {shlex.quote(str(clone))} && exec bash -e {shlex.quote(str(tmp_path / 'script.sh'))}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "FAMFS_"))}
    env["PATH"] = os.pathsep.join(part for part in env["PATH"].split(os.pathsep) if ".venv" not in part)
    # Output to a file, not a pipe: an agent a block leaves running with `&` holds it open.
    with (tmp_path / "output.log").open("w") as sink:
        process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", command],
                                   stdout=sink, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        process.wait(timeout=BLOCK_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output = (tmp_path / "output.log").read_text()
        # The mount daemon runs in its own session: end it by the pid it announced.
        for pid in re.findall(r"famfs-fuse-mount: mounted \(pid (\d+)\)", output):
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            os.killpg(process.pid, signal.SIGTERM)  # an agent a block left running with `&`
        except ProcessLookupError:
            pass
    assert process.returncode == 0, output
    return output


def test_the_readme_by_hand_block_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "block.py").write_text(readme_python_block())  # runs after the shell blocks, on its image
    (tmp_path / "client_check.py").write_text(CLIENT_CHECK)
    client_head, client_tail = readme_client_blocks()
    # One shell, as a reader's: the client block runs where the first left off (its venv active),
    # checked between its lines; its `kill %1` is its own agent's job.
    output = run_in_private_namespace(tmp_path, readme_block() + client_head + f".venv/bin/python {tmp_path / 'client_check.py'}\n"
                                      + client_tail + f".venv/bin/python {tmp_path / 'block.py'}\n")
    assert "client: every namespace change EPERM, the log unchanged" in output
    assert "famfs made" in output and "copied 3 files" in output
    assert "/mnt/famfs/data/sets/r1: 100 MiB (104857600 bytes) match seed 42" in output
    assert "fsck: clean" in output
    assert "1000000 499999500000" in output  # the Python block: its table written by Master, read back mapped


@pytest.mark.parametrize("doc", sorted(doc for doc in DOCS.glob("*.md") if doc_blocks(doc)), ids=lambda doc: doc.name)
def test_every_command_block_of_the_docs_runs_as_written(tmp_path: Path, doc: Path) -> None:
    script = [readme_block()]
    for number, (language, text) in enumerate(doc_blocks(doc)):
        if language == "sh":
            script.append(text)
        else:  # from stdin: the copy's top is on sys.path, as in a python started there
            (tmp_path / f"block{number}.py").write_text(text)
            script.append(f".venv/bin/python - < {tmp_path / f'block{number}.py'}\n")
    output = run_in_private_namespace(tmp_path, "".join(script))
    for printed in DOC_OUTPUT.get(doc.name, []):
        assert printed in output, output


def make_targets() -> set[str]:
    phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert phony, "the Makefile has no .PHONY line"
    return set(phony[1].split())


@pytest.mark.parametrize("doc", [REPO / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda doc: doc.name)
def test_every_block_says_what_it_is_and_make_blocks_name_real_targets(doc: Path) -> None:
    """An untagged block would be neither run nor declared not to be commands: every block is tagged."""
    text = doc.read_text()
    openings = re.findall(r"^```(\w*)\n(?:.*?)^```\n", text, re.S | re.M)
    assert len(openings) == text.count("\n```") // 2, f"{doc.name}: a fence the test cannot pair"
    untagged = [tag for tag in openings if tag not in RUN + SHOWN]
    assert not untagged, f"{doc.name}: blocks tagged {untagged!r}; tag each one {RUN + SHOWN}"
    targets = make_targets()
    for language, block in FENCE.findall(text):
        if language != "make":
            continue
        for line in filter(None, (line.split("#")[0].strip() for line in block.splitlines())):
            words = line.split()
            assert words[0] == "make" and words[1] in targets, f"{doc.name}: {line!r} is not a make target"
