"""famfs: the core every famfs-agent program shares (docs/architecture.md).

The on-media format, device access, the log, the shadow YAML and the shadow directory's
contract, identity, configuration, logging set-up, and the rule book. The master's tools live in
`famfs.master`; the follower in `agent`, the mount in `fusefs`; none of them is imported here.
"""
