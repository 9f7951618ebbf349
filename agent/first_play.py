"""A first play on two cores: a forked process creates the built tree's files (docs/agent.md,
"How the tree changes").

A first play (ShadowTree.begin_build) spends about half of each FILE entry on the rule book and
half on making its shadow file: decoding the slot again, emitting the YAML, and three system
calls. The rule book must run in log order in one place; making the files need not. So the
agent keeps the rules, and a child forked for the build (`FileCreator`) makes the files, fed
through a pipe with the raw slots the agent checked, in log order.

What the built tree shows the agent is true of the files already there, but a file sent may not
be made yet: when the agent finds no file where it looks, `FileCreator.drain` waits until the
child has made every file sent, and it looks again (ShadowTree._look). To answer the rule
`path_free` without reading the tree (or a per-file table: memory stays flat), the agent keeps a
`NameFilter` of the file names it has sent: a name it has never sent is no file in the tree; a
name it may have sent is looked up in the tree.

Failure: the child reports the first error and exits; the agent learns it at the next send or
drain, and the build is dropped whole (no cursor was saved for it). The child dies with the agent
(PR_SET_PDEATHSIG), ignores SIGTERM/SIGINT (the agent stops it by closing the pipe), and never
returns into the caller's code.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import os
import signal
import struct
import warnings

from famfs import format as fmt
from famfs.shadowdir import FILE_XATTR, encode_file_record
from famfs.shadowyaml import emit_file_yaml

SHADOW_FILE_MODE = 0o644  # upstream's shadow files are 0644 whatever the logged mode
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
SLOTS_PER_FRAME = 64  # slots sent in one write(2): 34 KiB
PIPE_BYTES = 1 << 20  # the request pipe's buffer (the default maximum of fs.pipe-max-size)
FRAME_HEAD = struct.Struct("<I")  # the number of slots that follow; 0 asks for a reply
REPLY_HEAD = struct.Struct("<iqI")  # errno (0: all made), the slot's index, the message's length
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child must not dlopen (a lock)


def write_new_file(name: str, data: bytes, dir_fd: int, index: int | None = None) -> None:
    """A new file `name` in `dir_fd` holding `data`; on failure none (a built tree must hold no
    partial file). `index`: a shadow file's owner-map entry, recorded in FILE_XATTR before the
    file can be seen."""
    fd = os.open(name, NEW_FILE_FLAGS, SHADOW_FILE_MODE, dir_fd=dir_fd)
    try:
        if os.write(fd, data) != len(data):  # a file system filling up mid-write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if index is not None:
            os.setxattr(fd, FILE_XATTR, encode_file_record(index))
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


class NameFilter:
    """The names sent to the child, as a Bloom filter: `may_hold` is never False for a name that
    was added, and True for one that was not about once in 5,000 at `capacity` names (4 probes,
    32 bits a name). Sized by the log's slot count: 4 bytes a slot, 2 MiB for a 256 MiB log,
    whatever the entries are."""

    def __init__(self, capacity: int) -> None:
        bits = max(1 << 16, 1 << (32 * capacity - 1).bit_length())
        self._mask = bits - 1
        self._bits = bytearray(bits >> 3)

    # The 4 probes are h1 + k * h2 from one 64-bit hash (Kirsch and Mitzenmacher), unrolled: both
    # run once per file of a first play, and a loop over the probes took 1.6 times as long.

    def add(self, name: str) -> None:
        h = hash(name)
        mask, bits, step = self._mask, self._bits, (h >> 32) | 1
        probe = h & mask
        bits[probe >> 3] |= 1 << (probe & 7)
        probe = (probe + step) & mask
        bits[probe >> 3] |= 1 << (probe & 7)
        probe = (probe + step) & mask
        bits[probe >> 3] |= 1 << (probe & 7)
        probe = (probe + step) & mask
        bits[probe >> 3] |= 1 << (probe & 7)

    def may_hold(self, name: str) -> bool:
        h = hash(name)
        mask, bits, step = self._mask, self._bits, (h >> 32) | 1
        probe = h & mask
        if not bits[probe >> 3] & (1 << (probe & 7)):
            return False
        probe = (probe + step) & mask
        if not bits[probe >> 3] & (1 << (probe & 7)):
            return False
        probe = (probe + step) & mask
        if not bits[probe >> 3] & (1 << (probe & 7)):
            return False
        probe = (probe + step) & mask
        return bits[probe >> 3] & (1 << (probe & 7)) != 0


class CreatorFailed(OSError):
    """The child could not make a file (its errno and message), or is gone."""


class FileCreator:
    """A forked child making the FILE entries' shadow files in directory `tree_fd`, in order."""

    def __init__(self, tree_fd: int, close_in_child: tuple[int, ...] = ()) -> None:
        requests_r, self._requests = os.pipe2(os.O_CLOEXEC)
        self._replies, replies_w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self._requests, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only means shorter bursts
        parent = os.getpid()
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads: the child below takes no
            # lock another thread could hold (it never logs; its one possible import, PyYAML for
            # a path the YAML template cannot write, is safe: CPython re-creates the import lock
            # in a forked child) and ends in os._exit.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self._requests)
                os.close(self._replies)
                for fd in close_in_child:  # the shadow's lock above all: it must die with the agent
                    os.close(fd)
                code = _serve(parent, requests_r, replies_w, tree_fd)
            finally:
                os._exit(code)
        os.close(requests_r)
        os.close(replies_w)
        self.pid = pid
        self._queued: list[bytes] = []
        self._failure: CreatorFailed | None = None  # once failed, every later call says why

    def create(self, raw: bytes) -> None:
        """Queue the file of FILE slot `raw` (as checked: these bytes, not the log's now)."""
        self._queued.append(raw)
        if len(self._queued) >= SLOTS_PER_FRAME:
            self._send()

    def drain(self) -> None:
        """Return once every queued file exists; CreatorFailed if one could not be made."""
        self._send(reply=True)
        self._reply()

    def close(self) -> None:
        """Drain, then let the child exit (end of input)."""
        try:
            self.drain()
        finally:
            self._end(kill=False)

    def abandon(self) -> None:
        """Stop the child now; files it made stay (the caller drops the whole tree)."""
        self._end(kill=True)

    def _send(self, reply: bool = False) -> None:
        if self._failure is not None:
            raise self._failure
        frame = FRAME_HEAD.pack(len(self._queued)) + b"".join(self._queued) if self._queued else b""
        if reply:
            frame += FRAME_HEAD.pack(0)
        self._queued.clear()
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(self._requests, view):]
        except BrokenPipeError:
            self._reply()  # the child stopped: its reason (or that it exited), raised

    def _reply(self) -> None:
        if self._failure is None:
            head = _read_exact(self._replies, REPLY_HEAD.size)
            if len(head) < REPLY_HEAD.size:
                self._failure = CreatorFailed(errno.EPIPE, "the file-creating process exited")
            elif (failure := REPLY_HEAD.unpack(head))[0]:
                errnum, index, length = failure
                message = _read_exact(self._replies, length).decode(errors="replace")
                self._failure = CreatorFailed(errnum, f"making the shadow file of log entry {index}: {message}")
        if self._failure is not None:
            raise self._failure

    def _end(self, kill: bool) -> None:
        if self.pid < 0:
            return
        if kill:
            os.kill(self.pid, signal.SIGKILL)
        os.close(self._requests)
        os.close(self._replies)
        os.waitpid(self.pid, 0)
        self.pid = -1


