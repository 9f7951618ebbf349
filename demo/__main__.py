"""`python -m demo` (what `make demo` runs): a master and two clients sharing one famfs device.

Settings (environment, all optional):
  FAMFS_DEMO_DIR         where the work directory (image, shadows, mount points) is made
                         (default: the system temporary directory)
  FAMFS_DEMO_SIZE        size of the sparse device image (default 4g)
  FAMFS_DEMO_NAMESPACES  0 to keep every mount in this machine's namespace (default: use
                         private mount namespaces when they work)
Everything is removed at the end, on success, on failure and on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from demo.cluster import Cluster, HarnessError
from demo.story import Narrator, run, show_logs
from famfs import env, logsetup


class Terminated(BaseException):
    """SIGTERM, turned into an exception (like KeyboardInterrupt) so clean-up runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Started in the background by a non-interactive shell, SIGINT arrives ignored: restore Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parent = Path(os.environ.get(env.DEMO_DIR) or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    namespaces = None if os.environ.get(env.DEMO_NAMESPACES, "") != "0" else False
    say = Narrator()
    logsetup.configure(level="warning")  # the demo's own famfs.Master: the narration says what it did
    print("famfs demo: one shared memory device (emulated by a file), one master and two client hosts.\n"
          "Each host runs famfs-agent (follows the device's log into its own shadow tree) and\n"
          "famfs-fuse-mount (serves that tree as a file system; file bytes come from the device).")
    cluster = Cluster(parent=parent, size=os.environ.get(env.DEMO_SIZE, "4g"), namespaces=namespaces)
    status = 0
    try:
        try:
            run(cluster, say)
        except Exception:
            show_logs(cluster)  # a failure, not an interruption: what the daemons said matters
            raise
        finally:
            say.step("Clean-up: unmounting, stopping every agent and mount, removing the image")
            cluster.stop()
            say.say("done: no mount and no process left behind")
    except (KeyboardInterrupt, Terminated):
        print("\ninterrupted: everything was cleaned up", file=sys.stderr)
        status = 130
    except HarnessError as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
