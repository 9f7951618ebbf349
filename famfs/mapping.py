"""famfs files mapped straight from the device: one contiguous range of this process's address
space over a file's extents, as the famfs kernel's iomap gives a mapped file (docs/library.md).

The range is reserved once (anonymous, PROT_NONE), then each extent, or each interleave chunk, of
the device is mapped at its place with MAP_SHARED | MAP_FIXED. No byte is copied and no page
cache of a FUSE mount sits in between: on devdax and pmem the process touches the shared memory
itself; on an image file it shares the file's page cache with every other process of the host.

The mapping lives as long as the last view of it: closing a file drops its own view, and the
pages are unmapped when nothing (a numpy array, an Arrow buffer, a slice) refers to them any more,
so no view is ever left pointing at unmapped memory.

An image file shrunk under a mapping (truncate(1), a shell's `>`; famfs's own tools never shrink
one) makes a touch of a page past its new end a SIGBUS, which kills the process: Python cannot
turn a fault in mapped memory into an exception. What can be checked is checked: the image's size
at open (FamfsLog refuses an image shorter than its superblock says) and at every `.buffer`
(ImageTruncated, an OSError, instead of a view that would fault). A view already handed out
cannot be checked (docs/library.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import mmap
import os
import stat
import time
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TypeVar

from famfs import cacheflush, config, devices, pins, rules, safepath, shadowdir
from famfs import format as fmt
from famfs.device import Device, map_alignment, probe
from famfs.devices import AddedDevices
from famfs.famfslog import FamfsLog
from famfs.ownership import ShadowCheck
from famfs.shadowyaml import meta_extents, parse_shadow_file

MODES = ("r", "r+")
_T = TypeVar("_T")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value
MAP_FIXED = 0x10  # <sys/mman.h>; Python's mmap module does not export it
PROT_NONE = 0  # neither is PROT_NONE
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
# open(wait=): the shadow file is looked for again after these pauses, doubling (a file the
# master just logged shows within milliseconds when the agent follows; no busy spin meanwhile).
WAIT_FIRST_PAUSE_S = 0.001
WAIT_MAX_PAUSE_S = 0.05


def _mmap(address: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    got = _libc.mmap(address, length, prot, flags, fd, offset)
    if got == MAP_FAILED or got is None:
        code = ctypes.get_errno()
        raise OSError(code, f"mmap of {length:#x} bytes at device offset {offset:#x}: {os.strerror(code)}")
    return int(got)


def _munmap(address: int, length: int) -> None:
    _libc.munmap(address, length)


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """`length` bytes of the file at `file_offset` live at `device_offset` of device `devindex`."""

    file_offset: int
    device_offset: int
    length: int
    devindex: int = 0


def pieces(entry: fmt.FileEntry, span: int) -> list[Piece]:
    """The file's first `span` bytes (its size rounded up to the mapping granule) as device
    pieces in file order, neighbours that are contiguous on the device joined (fewer mmaps)."""
    whole = entry._replace(size=span)
    joined: list[Piece] = []
    position = 0
    for devindex, device_offset, length in fmt.device_pieces(whole):
        last = joined[-1] if joined else None
        if last is not None and last.devindex == devindex and last.device_offset + last.length == device_offset:
            joined[-1] = Piece(last.file_offset, last.device_offset, last.length + length, devindex)
        else:
            joined.append(Piece(position, device_offset, length, devindex))
        position += length
    return joined


def _unmap(address: int, length: int, pin_fds: tuple[int, ...]) -> None:
    _munmap(address, length)
    for fd in pin_fds:  # the mapping is gone: so is what it pinned
        try:
            os.close(fd)
        except OSError:
            pass  # ENOTCONN: the descriptor through a mount whose daemon died; closed all the same


def map_file(fd: int | Mapping[int, int], entry: fmt.FileEntry, granule: int, *, writable: bool, device: str,
             pin_fds: tuple[int, ...] = ()) -> memoryview:
    """A memoryview of exactly entry.size bytes over the file's extents of device `fd` (or, for
    a file system over several devices, of `fd[devindex]` for each extent: docs/devices.md).

    Every extent must already be checked against the device and its log (rules.check_extents).
    `pin_fds` (docs/reclaim.md, "Pins") are closed when the pages are unmapped, not before; they
    are the caller's to close if this raises.
    """
    if entry.size == 0:
        for pin_fd in pin_fds:
            os.close(pin_fd)  # nothing mapped: nothing to pin
        return memoryview(bytearray(0)) if writable else memoryview(b"")
    span = fmt.round_up(entry.size, granule)
    fds = {0: fd} if isinstance(fd, int) else fd
    found = pieces(entry, span) if span <= entry.capacity() else []
    if any(piece.devindex not in fds for piece in found):
        raise OSError(errno.EIO, f"{device}: {entry.relpath}: an extent is on a device this host has not found")
    misaligned = [p for p in found if (p.device_offset | p.length) % granule]
    if not found or misaligned:
        raise OSError(errno.EINVAL, f"{device}: {entry.relpath}: extents are not whole {granule:#x}-byte pieces of "
                      f"the device, which it maps only in those")
    # Reserve the whole range first so the pieces land side by side, aligned to the allocation
    # unit (devdax needs its alignment; on other devices it lets the kernel use large pages).
    align = max(granule, fmt.ALLOC_UNIT)
    reserved = _mmap(None, span + align, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    base = fmt.round_up(reserved, align)
    if base > reserved:
        _munmap(reserved, base - reserved)
    _munmap(base + span, reserved + align - base)  # the tail of the slack: never empty (base < reserved + align)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        for piece in found:
            _mmap(base + piece.file_offset, piece.length, prot, mmap.MAP_SHARED | MAP_FIXED, fds[piece.devindex],
                  piece.device_offset)
    except OSError as err:
        _munmap(base, span)
        raise OSError(err.errno, f"{device}: {entry.relpath}: {err.strerror}") from None
    window = (ctypes.c_ubyte * entry.size).from_address(base)
    # The pages go when the last view of `window` goes (not at interpreter exit, when views
    # may still be alive), never before.
    weakref.finalize(window, _unmap, base, span, pin_fds).atexit = False
    cacheflush.device_memory(window)  # MappedFile.flush/invalidate may take its lines
    view = memoryview(window).cast("B")
    return view if writable else view.toreadonly()


class ImageTruncated(OSError):
    """The image file is now too short for the file's bytes: touching them would be a SIGBUS."""


