"""Every environment variable a famfs-agent program reads, named once (part of the documented
command-line contract: README.md, famfs-agent.toml)."""

SYSTEM_UUID_FILE = "FAMFS_SYSTEM_UUID_FILE"  # this host's identity file (all three programs)
AGENT_CONFIG = "FAMFS_AGENT_CONFIG"  # the famfs-agent.toml to read (all three programs)
DEMO_DIR = "FAMFS_DEMO_DIR"  # `make demo`: where its work directory is made
DEMO_SIZE = "FAMFS_DEMO_SIZE"  # `make demo`: the size of the sparse device image
DEMO_NAMESPACES = "FAMFS_DEMO_NAMESPACES"  # `make demo`: "0" keeps every mount in this namespace
NOTIFY_SOCKET = "NOTIFY_SOCKET"  # set by systemd for Type=notify units: where readiness is sent
UPSTREAM_BIN = "FAMFS_UPSTREAM_BIN"  # tests only: a directory holding upstream's built `famfs` CLI (docs/fusefs.md)