def _read_exact(fd: int, length: int) -> bytes:
    """`length` bytes, or fewer at end of input."""
    parts: list[bytes] = []
    while length:
        part = os.read(fd, length)
        if not part:
            break
        parts.append(part)
        length -= len(part)
    return b"".join(parts)


def _serve(parent: int, requests: int, replies: int, tree_fd: int) -> int:
    """The child's loop: frames of slots in, a reply for each request of one, until end of input."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return 1  # the agent died before prctl took
    gc.disable()  # short-lived, no cycles: no collections touching the parent's pages
    index, relpath = -1, ""
    try:
        while head := _read_exact(requests, FRAME_HEAD.size):
            (count,) = FRAME_HEAD.unpack(head)
            if count == 0:
                os.write(replies, REPLY_HEAD.pack(0, index, 0))
                continue
            slots = _read_exact(requests, count * fmt.ENTRY_SIZE)
            for start in range(0, len(slots), fmt.ENTRY_SIZE):
                raw = slots[start:start + fmt.ENTRY_SIZE]
                index = fmt.entry_seal(raw)[0]
                entry = fmt.decode_entry(raw, index)
                assert isinstance(entry, fmt.FileEntry)
                relpath = entry.relpath
                write_new_file(relpath, emit_file_yaml(entry), tree_fd, index)
    except OSError as err:
        message = f"{relpath!r}: {err.strerror or err}".encode()
        os.write(replies, REPLY_HEAD.pack(err.errno or errno.EIO, index, len(message)) + message)
        return 1
    except Exception as err:  # noqa: BLE001 (a bug: said, never raised into the agent's stack)
        message = repr(err).encode()
        os.write(replies, REPLY_HEAD.pack(errno.EIO, index, len(message)) + message)
        return 1
    return 0