def data_end(entry: fmt.FileEntry) -> int:
    """The primary's offset just past the file's last byte there: the image must be at least that
    long (extents on added devices are mapped from those devices' own descriptors)."""
    return max((offset + length for devindex, offset, length in fmt.device_pieces(entry) if devindex == 0), default=0)


def check_image_size(fd: int, needed: int, where: str) -> None:
    """ImageTruncated if image file `fd` is shorter than `needed` (data_end of the file mapped)."""
    st = os.fstat(fd)
    if st.st_size < needed:
        raise ImageTruncated(errno.EIO, f"{where}: the image file is {st.st_size} bytes, the file's bytes reach "
                             f"{needed}: it was truncated, and touching them would kill this process (SIGBUS)")


class MappedFile:
    """A famfs file mapped from the device. `.buffer` is a memoryview of exactly its size.

    Closing drops this object's view; the memory is unmapped once no other view (numpy array,
    Arrow buffer, slice) refers to it. A famfs file's size is fixed: the buffer never grows.
    On an image file, `.buffer` first checks the image is still long enough (ImageTruncated).
    Where memory is not cache-coherent ([host] coherence = "flush"), the buffer's lines are
    invalidated at open; `invalidate()` before reading again what another host may have written
    since, `flush()` after writing (no-ops on coherent memory).
    """

    def __init__(self, relpath: str, entry: fmt.FileEntry, device: str, mode: str, view: memoryview,
                 image_fd: int | None = None, coherence: cacheflush.Coherence | None = None) -> None:
        self.relpath = relpath
        self.coherence = cacheflush.host() if coherence is None else coherence
        self.entry = entry
        self.device = device
        self.mode = mode
        self._view: memoryview | None = view
        # The mapped window itself (not this view): alive while any view of it is.
        self._window = weakref.ref(view.obj) if entry.size else None
        # An image file's descriptor, kept to fstat it (not its path: it may be replaced); closed
        # by close() or, at the latest, with this object.
        self._image_fd = image_fd
        self._image_needed = data_end(entry) if image_fd is not None else 0  # once: a striped file has many pieces
        self._close_fd = weakref.finalize(self, os.close, image_fd) if image_fd is not None else None

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def closed(self) -> bool:
        return self._view is None

    @property
    def mapped(self) -> bool:
        """Whether the pages are still mapped (after close: whether some view still holds them)."""
        return self._window is not None and self._window() is not None

    @property
    def buffer(self) -> memoryview:
        if self._view is None:
            raise ValueError(f"{self.relpath}: I/O operation on a closed famfs file")
        if self._image_fd is not None:
            check_image_size(self._image_fd, self._image_needed, f"{self.device}: {self.relpath}")
        return self._view

    def flush(self, offset: int = 0, length: int | None = None) -> None:
        """Write back buffer[offset:offset+length] (default: to the end) from this CPU's caches to
        the device, so other hosts can read it (docs/library.md)."""
        if found := self._range(offset, length):
            self.coherence.flush(*found)

    def invalidate(self, offset: int = 0, length: int | None = None) -> None:
        """Drop buffer[offset:offset+length] (default: to the end) from this CPU's caches: the
        next read of it loads what the device holds now (docs/library.md)."""
        if found := self._range(offset, length):
            self.coherence.invalidate(*found)

    def _range(self, offset: int, length: int | None) -> tuple[memoryview, int, int] | None:
        """(buffer, offset, length) checked against the file's size; None for no bytes."""
        view = self.buffer
        length = self.size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{self.relpath}: range [{offset}, {offset + length}) is not within the file's {self.size} bytes")
        return (view, offset, length) if length else None

    def close(self) -> None:
        if self._close_fd is not None:
            self._close_fd()
            self._image_fd = self._close_fd = None
        view, self._view = self._view, None
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass  # something holds a buffer of it: the pages stay until that goes

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"size={self.size}"
        return f"<famfs.MappedFile {self.relpath!r} on {self.device} mode={self.mode!r} {state}>"


