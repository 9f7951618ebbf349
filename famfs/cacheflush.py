"""Cache-line write-back and invalidation of device memory, for hosts whose shared memory is not
cache-coherent (`[host] coherence = "flush"`, docs/config.md; docs/consistency.md).

On such memory a store can sit in the writer's CPU cache, and a load can be answered from the
reader's, long after another host changed the line. Upstream famfs writes back and drops lines
around its log (docs/format.md §3.4); here every writer writes back what it stored before the next
store that depends on it (data before the entry, the entry before the header), and every reader
drops the lines it is about to read.

One place decides: the process's `Coherence` policy (`use()`, from the [host] setting, once at
start), which `famfs.device.Device` takes when it opens and hands to everything reading or writing
through it. `COHERENT` does nothing; `Flush` issues the instructions through famfs._cacheline, a
small C extension built at install (setup.py): x86-64 CLWB / CLFLUSHOPT / CLFLUSH + fence, arm64
DC CVAC / DC CIVAC + DSB SY. Any other CPU, or a build without the extension, is refused when
"flush" is chosen, never silently treated as coherent.

Only device memory is accepted (an `mmap.mmap`, a memoryview of one, or a famfs.open buffer):
flushing a bytes object would be harmless but would say the caller has the wrong buffer.
"""

from __future__ import annotations

import mmap
import weakref
from types import ModuleType
from typing import Any, Protocol

from famfs import config


class CacheFlushError(config.ConfigError):
    """coherence = "flush" cannot be honoured here (CPU or build): a set-up error, the message
    says why (each program's exit status for an unusable config)."""


class Coherence(Protocol):
    name: str

    def flush(self, buffer: Any, offset: int, length: int) -> None:
        """Write back buffer[offset:offset+length] to memory (after storing it)."""

    def invalidate(self, buffer: Any, offset: int, length: int) -> None:
        """Drop buffer[offset:offset+length] from this CPU's caches (before loading it)."""


# famfs.open's windows (ctypes arrays over device memory: not hashable, so kept by id).
_windows: dict[int, weakref.ref[Any]] = {}


def device_memory(window: Any) -> None:
    """Declare `window` (famfs.mapping's mapped range) device memory: flush/invalidate accept it."""
    key = id(window)
    _windows[key] = weakref.ref(window, lambda _ref: _windows.pop(key, None))


def _checked(buffer: Any, offset: int, length: int) -> memoryview:
    """`buffer` as a byte view, after checking it is device memory and the range lies within it."""
    owner = buffer.obj if isinstance(buffer, memoryview) else buffer
    known = _windows.get(id(owner))
    if not isinstance(owner, mmap.mmap) and (known is None or known() is not owner):
        raise TypeError(f"{type(owner).__name__}: not a mapping of device memory (an mmap.mmap, a memoryview "
                        f"of one, or a famfs.open buffer); nothing to flush")
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if offset < 0 or length < 0 or offset + length > view.nbytes:
        raise ValueError(f"range [{offset}, {offset + length}) is not within the buffer's {view.nbytes} bytes")
    return view


def _to_end(buffer: Any, offset: int, length: int | None) -> tuple[memoryview, int]:
    """_checked, with a length of None meaning: to the buffer's end."""
    if length is None:
        length = _checked(buffer, 0, 0).nbytes - offset
    return _checked(buffer, offset, length), length


def _extension() -> ModuleType:
    try:
        from famfs import _cacheline
    except ImportError as err:
        raise CacheFlushError(f'coherence = "flush": the famfs._cacheline extension is not built ({err}); '
                              f"reinstall famfs-agent with a C compiler and Python's headers (make bytecode)") from None
    if not _cacheline.info()["line_size"]:
        raise CacheFlushError(f'coherence = "flush": this CPU ({_cacheline.info()["arch"]}) has no cache-line '
                              f'flush famfs knows (x86-64 and arm64 only); use coherence = "coherent"')
    return _cacheline


def info() -> dict[str, Any]:
    """What `flush` would use here: arch, line_size, writeback and invalidate instructions."""
    return dict(_extension().info())


def flush(buffer: Any, offset: int = 0, length: int | None = None) -> None:
    """Write back buffer[offset:offset+length] (default: to its end) to memory, then fence."""
    view, length = _to_end(buffer, offset, length)
    _extension().writeback(view, offset, length)


def invalidate(buffer: Any, offset: int = 0, length: int | None = None) -> None:
    """Drop buffer[offset:offset+length] (default: to its end) from this CPU's caches, then fence."""
    view, length = _to_end(buffer, offset, length)
    _extension().invalidate(view, offset, length)


class _Coherent:
    """Hardware keeps every host's caches coherent: nothing to do."""

    name = "coherent"

    def flush(self, buffer: Any, offset: int, length: int) -> None:
        pass

    def invalidate(self, buffer: Any, offset: int, length: int) -> None:
        pass


class Flush:
    """Memory without hardware coherence: write back after stores, invalidate before loads."""

    name = "flush"

    def __init__(self) -> None:
        self._lines = _extension()  # refused here, at start, on a CPU or build that cannot

    def flush(self, buffer: Any, offset: int, length: int) -> None:
        self._lines.writeback(_checked(buffer, offset, length), offset, length)

    def invalidate(self, buffer: Any, offset: int, length: int) -> None:
        self._lines.invalidate(_checked(buffer, offset, length), offset, length)


COHERENT: Coherence = _Coherent()
_host: Coherence | None = None


def policy(mode: str) -> Coherence:
    """The policy for a [host] coherence value; CacheFlushError if this host cannot honour it."""
    config.check(config.HostSettings, "coherence", mode, "coherence")
    return COHERENT if mode == "coherent" else Flush()


def use(mode: str) -> Coherence:
    """Set this process's policy (each program, once, from its settings) and return it."""
    global _host
    _host = policy(mode)
    return _host


def host() -> Coherence:
    """This process's policy: as set by use(), else the [host] coherence of the config file the
    programs read by default (a library user: famfs.open, famfs.Master), read once."""
    if _host is None:
        use(config.load().host.coherence)
    assert _host is not None
    return _host
