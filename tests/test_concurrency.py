"""Several famfsctl processes writing one device at once: the device lock serializes them, so
every file is logged exactly once, seqnums stay dense, and fsck is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from famfs import format as fmt
from tests.famfsctl_util import entries, famfsctl, make_image

WRITERS = 8


def run_at_once(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command before waiting for any."""
    started = [subprocess.Popen([sys.executable, "-m", "famfs.master.famfsctl", *command], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for command in commands]
    results = []
    for process, command in zip(started, commands, strict=True):
        stdout, stderr = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def test_eight_concurrent_creats_each_log_once_with_dense_seqnums(tmp_path: Path, system_uuid_file: Path) -> None:
    image = make_image(tmp_path / "dev.img")
    device = str(image)
    famfsctl("mkdir", "--device", image, "shared")

    unique = run_at_once([["creat", "-s", f"{(n + 1) * 100}k", "--randomize", "--seed", str(n + 1), "--device", device, f"file{n}"]
                          for n in range(WRITERS)])
    same_path = run_at_once([["creat", "-s", "1m", "--device", device, "shared/one"] for _ in range(WRITERS)])
    parents = run_at_once([["mkdir", "-p", "--device", device, f"shared/tree/leaf{n}"] for n in range(WRITERS)])
    for done in unique + same_path + parents:
        assert done.returncode == 0, done.stderr

    logged = entries(image)  # every slot valid: seqnum == index, good CRC
    paths = [entry.relpath for entry in logged if not isinstance(entry, fmt.AddDaxdevEntry)]
    assert len(paths) == len(set(paths)), "every path logged once"
    assert sorted(paths) == sorted(["shared", *(f"file{n}" for n in range(WRITERS)), "shared/one", "shared/tree",
                                    *(f"shared/tree/leaf{n}" for n in range(WRITERS))])
    with open(image, "rb") as raw:
        raw.seek(fmt.LOG_OFFSET + fmt.LOG_NEXT_SEQNUM_OFFSET)
        next_seqnum, next_index = int.from_bytes(raw.read(8), "little"), int.from_bytes(raw.read(8), "little")
    assert next_seqnum == next_index == len(logged) == 2 * WRITERS + 3

    report = famfsctl("fsck", image).stdout
    assert report.endswith("fsck: clean\n")
    verified = run_at_once([["verify", "-S", str(n + 1), "--device", device, f"file{n}"] for n in range(WRITERS)])
    assert all(done.returncode == 0 for done in verified), [done.stderr for done in verified]
