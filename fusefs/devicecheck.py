"""The device the mount serves bytes from, kept the one the shadow tree describes.

The shadow tree describes one file system: the agent's state.json names its UUID and, for an
image file, the image's (st_dev, st_ino). The device can change under a running mount:
`famfsctl mkfs --force` re-makes the file system in place (a new superblock, maybe another log
length), or the image file is replaced at its path. So before every change of the shadow tree is
applied, and every CHECK_PERIOD_S, a worker thread looks at three things: the superblock in the
mapping is still the one served from; the device path still names the file held open; the
agent's state names the file system (and image) held open.

When the device moved, the path is opened again; if what it holds agrees with the state (or
there is no state), it becomes the served device: a new generation with its own bounds (data
start, statfs figures). Until the two agree nothing is served: opens, reads and writes get EIO.
Handles opened in an earlier generation get ESTALE: their extents belong to another file system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import structlog
import trio

from famfs import format as fmt
from famfs.device import Device, DeviceError
from famfs.devices import AddedDevices
from famfs.famfslog import FamfsLog
from famfs.ownership import ShadowCheck
from famfs.rules import Geometry
from famfs.shadowdir import AGENT_DIR, DAXDEVS_FILE, OWNERS_FILE, AgentState, image_identity, read_state
from fusefs.capacity import CapacityCache
from fusefs.datapath import DataPath

log = structlog.get_logger("famfs-fuse-mount")

CHECK_PERIOD_S = 1.0  # bounds how long a superblock change with no tree change goes unseen


@dataclass(frozen=True, slots=True)
class Served:
    """One generation of the served device and everything derived from its superblock."""

    generation: int
    famfs_log: FamfsLog
    data: DataPath
    capacity: CapacityCache
    geometry: Geometry
    superblock_raw: bytes  # as it was when this generation began
    image: tuple[int, int] | None  # (st_dev, st_ino) of an image file
    check: ShadowCheck  # every shadow file and directory against this log and the agent's owner map

    @classmethod
    def of(cls, famfs_log: FamfsLog, generation: int, shadow_dir: str) -> Served:
        sb = famfs_log.superblock
        added = AddedDevices(sb.fs_uuid, table_path=os.path.join(shadow_dir, AGENT_DIR, DAXDEVS_FILE),
                             writable=famfs_log.device.writable)
        return cls(generation, famfs_log, DataPath(famfs_log.device, added), CapacityCache(famfs_log, shadow_dir),
                   Geometry.of(sb), famfs_log.device.read(0, fmt.SUPERBLOCK.size),
                   image_identity(famfs_log.device.fd),
                   ShadowCheck(famfs_log, os.path.join(shadow_dir, AGENT_DIR, OWNERS_FILE), added.size))

    @classmethod
    def open(cls, path: str, writable: bool, generation: int, shadow_dir: str) -> Served:
        device = Device(path, writable=writable)
        try:
            return cls.of(FamfsLog(device), generation, shadow_dir)
        except BaseException:
            device.close()
            raise

    def fs_uuid(self) -> str:
        return str(self.famfs_log.superblock.fs_uuid)

    def close(self) -> bool:
        """Unmap; False while a slice of the mapping is still referenced (try again later)."""
        self.check.close()
        self.data.close()
        try:
            if self.data.added is not None:
                self.data.added.close()
            self.famfs_log.device.close()
        except BufferError:
            return False
        return True


def disagreement(state: AgentState | None, served: Served) -> str | None:
    """Why the agent's state does not describe `served`'s file system; None if it does."""
    if state is None:
        return None  # no agent (a hand-made tree, or --device alone): the superblock is the truth
    if state.fs_uuid != served.fs_uuid():
        return f"the shadow tree describes file system {state.fs_uuid}, the device holds {served.fs_uuid()}"
    recorded = (state.device_dev, state.device_ino)
    if served.image is not None and None not in recorded and recorded != served.image:
        return "the shadow tree was played from another image file than the one at the device path"
    return None


class DeviceCheck:
    """The served generation, and whether bytes may be served at all (trio thread only)."""

    def __init__(self, famfs_log: FamfsLog, shadow_dir: str, writable: bool) -> None:
        self.path = famfs_log.path
        self.shadow_dir = shadow_dir
        self.writable = writable
        self.served = Served.of(famfs_log, 1, shadow_dir)
        self.refusal: str | None = None  # why nothing is served now
        self.retired: list[Served] = []  # generations whose mapping a reply still referenced
        self.lock = trio.Lock()  # one check at a time: each may open the device anew

    def identity(self) -> dict[str, object]:
        """What `/identity` reports (famfs-fuse-mount health): the file system served now, its
        generation, and why nothing is served, if so (None when bytes are served)."""
        return {"fs_uuid": self.served.fs_uuid(), "generation": self.served.generation, "refusal": self.refusal}

    def intact(self) -> bool:
        """Serving is allowed and the superblock is the served one (a cheap per-request check:
        it sees `mkfs --force` at once, before any new file can have been made)."""
        served = self.served
        # The mmap's slice (bytes), not the memoryview's: a compare of bytes is one memcmp, a
        # memoryview's one item at a time (0.07 against 0.3 µs).
        return self.refusal is None and served.famfs_log.device.map[:fmt.SUPERBLOCK.size] == served.superblock_raw

    async def check(self) -> Served | None:
        """Look at the device and the agent's state; the new generation if the mount switched."""
        async with self.lock:
            outcome = await trio.to_thread.run_sync(self._examine)
            if isinstance(outcome, str):
                if outcome != self.refusal:
                    log.error("device refused: serving no bytes until the device and the shadow tree agree",
                              device=self.path, reason=outcome)
                self.refusal = outcome
                return None
            if outcome is None:
                if self.refusal is not None:
                    log.warning("device accepted again", device=self.path, fs_uuid=self.served.fs_uuid())
                self.refusal = None
                return None
            old = self.served
            self.served, self.refusal = outcome, None
            log.warning("device changed: serving the new file system; older open handles get ESTALE",
                        device=self.path, fs_uuid=outcome.fs_uuid(), log_len=outcome.geometry.log_len,
                        generation=outcome.generation, was=old.fs_uuid())
            self.retired = [served for served in [*self.retired, old] if not served.close()]
            return outcome

    def _examine(self) -> Served | str | None:
        """(worker thread) None: serve on as is. Served: switch to it. str: refuse, because."""
        served = self.served
        state = read_state(self.shadow_dir)
        moved = served.famfs_log.device.read(0, fmt.SUPERBLOCK.size) != served.superblock_raw
        if served.image is not None and not moved:
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != served.image
            except OSError:
                moved = True
        if not moved:
            return disagreement(state, served)
        try:
            candidate = Served.open(self.path, self.writable, served.generation + 1, self.shadow_dir)
        except (DeviceError, fmt.FormatError) as err:
            return f"device {self.path}: {err}"
        why = disagreement(state, candidate)
        if why is not None:
            candidate.close()
            return why
        return candidate

    def close(self) -> None:
        for served in [*self.retired, self.served]:
            served.close()