def live_file(famfs_log: FamfsLog, relpath: str) -> fmt.FileEntry:
    """The FILE entry that names relpath now: the log replayed by the rule book, as every
    reader replays it. FileNotFoundError if there is none; FormatError naming the rule if the
    entries for it were left out because they break one."""
    refused: list[rules.Problem] = []

    def note(found: rules.Problem) -> None:
        if getattr(found.entry, "relpath", None) == relpath:
            refused.append(found)

    namespace = rules.replay(famfs_log, note)
    kind = namespace.kind(relpath)
    if kind is rules.Kind.DIR:
        raise IsADirectoryError(errno.EISDIR, f"{famfs_log.path}: {relpath or '/'}: is a directory")
    if kind is None:
        if refused:
            last = refused[-1]
            raise fmt.FormatError(f"{famfs_log.path}: {relpath}: log entry {last.index} is left out by every reader: "
                                  f"{last.violation}; nothing mapped")
        raise FileNotFoundError(errno.ENOENT, f"{famfs_log.path}: {relpath}: no such famfs file")
    return namespace.files[relpath][1]


def _shadow_entry(found: shadowdir.MountTarget) -> fmt.FileEntry:
    """The entry the mount serves for a path: its shadow file, resolved beneath the shadow root
    (no symlink or mount point on the way: famfs.safepath), parsed."""
    root = os.path.join(found.shadow, shadowdir.ROOT)
    path = os.path.join(root, found.relpath)
    try:
        with safepath.Root(root) as root_fd:
            if stat.S_ISDIR(safepath.lstat_beneath(root_fd, found.relpath).st_mode):
                raise IsADirectoryError(errno.EISDIR, f"{found.root}/{found.relpath}: is a directory")
            raw = shadowdir.read_shadow_file(found.relpath, root_fd)
    except IsADirectoryError:
        raise
    except OSError as err:
        raise FileNotFoundError(errno.ENOENT, f"{found.root}/{found.relpath}: no such famfs file ({err.strerror})") from None
    try:
        return parse_shadow_file(raw, found.relpath)
    except fmt.FormatError as err:
        raise fmt.FormatError(f"{path}: {err}") from None


