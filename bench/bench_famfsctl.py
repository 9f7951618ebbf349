"""famfsctl and its parts: the fill pattern, one creat, cp throughput, and fsck of a full log.

Each figure has a baseline measured in the same run:
- fill pattern (MB/s) against the obvious per-word struct.pack loop;
- `famfsctl creat` as a process (ms) against the bare interpreter starting and importing the CLI,
  which is the floor any Python command pays;
- `famfsctl cp` (MB/s) against reading and pwriting the same bytes into the image directly;
- fsck of upstream's full 8 MiB log (15,420 entries) against CRC-checking every slot alone.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from bench.common import Result
from demo.harness import materialize_reference
from famfs import format as fmt
from famfs.device import Device
from famfs.master import fsck, prng


def best_of(runs: int, work: Callable[[], object]) -> float:
    """Seconds of the fastest of `runs` calls (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def per_word_fill(seed: int, length: int) -> bytes:
    """The fill as one would first write it: a struct.pack per word."""
    mask64, mask32 = (1 << 64) - 1, (1 << 32) - 1
    s0, s1 = prng.seed_state(seed)
    out = bytearray()
    for _ in range(-(-length // 4)):
        out += struct.pack("<I", (s0 + s1) & mask32)
        s1 ^= s0
        s0 = (((s0 << 55) | (s0 >> 9)) ^ s1 ^ (s1 << 14)) & mask64
        s1 = ((s1 << 36) | (s1 >> 28)) & mask64
    return bytes(out[:length])


def bench_fill(quick: bool) -> Result:
    length = (1 if quick else 16) << 20
    assert per_word_fill(42, 4096) == prng.pattern(42, 4096)
    ours = best_of(1 if quick else 3, lambda: prng.pattern(42, length))
    baseline = best_of(1 if quick else 3, lambda: per_word_fill(42, length))
    return Result(name=f"creat --randomize fill pattern ({length >> 20} MiB)", ours=length / ours / 1e6, unit="MB/s",
                  baseline=length / baseline / 1e6, baseline_name="per-word struct.pack loop",
                  note="one core, pure Python: up to 1024 lanes stepped at once in big ints (SWAR), lane "
                       "starts by jump matrix (famfs/master/prng.py); stepping per word it was about 17 MB/s")


def bench_creat(quick: bool, workdir: Path) -> Result:
    image, uuid_file = workdir / "dev.img", workdir / "system_uuid"
    cli = [sys.executable, "-m", "famfs.master.famfsctl"]
    subprocess.run([*cli, "mkfs", "--size", "1g", "--system-uuid-file", uuid_file, image], check=True, capture_output=True)
    counter = iter(range(1_000_000))

    def creat() -> None:
        subprocess.run([*cli, "creat", "-s", "1m", "--system-uuid-file", uuid_file, "--device", image,
                        f"f{next(counter)}"], check=True, capture_output=True)

    def startup() -> None:
        subprocess.run([sys.executable, "-c", "import famfs.master.famfsctl"], check=True, capture_output=True)

    runs = 2 if quick else 10
    return Result(name="famfsctl creat -s 1m (one process)", ours=best_of(runs, creat) * 1e3, unit="ms",
                  baseline=best_of(runs, startup) * 1e3, baseline_name="python -c 'import famfs.master.famfsctl'",
                  note="lower is better; the difference is the lock, log rebuild, allocation and append")


def bench_cp(quick: bool, workdir: Path) -> Result:
    image, uuid_file, source = workdir / "cp.img", workdir / "system_uuid", workdir / "source.bin"
    length = (8 if quick else 256) << 20
    source.write_bytes(os.urandom(length))
    cli = [sys.executable, "-m", "famfs.master.famfsctl"]
    subprocess.run([*cli, "mkfs", "--size", "2g", "--system-uuid-file", uuid_file, image], check=True, capture_output=True)
    counter = iter(range(1_000_000))

    def copy() -> None:
        subprocess.run([*cli, "cp", "--system-uuid-file", uuid_file, "--device", image, source, f"c{next(counter)}"],
                       check=True, capture_output=True)

    fresh = iter(range(1 << 30, 2 << 30, length))

    def raw_copy() -> None:
        """The floor: the same bytes read and pwritten into never-written space of the image, in
        one process, no famfs (space written before is faster: its pages already exist)."""
        with open(source, "rb") as src, open(image, "r+b") as dst:
            offset = next(fresh)
            while block := src.read(1 << 20):
                os.pwrite(dst.fileno(), block, offset)
                offset += len(block)

    runs = 1 if quick else 3
    return Result(name=f"famfsctl cp of a {length >> 20} MiB file", ours=length / best_of(runs, copy) / 1e6, unit="MB/s",
                  baseline=length / best_of(runs, raw_copy) / 1e6, baseline_name="read + pwrite into the image",
                  note="includes process start; page-cache bound")


def bench_fsck(quick: bool, workdir: Path) -> Result:
    image = materialize_reference("c_full", workdir / "c_full.img")
    with Device(image) as device:
        log_bytes = device.read(fmt.LOG_OFFSET, fmt.DEFAULT_LOG_LEN)

        def crc_only() -> None:
            for index in range(fmt.log_capacity(fmt.DEFAULT_LOG_LEN)):
                start = fmt.entry_offset(index)
                zlib.crc32(log_bytes[start:start + fmt.ENTRY_CRC_SPAN])

        runs = 1 if quick else 3
        ours = best_of(runs, lambda: fsck.check(device))
        baseline = best_of(runs, crc_only)
    return Result(name="fsck of a full 8 MiB log (15,420 entries)", ours=ours * 1e3, unit="ms", baseline=baseline * 1e3,
                  baseline_name="CRC of every slot, nothing else", note="lower is better")


def run(quick: bool) -> list[Result]:
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        return [bench_fill(quick), bench_creat(quick, workdir), bench_cp(quick, workdir), bench_fsck(quick, workdir)]


if __name__ == "__main__":
    for result in run("--quick" in sys.argv):
        print(result)
