"""The README's "A host, by hand" block, its client block, then its Python block, run exactly as
written in a fresh copy of the repository.

The block names fixed paths (/var/tmp/famfs.img, /run/famfs/shadow, /mnt/famfs, and the mount's
log in /var/log): it runs in a private mount namespace with a tmpfs over each of those
directories, so neither this machine nor a concurrent run sees it. The copy holds every tracked file as it is in the worktree
(uncommitted changes included) and none of its build products, so `make install` really installs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCK_TIMEOUT_S = 600  # make install (pip) is most of it
PRIVATE_TMPFS = ("/var/tmp", "/var/log", "/run", "/mnt")  # /var/log: the mount daemon's log


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"^A host, by hand,.*?\n```\n(.*?)```\n", text, re.S | re.M)
    assert found, "README.md has no 'A host, by hand' block"
    return found[1]


CLIENT_UNMOUNT = "fusermount3 -u /mnt/client"  # the client block's line before which its mount is checked


def readme_client_blocks() -> tuple[str, str]:
    """The README's client block, cut before its unmount: (up to the live client mount, the rest)."""
    found = re.search(r"^A client is the same pair.*?\n```\n(.*?)```\n", (REPO / "README.md").read_text(), re.S | re.M)
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


def test_the_readme_by_hand_block_runs_as_written(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "famfs-agent")
    block = readme_block()
    (tmp_path / "block.sh").write_text(block)
    client_head, client_tail = readme_client_blocks()
    (tmp_path / "client_head.sh").write_text(client_head)
    (tmp_path / "client_check.py").write_text(CLIENT_CHECK)
    (tmp_path / "client_tail.sh").write_text(client_tail)
    (tmp_path / "block.py").write_text(readme_python_block())  # runs after the shell block, on its image
    mounts = " && ".join(f"mount -t tmpfs -o mode=1777 tmpfs {path}" for path in PRIVATE_TMPFS)
    # -e: the first failing line fails the test; the block's own commands are untouched.
    # One shell, as a reader's: the client block runs where the first left off (its venv active),
    # checked between its lines; its `kill %1` is its own agent's job.
    shell = (f". {tmp_path}/block.sh; . {tmp_path}/client_head.sh; .venv/bin/python {tmp_path}/client_check.py; "
             f". {tmp_path}/client_tail.sh")
    script = (f"{mounts} && cd {shlex.quote(str(clone))} && bash -ec {shlex.quote(shell)}"
              f" && exec .venv/bin/python {shlex.quote(str(tmp_path / 'block.py'))}")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "FAMFS_"))}
    env["PATH"] = os.pathsep.join(part for part in env["PATH"].split(os.pathsep) if ".venv" not in part)
    process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        # The mount daemon runs in its own session: end it by the pid it announced.
        for pid in re.findall(r"famfs-fuse-mount: mounted \(pid (\d+)\)", output or ""):
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert process.returncode == 0, output
    assert "famfs made" in output and "copied 3 files" in output
    assert "/mnt/famfs/data/sets/r1: 100 MiB (104857600 bytes) match seed 42" in output
    assert "fsck: clean" in output
    assert "/mnt/client/data/sets/r1: 100 MiB (104857600 bytes) match seed 42" in output
    assert "refused: only the master writes the log" in output
    assert "client: every namespace change EPERM, the log unchanged" in output
    assert "1000000 499999500000" in output  # the Python block: its table written by Master, read back mapped
