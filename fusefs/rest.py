"""The REST socket `<shadow>/sock`: upstream famfs_fused's small HTTP API on a unix socket.

Upstream's C CLI takes a FUSE mount for famfs when its root answers `user.famfs.shadow` and
`<shadow>/sock` is a socket, and `famfs mount` asks `/icache_stats` whether the daemon is alive
(docs/format.md §6). Same endpoints and bodies as upstream; one request per connection, every reply with
`Connection: close`.

Served from the daemon's trio loop, one task per connection: a request is bounded in size and
time, so a slow or malformed client costs a sleeping task, never a FUSE request's latency. No
error of a connection reaches the daemon's nursery.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from famfs.shadowdir import SOCKET
from fusefs.inodes import InodeTable
from fusefs.operations import LookupCounters

log = structlog.get_logger("famfs-fuse-mount")

SOCKET_MODE = 0o660  # as upstream's
MAX_HEAD = 8192  # request line and headers
MAX_BODY = 4096  # the only body is a log level
REQUEST_TIMEOUT_S = 2.0  # a whole request, read and answered: a local client sends it in one write
PROBE_TIMEOUT_S = 1.0  # connecting to a socket file left before us
DUMP_CHUNK = 1000  # /icache_dump logs this many inodes between checkpoints
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           500: "Internal Server Error"}

# Upstream's levels are syslog's (famfs_log.h): 0 EMERG, 1 ALERT, 2 CRIT, 3 ERR, 4 WARNING,
# 5 NOTICE, 6 INFO, 7 DEBUG; GET answers the number last set. Ours are structlog's four.
SYSLOG_LEVEL = {"error": 3, "warning": 4, "info": 6, "debug": 7}
SYSLOG_NOTICE = 5


class RestError(Exception):
    """The socket cannot be set up; the message names the path."""


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: str
    content_type: str = "text/plain"

    def encode(self) -> bytes:
        body = self.body.encode()
        return (f"HTTP/1.1 {self.status} {REASONS[self.status]}\r\nContent-Type: {self.content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def structlog_level(syslog_level: int) -> str:
    """NOTICE and INFO are both our info; EMERG..ERR are all our error."""
    if syslog_level >= SYSLOG_LEVEL["debug"]:
        return "debug"
    if syslog_level >= SYSLOG_NOTICE:
        return "info"
    return "warning" if syslog_level == SYSLOG_LEVEL["warning"] else "error"


def atoi(text: bytes) -> int:
    """C's atoi, as upstream parses the body: leading blanks, a sign, digits; anything else 0."""
    stripped = text.lstrip(b" \t\n\r\f\v")
    sign = -1 if stripped[:1] == b"-" else 1
    digits = stripped[1:] if stripped[:1] in (b"-", b"+") else stripped
    count = 0
    while count < len(digits) and digits[count:count + 1].isdigit():
        count += 1
    return sign * int(digits[:count]) if count else 0


class RuntimeLogLevel:
    """The daemon's structlog level, changeable while it runs.

    structlog caches each logger's level filter on first use; made before the daemon logs
    anything, this turns the cache off so a new level reaches every module's logger. The daemon
    logs a few lines a minute: assembling a logger per call costs nothing that matters.
    """

    def __init__(self, level: str) -> None:
        structlog.configure(cache_logger_on_first_use=False)
        self.value = SYSLOG_LEVEL[level]

    def set(self, value: int) -> None:
        self.value = value
        level = logging.getLevelNamesMapping()[structlog_level(value).upper()]
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


def parse_head(head: bytes) -> tuple[str, str, int]:
    """Method, path (query dropped) and Content-Length of a request's line and headers."""
    try:
        lines = head.decode("ascii").replace("\r\n", "\n").split("\n")
    except UnicodeDecodeError:
        raise BadRequest(400, "not ASCII") from None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[0].isalpha():
        raise BadRequest(400, f"bad request line {lines[0][:80]!r}")
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if not path.startswith("/"):
        raise BadRequest(400, f"bad target {target[:80]!r}")
    length = 0
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(400, f"bad header {line[:80]!r}")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise BadRequest(400, f"bad Content-Length {value.strip()[:20]!r}")
            length = int(value)
        elif name.strip().lower() == "transfer-encoding":
            raise BadRequest(400, "Transfer-Encoding is not supported")
    if length > MAX_BODY:
        raise BadRequest(413, f"body of {length} bytes")
    return method, path, length


def head_end(buffer: bytes) -> tuple[int, int]:
    """Where the headers end and the body starts in `buffer`; (-1, -1) if not yet."""
    ends = [(buffer.find(separator), len(separator)) for separator in (b"\r\n\r\n", b"\n\n")]
    found = [(at, at + size) for at, size in ends if at >= 0]
    return min(found) if found else (-1, -1)


async def read_request(stream: trio.SocketStream) -> Request | None:
    """One request, or None if the client closed before sending a whole one."""
    buffer = b""
    end, body_start = head_end(buffer)
    while end < 0:
        if len(buffer) > MAX_HEAD:
            raise BadRequest(413, f"headers over {MAX_HEAD} bytes")
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk:
            return None
        buffer += chunk
        end, body_start = head_end(buffer)
    method, path, length = parse_head(buffer[:end])
    body = buffer[body_start:]
    while len(body) < length:
        chunk = await stream.receive_some(length - len(body))
        if not chunk:
            return None
        body += chunk
    return Request(method, path, body[:length])


