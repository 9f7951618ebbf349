"""A file system over two devices (docs/devices.md): sequential read of a file striped over both,
against the same file striped over one device, measured in the same run.

Both devices are image files on /dev/shm (standing in for two CXL devices), so this measures
what the striping costs famfs.open (one mapping of pieces of two devices instead of one), not the
bandwidth two real devices would add: on one host's memory the two should read alike.
"""

from __future__ import annotations

import os
import uuid

import famfs
from bench.bench_fuse import READ_BLOCK, make_device
from bench.bench_library import copy_rate, paired
from bench.common import Result, scratch
from famfs import env, logsetup
from famfs.master import writer
from famfs.master.alloc import InterleaveParams

MiB = 1 << 20
GiB = 1 << 30
DEVICE_SIZE = 4 * GiB  # sparse: only the two files' pages are ever written


def run(quick: bool) -> list[Result]:
    logsetup.configure(level="warning")
    size = (32 if quick else 512) * MiB
    with scratch("bench_multidev_") as where:
        primary = make_device(where, DEVICE_SIZE)
        uuid_file = where / "system_uuid"
        added = where / "second.img"
        config = where / "famfs-agent.toml"
        config.write_text(f'[host]\ndevices = ["{added}"]\n')
        previous = os.environ.get(env.AGENT_CONFIG)
        os.environ[env.AGENT_CONFIG] = str(config)
        try:
            with writer.session(str(primary), uuid_file) as current:
                with open(added, "wb") as image:
                    image.truncate(DEVICE_SIZE)
                current.add_device(str(added), uuid.uuid4())
            master = famfs.Master(primary, system_uuid_file=uuid_file)
            block = os.urandom(READ_BLOCK)
            layouts = {"two": ([0, 1], InterleaveParams(nbuckets=1, nstrips=2, chunk_size=2 * MiB)),
                       "one": ([0], InterleaveParams(nbuckets=2, nstrips=2, chunk_size=2 * MiB))}
            for relpath, (on, layout) in layouts.items():
                with master.create(relpath, size, layout=layout, on=on) as new:
                    for offset in range(0, size, READ_BLOCK):
                        new.buffer[offset:offset + READ_BLOCK] = block
            with famfs.open("two", device=primary) as two, famfs.open("one", device=primary) as one:
                ours, base = paired(lambda: copy_rate(two.buffer), lambda: copy_rate(one.buffer))
        finally:
            if previous is None:
                os.environ.pop(env.AGENT_CONFIG, None)
            else:
                os.environ[env.AGENT_CONFIG] = previous
    return [Result(f"famfs.open read {size // MiB} MiB striped over 2 devices", ours, "GB/s", base,
                   "the same file striped over 1 device",
                   "2 strips, 2 MiB chunks; 1 MiB copies out of .buffer, best of 3; both devices on /dev/shm")]


if __name__ == "__main__":
    for result in run(quick=False):
        print(result)
