"""Prometheus metrics, the part famfs-agent and famfs-fuse-mount share: the address setting, the
build-info metric, and the HTTP server (docs/operations.md).

Each daemon keeps its figures as plain ints that its own code bumps, and a collector turns them
into metric families only when Prometheus scrapes. The server answers from its own thread: a
scrape never runs on the follower's loop or the mount's trio thread, and reads only ints and
lengths (atomic under the GIL). Imported only when metrics are on: prometheus_client adds tens of
milliseconds to a program's start.
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
from collections.abc import Iterable
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from famfs import config

ADDRESS_HELP = "HOST:PORT to serve Prometheus metrics on (':PORT' for every interface; '' = off)"
STOP_TIMEOUT_S = 5.0  # the server thread notices shutdown within its 0.5 s poll


class MetricsError(Exception):
    """The metrics address cannot be used; the message names it."""


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


def parse_address(address: str) -> tuple[str, int]:
    """"HOST:PORT", ":PORT" (every interface) or "[V6]:PORT" -> (host, port) (the config's rule)."""
    try:
        return config.parse_address(address)
    except ValueError as err:
        raise MetricsError(f"metrics address: {err}") from None


def build_info(prefix: str, fs_uuid: str, **labels: str) -> GaugeMetricFamily:
    """`<prefix>_build_info{version, python, fs_uuid, ...} 1`: what runs, on which file system."""
    names = {"version": importlib.metadata.version("famfs-agent"), "python": platform.python_version(),
             "fs_uuid": fs_uuid, **labels}
    family = GaugeMetricFamily(f"{prefix}_build_info", "famfs-agent version, Python version and the file system served",
                               labels=list(names))
    family.add_metric(list(names.values()), 1)
    return family


class MetricsServer:
    """The /metrics HTTP endpoint in a daemon thread, bound at construction (so a bad address is
    reported before the daemon starts work) and stopped by close()."""

    def __init__(self, address: str, collector: Collector) -> None:
        host, port = parse_address(address)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)  # type: ignore[arg-type]
        try:
            self.server: WSGIServer
            self.thread: threading.Thread
            self.server, self.thread = start_http_server(port, host, registry)
        except OSError as err:
            raise MetricsError(f"metrics address {address}: {err.strerror or err}") from None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(STOP_TIMEOUT_S)