@dataclass
class Endpoints:
    """What the API reports: the daemon's own state, read on the trio thread."""

    table: InodeTable
    lookups: LookupCounters
    log_level: RuntimeLogLevel
    status: Callable[[], str]
    # /identity (ours, for `famfs-fuse-mount health`): fs_uuid, generation, refusal, device, mountpoint;
    # asked at each request: `mkfs --force` or a replaced image switches the served file system
    identity: Callable[[], dict[str, object]]

    async def answer(self, request: Request) -> Response:
        if request.path == "/log_level":
            return self._log_level(request)
        if request.path == "/icache_stats":
            # Upstream's icache is a list searched node by node; ours is a hash table, so a
            # search that finds its inode examines exactly one node.
            return Response(200, f"icache_stats:\n  search_count:   {self.lookups.searches}\n"
                                 f"  nodes_scanned:  {self.lookups.searches - self.lookups.misses}\n"
                                 f"  search_fail_ct: {self.lookups.misses}\n", "text/yaml")
        if request.path == "/icache_dump":
            return Response(200, f"icache dumped to the log: {await self._dump()} inodes\n")
        if request.path == "/pid":
            return Response(200, f"pid: {os.getpid()}\n")
        if request.path == "/status":
            return Response(200, f"{self.status()}\n")
        if request.path == "/identity":
            return Response(200, json.dumps({**self.identity(), "pid": os.getpid()}) + "\n", "application/json")
        return Response(404, "Not Found\n")

    def _log_level(self, request: Request) -> Response:
        if request.method == "GET":
            return Response(200, f"{self.log_level.value}\n")
        if request.method in ("POST", "PUT"):
            new, old = atoi(request.body), self.log_level.value
            quieter = new < old  # the line goes out under whichever level lets it through
            if not quieter:
                self.log_level.set(new)
            log.warning("log level set over REST", syslog_level=new, structlog_level=structlog_level(new), previous=old)
            if quieter:
                self.log_level.set(new)
            return Response(200, f"log level set to {new} (from {old})\n")
        return Response(405, "Method Not Allowed\n")

    async def _dump(self) -> int:
        nodes = list(self.table.nodes.values())  # a snapshot: the table changes between chunks
        log.info("icache dump", inodes=len(nodes))
        for start in range(0, len(nodes), DUMP_CHUNK):
            for node in nodes[start:start + DUMP_CHUNK]:
                log.info("icache inode", ino=node.ino, parent=node.parent, path=os.fsdecode(node.relpath),
                         directory=node.is_dir, lookups=node.lookups, opens=node.opens, present=node.present)
            await trio.lowlevel.checkpoint()  # FUSE requests run between chunks
        return len(nodes)


def _ask_pid(probe: socket.socket) -> str:
    """The pid a live daemon's /pid answers, or "?" (it may be busy: the probe's timeout holds)."""
    try:
        probe.sendall(b"GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := probe.recv(4096):
            answer += chunk
    except OSError:
        return "?"
    found = re.search(rb"pid: (\d+)", answer)
    return found[1].decode() if found else "?"


class RestSocket:
    """The listening socket at `<shadow>/sock`, bound before the mount and removed after it."""

    def __init__(self, shadow_dir: str) -> None:
        self.path = os.path.join(shadow_dir, SOCKET)
        self._refuse_live_daemon()
        # Bound under a private name, then renamed over whatever is there (a stale socket from
        # a killed daemon): the path is never missing, and never has a mode other than ours.
        staged = os.path.join(shadow_dir, f".{SOCKET}.{os.getpid()}")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)  # our pid's, from an earlier daemon killed while binding
            self.socket.bind(staged)
            os.chmod(staged, SOCKET_MODE)
            self.socket.listen(socket.SOMAXCONN)
            os.rename(staged, self.path)
            st = os.stat(self.path)
        except OSError as err:
            self.socket.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            raise RestError(f"REST socket {self.path}: {err.strerror}") from None
        self.identity = (st.st_dev, st.st_ino)

    def _refuse_live_daemon(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            return  # no daemon's: replaced
        pid = "?"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(PROBE_TIMEOUT_S)
            try:
                probe.connect(self.path)
                pid = _ask_pid(probe)
            except TimeoutError:
                pass  # alive, its backlog full
            except OSError as err:
                if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    log.info("replacing a stale REST socket", path=self.path)
                    return
                raise RestError(f"REST socket {self.path}: {err.strerror}") from None
        raise RestError(f"this shadow tree is served already: a live famfs-fuse-mount (pid {pid}) answers on "
                        f"{self.path}, perhaps mounted in another mount namespace; unmount it (fusermount3 -u) "
                        f"or stop it (kill {pid}) first")

    async def serve(self, endpoints: Endpoints) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.socket))
        try:
            await trio.serve_listeners(functools.partial(_connection, endpoints=endpoints), [listener])
        except OSError as err:
            # serve_listeners rides out descriptor exhaustion itself; anything else ends the API,
            # not the mount.
            log.error("REST socket stopped", path=self.path, error=str(err))

    def close(self) -> None:
        """Remove the socket file if it is still ours (not one a later daemon put there)."""
        self.socket.close()
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.identity:
                os.unlink(self.path)


async def _connection(stream: trio.SocketStream, endpoints: Endpoints) -> None:
    try:
        async with stream:
            response = await _respond(stream, endpoints)
            if response is not None:
                # A reply is far smaller than the socket buffer: this cannot wait on the client.
                await stream.send_all(response.encode())
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client left: nothing to answer


async def _respond(stream: trio.SocketStream, endpoints: Endpoints) -> Response | None:
    """The reply, or None for a client that sent no whole request in time."""
    try:
        request = None
        # Only the client's part is timed: a dump of a large table takes what it takes.
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            request = await read_request(stream)
        return None if request is None else await endpoints.answer(request)
    except BadRequest as err:
        log.info("bad REST request", status=err.status, reason=str(err))
        return Response(err.status, f"{REASONS[err.status]}\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        raise
    except Exception:
        log.exception("REST request failed, answered 500")
        return Response(500, f"{REASONS[500]}\n")
