"""Serving a shadow file ahead of the log: on the master's `-o ro_namespace` mount only, where
upstream's CLI writes a new file's YAML and opens it through the mount before it logs it
(docs/fusefs.md, "Served ahead of the log"). The one question: may this YAML, which no log
entry owns yet, be served now?"""

from __future__ import annotations

import os

from famfs import format as fmt
from famfs.compaction import RECORD_SPAN, read_record
from famfs.shadowdir import AgentState, state_path
from fusefs.devicecheck import DeviceCheck


class Ahead:
    """Why a YAML may not be served ahead of the log (None: it may), asked of the device now
    served and of this host's agent's cursor (`<shadow>/.agent/state.json`)."""

    def __init__(self, devices: DeviceCheck, shadow_dir: str) -> None:
        self.devices = devices
        self.path = state_path(shadow_dir)
        # The state last parsed, by the identity of the file it came from: the agent replaces
        # state.json by a rename, so one stat says whether to parse it again (a parse is ~0.2 ms).
        self.cached: tuple[tuple[int, int, int], AgentState | None] | None = None

    def _state(self) -> AgentState | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self.cached is None or self.cached[0] != key:
            try:
                self.cached = key, AgentState.parse(self.path.read_bytes())
            except OSError:
                return None
        return self.cached[1]

    def __call__(self, entry: fmt.FileEntry) -> str | None:
        state = self._state()
        if state is None or not state.following or state.stalled_at is not None:
            return "famfs-agent is not following the log on this host (its cursor cannot be trusted)"
        served = self.devices.served
        try:
            epoch = read_record(served.famfs_log.device.fresh(*RECORD_SPAN)).epoch
        except fmt.FormatError as err:
            return f"the log's compaction record is unreadable: {err}"
        if epoch != state.log_epoch:
            return f"famfs-agent's cursor is in log epoch {state.log_epoch}, the log is {epoch}"
        return served.check.unlogged_problem(entry, state.applied_index)