def _served(found: shadowdir.MountTarget, famfs_log: FamfsLog, entry: fmt.FileEntry, added: AddedDevices) -> None:
    """FileNotFoundError unless the log holds `entry` for its path, as the mount checks it
    (famfs.ownership): a shadow file planted by anyone is never mapped."""
    check = ShadowCheck(famfs_log, os.path.join(found.shadow, shadowdir.AGENT_DIR, shadowdir.OWNERS_FILE), added.size)
    try:
        problem = check.file_problem(entry)
    finally:
        check.close()
    if problem is not None:
        raise FileNotFoundError(errno.ENOENT, f"{found.root}/{found.relpath}: not served: its shadow file {problem}")


def _added_devices(famfs_log: FamfsLog, shadow: str | None, writable: bool) -> AddedDevices:
    """The file system's added devices (docs/devices.md): as this host's agent found them (its
    daxdev table), or without an agent found here from the log's ADD_DAXDEV entries and the
    paths of [host] devices."""
    fs_uuid = famfs_log.superblock.fs_uuid
    if shadow is not None:
        return AddedDevices(fs_uuid, table_path=os.path.join(shadow, shadowdir.AGENT_DIR, shadowdir.DAXDEVS_FILE),
                            writable=writable)
    added = [(n, e) for n, e in famfs_log.entries() if isinstance(e, fmt.AddDaxdevEntry)]
    rows = devices.logged_rows(famfs_log.superblock, famfs_log.path, added)
    if len(rows) > 1:
        try:
            configured = config.load().host.devices
        except config.ConfigError:
            configured = ()
        rows = devices.resolve(fs_uuid, rows, configured)
    return AddedDevices(fs_uuid, rows=rows, writable=writable)


def _descriptors(opened: Device, added: AddedDevices, entry: fmt.FileEntry, where: str) -> dict[int, int]:
    """The descriptor of each device the file's extents are on; OSError(EIO) naming a missing one."""
    fds = {0: opened.fd}
    for devindex in {extent.devindex for extent in entry.all_extents()} - {0}:
        found = added.device(devindex)
        if found is None:
            raise OSError(errno.EIO, f"{where}: {entry.relpath}: its device {devindex} is not available on this host "
                                     f"(docs/devices.md)")
        fds[devindex] = found.fd
    return fds


def awaited(look: Callable[[], _T], deadline: float) -> _T:
    """look(), again until `deadline` (time.monotonic()) while it raises FileNotFoundError: this
    host's agent shows a file some milliseconds after the master logged it, and its mount a moment
    after that. The last FileNotFoundError if it never does. (open(wait=), famfsctl after logging.)"""
    pause = WAIT_FIRST_PAUSE_S
    while True:
        try:
            return look()
        except FileNotFoundError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(2 * pause, WAIT_MAX_PAUSE_S)


def _mount_pin(found: shadowdir.MountTarget) -> int:
    """A read-only descriptor of the file through the mount: the mount's pin of it for as long
    as it is open (docs/reclaim.md, "Pins"), taken before the shadow YAML is read."""
    try:
        return os.open(os.path.join(found.root, found.relpath), os.O_RDONLY | os.O_CLOEXEC)
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, f"{found.root}/{found.relpath}: is a directory") from None
    except OSError as err:
        raise type(err)(err.errno, f"{found.root}/{found.relpath}: cannot open through the mount: "
                        f"{err.strerror}") from None


def _device_pin(fs_uuid: str, relpath: str, shadow: str | os.PathLike[str] | None) -> int | None:
    """The flock pin of `relpath` in the shadow dir of this host's agent, if that agent follows
    this file system with a host record (`shadow`, else [agent] shadow of the settings); None if
    none does: then no host record stands for this process (docs/library.md)."""
    if shadow is None:
        try:
            shadow = config.load().agent.shadow
        except config.ConfigError:
            return None
    state = shadowdir.read_state(shadow)
    if state is None or state.fs_uuid != fs_uuid or state.host_slot is None:
        return None
    return pins.pin(shadow, relpath)


