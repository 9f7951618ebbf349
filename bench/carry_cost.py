"""What a move to a compacted log costs before its first check can pass (issue 19): the agent's
pass over the new log's FILE, HOLD, DELETE, RECLAIM and SETATTR slots and OwnerMap.carried.

`python -m bench.carry_cost [--files N]`: a fresh sparse 64 GiB image on tmpfs, N files logged
(one allocation unit each), the map a play of that log gives, then the pass and the carry timed
(the best of 3).
"""

from __future__ import annotations

import argparse
import time
import uuid

from bench.common import scratch
from famfs import format as fmt
from famfs import rules
from famfs.device import Device
from famfs.famfslog import FamfsLog
from famfs.master.mkfs import create_image, mkfs
from famfs.ownership import OwnerMap

KINDS = {fmt.EntryType.FILE, fmt.EntryType.HOLD, fmt.EntryType.DELETE, fmt.EntryType.RECLAIM, fmt.EntryType.SETATTR}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="live files in the log (at most 15,000)")
    files = parser.parse_args().files
    with scratch("carry_cost.") as work:
        uuid_file = work / "system_uuid"
        uuid_file.write_text(f"{uuid.uuid4()}\n")
        image = work / "dev.img"
        create_image(image, 64 << 30)
        mkfs(str(image), uuid_file=uuid_file)
        with Device(str(image), writable=True) as device:
            famfs_log = FamfsLog(device)
            start = fmt.data_start(famfs_log.superblock.log_len)
            with device.exclusive():
                famfs_log.append([fmt.FileEntry(f"f{n}", 4096, 0o644, 0, 0, (fmt.Extent(start + n * fmt.ALLOC_UNIT, fmt.ALLOC_UNIT),))
                                  for n in range(files)])
            units = rules.Units(rules.Geometry.of(famfs_log.superblock))
            played = OwnerMap(units.nunits, units.unit, units.first_data_unit, 1)
            for index, entry in famfs_log.entries():
                played.set(entry.all_extents(), index + 1)  # type: ignore[union-attr]
            timings = []
            for _ in range(3):
                began = time.perf_counter()
                entries = [(index, entry) for index, _, entry in famfs_log.slots_of(KINDS, 0, famfs_log.next_index())
                           if entry is not None]
                played.carried(entries, units.first_data_unit, 2)
                timings.append(time.perf_counter() - began)
    print(f"{files} files, {units.nunits} units: the slot pass and the carry {min(timings):.3f} s")


if __name__ == "__main__":
    main()
