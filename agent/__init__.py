"""famfs-agent, the follower (docs/agent.md). structlog is loaded here first, without the asyncio
it never needs (famfs.quickimport): a client's cold start is mostly start-up."""

from famfs.quickimport import load_structlog

load_structlog()