def open(path: str | os.PathLike[str], mode: str = "r", *, device: str | os.PathLike[str] | None = None,
         wait: float = 0, shadow: str | os.PathLike[str] | None = None) -> MappedFile:
    """Map a famfs file from the device (docs/library.md).

    `path` is a path inside a famfs mount (the device is the one famfs-agent recorded for the
    mount's shadow dir, the extents those the mount serves), or, with `device`, a relpath read
    from that device's log: no mount and no agent needed. `mode` "r" maps read-only, "r+"
    writable (the size stays fixed). Every extent is checked against the device and its log
    before anything is mapped. `wait` (a path in a mount only): seconds to wait for this host's
    agent to show a file it does not show yet (one the master just logged). The file stays
    pinned while it is mapped (docs/reclaim.md): through the mount by a descriptor open on it,
    with `device` by a flock in the shadow dir of this host's agent (`shadow`, default
    [agent] shadow), if one follows that file system.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: famfs files open as 'r' or 'r+' (a file's size is fixed)")
    if wait < 0 or (wait and device is not None):
        raise ValueError(f"wait={wait!r}: a number of seconds >= 0, for a path in a mount (with device=, "
                         f"the log itself is read: a logged file is there at once)")
    taken: list[int] = []  # the pins, until map_file owns them
    try:
        return _open(path, mode, device, wait, shadow, taken)
    except BaseException:
        for fd in taken:
            os.close(fd)
        raise


def _open(path: str | os.PathLike[str], mode: str, device: str | os.PathLike[str] | None, wait: float,
          shadow: str | os.PathLike[str] | None, pin_fd_out: list[int]) -> MappedFile:
    """open(), the pins it takes put in `pin_fd_out` until map_file owns them."""
    deadline = time.monotonic() + wait
    if device is None:
        found = shadowdir.locate_in_mount(path)
        device_path, relpath, entry = found.device, found.relpath, awaited(lambda: _shadow_entry(found), deadline)
    else:
        device_path, relpath, entry = os.fspath(device), os.fspath(path).rstrip("/"), None
        try:
            fmt.check_relpath(relpath.encode())
        except fmt.FormatError as err:
            raise fmt.FormatError(f"{relpath!r}: not a famfs relpath: {err}") from None
    granule = map_alignment(probe(device_path))  # before the device is mapped at all (fsdev_dax)
    with Device(device_path, writable=mode == "r+") as opened, contextlib.ExitStack() as stack:
        famfs_log = FamfsLog(opened)
        added = _added_devices(famfs_log, found.shadow if device is None else None, mode == "r+")
        stack.callback(added.close)  # the pieces stay mapped: map_file's mmaps hold the devices
        if entry is None:
            pin_fd = _device_pin(str(famfs_log.superblock.fs_uuid), relpath, shadow)
            if pin_fd is not None:
                pin_fd_out.append(pin_fd)  # pin, then look
            entry = live_file(famfs_log, relpath)
        metadata = relpath.split("/", 1)[0] == shadowdir.META_DIR
        try:
            rules.check_extents(entry, rules.Geometry.of(famfs_log.superblock), metadata=metadata)
        except fmt.FormatError as err:
            raise fmt.FormatError(f"{device_path}: {relpath}: {err}; nothing mapped") from None
        if device is None:
            if metadata:
                if entry.stripes or entry.extents != (meta_extents(famfs_log.superblock.log_len).get(relpath),):
                    raise FileNotFoundError(errno.ENOENT, f"{found.root}/{relpath}: not the superblock or log file "
                                            f"as the agent writes them; nothing mapped")
            else:
                _served(found, famfs_log, entry, added)
                # Its own flock pin as well as the mount's: the mount's dies with the mount
                # daemon (kill -9), the mapping of device memory does not (docs/reclaim.md, "Pins").
                own_pin = _device_pin(str(famfs_log.superblock.fs_uuid), relpath, found.shadow)
                if own_pin is not None:
                    pin_fd_out.append(own_pin)
            # Pin, then look: the look that counts is the one after the pins (the first gave
            # the errors above in the library's words).
            pin_fd_out.append(awaited(lambda: _mount_pin(found), deadline))
            if _shadow_entry(found) != entry:
                raise FileNotFoundError(errno.ENOENT, f"{found.root}/{relpath}: deleted or replaced while being opened")
        view = map_file(_descriptors(opened, added, entry, device_path), entry, granule, writable=mode == "r+",
                        device=device_path, pin_fds=tuple(pin_fd_out))
        pin_fd_out.clear()  # map_file owns them now
        image_fd = os.dup(opened.fd) if opened.info.kind == "file" else None
        mapped = MappedFile(relpath, entry, device_path, mode, view, image_fd, opened.coherence)
    mapped.invalidate()  # bytes another host wrote before this open: read from the device, not a stale cache
    return mapped
