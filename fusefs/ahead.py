"""Serving a shadow file ahead of the log: on the master's `-o ro_namespace` mount only, where
upstream's CLI writes a new file's YAML and opens it through the mount before it logs it
(docs/fusefs.md, "Served ahead of the log"). The one question: may this YAML, which no log
entry owns yet, be served now?"""

from __future__ import annotations

from famfs import format as fmt
from famfs.compaction import RECORD_SPAN, read_record
from famfs.shadowdir import StateReader
from fusefs.devicecheck import DeviceCheck


class Ahead:
    """Why a YAML may not be served ahead of the log (None: it may), asked of the device now
    served and of this host's agent's cursor (`<shadow>/.agent/state.json`)."""

    def __init__(self, devices: DeviceCheck, shadow_dir: str) -> None:
        self.devices = devices
        self.state = StateReader(shadow_dir)

    def __call__(self, entry: fmt.FileEntry) -> str | None:
        state = self.state.read()
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
