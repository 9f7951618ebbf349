"""Prometheus metrics, the part famfs-agent and famfs-fuse-mount share: the address setting, the
build-info metric, and the HTTP server (docs/operations.md).

The server binds to loopback unless the address names a host (":PORT" is 127.0.0.1:PORT;
"0.0.0.0:PORT" or "[::]:PORT" expose it) and serves /metrics only (any other path: 404). What it
exposes is counts, indexes, the file system's UUID and the host's role: no path, no file name,
no device.

Each daemon keeps its figures as plain ints that its own code bumps, and a collector turns them
into metric families only when Prometheus scrapes. The server answers from its own thread: a
scrape never runs on the follower's loop or the mount's trio thread, and reads only ints and
lengths (atomic under the GIL). Imported only when metrics are on: prometheus_client adds tens of
milliseconds to a program's start.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric

from famfs import config

STOP_TIMEOUT_S = 5.0  # the server thread notices shutdown within its 0.5 s poll
METRICS_PATH = "/metrics"  # the one path served
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricsError(Exception):
    """The metrics address cannot be used; the message names it."""


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


def parse_address(address: str) -> tuple[str, int]:
    """"HOST:PORT", ":PORT" (loopback) or "[V6]:PORT" -> (host, port) (the config's rule)."""
    try:
        return config.parse_address(address)
    except ValueError as err:
        raise MetricsError(f"metrics address: {err}") from None


def build_info(prefix: str) -> GaugeMetricFamily:
    """`<prefix>_build_info{version, python} 1`: what runs (versions only)."""
    return _info(f"{prefix}_build_info", "famfs-agent version and Python version",
                 version=_version(), python=platform.python_version())


@functools.cache
def _version() -> str:
    """Looked up once: importlib.metadata searches sys.path (~0.4 ms, a fifth of a mount's scrape)."""
    return importlib.metadata.version("famfs-agent")


def filesystem_info(prefix: str, fs_uuid: str, **labels: str) -> GaugeMetricFamily:
    """`<prefix>_filesystem_info{fs_uuid, ...} 1`: the file system served (never a device path)."""
    return _info(f"{prefix}_filesystem_info", "The file system served", fs_uuid=fs_uuid, **labels)


def _info(name: str, documentation: str, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), 1)
    return family


def only_metrics(app: WsgiApp) -> WsgiApp:
    """`app` at METRICS_PATH, 404 anywhere else (prometheus_client's app answers every path)."""
    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == METRICS_PATH:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: the metrics are at {METRICS_PATH}\n".encode()]
    return serve


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up the daemon's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape is not an event worth a log line


class MetricsServer:
    """The /metrics HTTP endpoint in a daemon thread, bound at construction (so a bad address is
    reported before the daemon starts work) and stopped by close()."""

    def __init__(self, address: str, collector: Collector) -> None:
        host, port = parse_address(address)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)  # type: ignore[arg-type]
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
            self.server: WSGIServer = make_server(host, port, only_metrics(make_wsgi_app(registry)), server_class,
                                                  handler_class=_QuietHandler)
        except OSError as err:
            raise MetricsError(f"metrics address {address}: {err.strerror or err}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(STOP_TIMEOUT_S)

