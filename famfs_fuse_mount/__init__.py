"""famfs-fuse-mount's composition root: the mount (fusefs) with the master's writer (famfs.master).

The one module allowed to import both (docs/architecture.md, tests/test_layering.py): fusefs
knows the writer only as the famfs.namespace.NamespaceWriter interface, and this module hands it
famfs.master's implementation, used only when the mount is writable and its identity (its
agent's, fusefs.cli.host_identity) is the superblock's master.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from famfs.master.mountwriter import SessionWriter
from fusefs import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, writer_for=SessionWriter)


if __name__ == "__main__":
    sys.exit(main())
