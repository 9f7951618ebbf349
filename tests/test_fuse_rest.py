"""famfs-fuse-mount's REST socket `<shadow>/sock` (fusefs/rest.py), through real mounts: the
three things upstream's C CLI checks to recognize the mount, each endpoint as upstream's answers
it, the socket's life cycle, and clients that must not disturb the mount."""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from famfs.shadowdir import SHADOW_XATTR, SOCKET
from fusefs import rest
from tests.famfsctl_util import famfsctl, make_image
from tests.fuse_util import MOUNT_CLI, WAIT_S, Mount, mount_status, play, wait_for

FUSE_SUPER_MAGIC = 0x65735546
ICACHE_STATS = re.compile(r"icache_stats:\n  search_count:   (\d+)\n  nodes_scanned:  (\d+)\n  search_fail_ct: (\d+)\n")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=WAIT_S)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(self.socket_path)


def call(sock: Path, path: str, method: str = "GET", body: str | None = None) -> tuple[int, str, str]:
    """(status, Content-Type, body); asserts upstream's `Connection: close` on every reply."""
    connection = UnixHTTPConnection(sock)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        assert response.getheader("Connection") == "close"
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


class StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_ulong),
                ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
                ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


def f_type(path: Path) -> int:
    """statfs(2)'s f_type, which os.statvfs does not give."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buffer = StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buffer)) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(path))
    return buffer.f_type & 0xFFFFFFFF


def recognized_by_upstream_cli(mountpoint: Path) -> bool:
    """famfs_lib.c:file_is_famfs for a FUSE mount: f_type, the shadow xattr, `<shadow>/sock`."""
    shadow = os.getxattr(mountpoint, SHADOW_XATTR).decode()
    return f_type(mountpoint) == FUSE_SUPER_MAGIC and stat.S_ISSOCK(os.lstat(Path(shadow) / SOCKET).st_mode)


@pytest.fixture
def tree(tmp_path: Path, system_uuid_file: Path) -> tuple[Path, Path]:
    device = make_image(tmp_path / "dev.img", "8g")
    famfsctl("creat", "--device", device, "-s", "5m", "-r", "-S", "4", "file")
    famfsctl("mkdir", "--device", device, "dir")
    famfsctl("creat", "--device", device, "-s", "1m", "dir/inner")
    shadow = tmp_path / "shadow"
    play(device, shadow)
    return shadow, device


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3 -u"])
def test_socket_while_mounted_gone_after_clean_exit(tmp_path: Path, tree: tuple[Path, Path], how: str) -> None:
    shadow, device = tree
    sock = shadow / SOCKET
    assert not sock.exists()
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        st = os.lstat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == rest.SOCKET_MODE
        assert recognized_by_upstream_cli(mount.mountpoint)
        if how == "fusermount3 -u":
            subprocess.run(["fusermount3", "-u", str(mount.mountpoint)], check=True)
        else:
            mount.signal(signal.Signals[how])
        assert mount.wait() == 0
        assert not sock.exists() and not os.path.ismount(mount.mountpoint)
    assert [path.name for path in shadow.iterdir() if path.name.startswith(f".{SOCKET}")] == []


def test_endpoints_answer_as_upstream(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    shadow, device = tree
    sock = shadow / SOCKET
    with Mount(shadow, device, tmp_path / "mnt", "rescan=0.1") as mount:
        assert mount.process is not None
        assert call(sock, "/pid") == (200, "text/plain", f"pid: {mount.process.pid}\n")
        assert call(sock, "/pid?verbose=1")[2] == f"pid: {mount.process.pid}\n"
        assert call(sock, "/nothing-here") == (404, "text/plain", "Not Found\n")

        status, content_type, body = call(sock, "/icache_stats")
        assert (status, content_type) == (200, "text/yaml")
        match = ICACHE_STATS.fullmatch(body)
        assert match, body
        searches, scanned, failed = map(int, match.groups())
        # dir/ is cached (the mount helper listed the root); dir/inner and the missing name are not
        os.stat(mount.mountpoint / "dir" / "inner")
        assert not (mount.mountpoint / "dir" / "never-logged").exists()
        match = ICACHE_STATS.fullmatch(call(sock, "/icache_stats")[2])
        assert match
        assert tuple(map(int, match.groups())) == (searches + 2, scanned + 1, failed + 1)

        # upstream's own test script asks with curl
        curl = subprocess.run(["curl", "-sS", "--unix-socket", str(sock), "http://localhost/icache_stats"],
                              capture_output=True, text=True, timeout=WAIT_S)
        assert curl.returncode == 0 and ICACHE_STATS.fullmatch(curl.stdout), curl.stderr

        status_fields = dict(word.split("=") for word in call(sock, "/status")[2].split())
        assert status_fields.keys() == mount_status(mount.mountpoint).keys()
        assert int(status_fields["inodes"]) == mount_status(mount.mountpoint)["inodes"]

        assert call(sock, "/icache_dump")[:2] == (200, "text/plain")
        assert wait_for(lambda: "event='icache inode'" in mount.log() and "path='file'" in mount.log(),
                        "the icache dump in the log")

        # Log levels are upstream's syslog numbers; the default, info, is 6.
        assert call(sock, "/log_level") == (200, "text/plain", f"{rest.SYSLOG_LEVEL['info']}\n")
        periodic_rescan = "level='debug' event='rescan' reason='periodic'"
        assert periodic_rescan not in mount.log()
        assert call(sock, "/log_level", "POST", "7")[2] == "log level set to 7 (from 6)\n"
        assert call(sock, "/log_level")[2] == "7\n"
        wait_for(lambda: periodic_rescan in mount.log(), "a debug line (a periodic rescan) once the level is 7")
        # atoi, as upstream: "level=3" is 0, our error level
        assert call(sock, "/log_level", "PUT", "level=3")[2] == "log level set to 0 (from 7)\n"
        assert "event='log level set over REST' syslog_level=0 structlog_level='error' previous=7" in mount.log()
        assert call(sock, "/log_level", "DELETE") == (405, "text/plain", "Method Not Allowed\n")
        mount.signal(signal.SIGTERM)
        assert mount.wait() == 0
    assert "event='unmounted'" not in mount.log()  # info lines are off at level 0


def test_bad_clients_do_not_disturb_the_mount(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    shadow, device = tree
    sock = shadow / SOCKET
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        expected = (mount.mountpoint / "file").read_bytes()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as garbage, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as huge:
            silent.settimeout(rest.REQUEST_TIMEOUT_S + WAIT_S)
            silent.connect(str(sock))  # and sends nothing
            garbage.settimeout(WAIT_S)
            garbage.connect(str(sock))
            garbage.sendall(b"\x00\xff\xfe garbage \x01\r\n\r\n")
            assert receive_all(garbage).startswith(b"HTTP/1.1 400 Bad Request\r\n")
            huge.settimeout(WAIT_S)
            huge.connect(str(sock))
            huge.sendall(b"GET /pid HTTP/1.1\r\nX-Padding: " + b"a" * (2 * rest.MAX_HEAD))
            assert receive_all(huge).startswith(b"HTTP/1.1 413 ")

            assert (mount.mountpoint / "file").read_bytes() == expected
            assert call(sock, "/pid")[0] == 200
            assert receive_all(silent) == b""  # dropped once its time is up
        assert (mount.mountpoint / "file").read_bytes() == expected
        assert "Traceback" not in mount.log()


def receive_all(client: socket.socket) -> bytes:
    """Everything until the server closes; a reset (the server left part of a request unread)
    ends it too."""
    reply = b""
    try:
        while chunk := client.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


def test_stale_socket_replaced_live_one_refused(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    shadow, device = tree
    sock = shadow / SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as killed_daemon:
        killed_daemon.bind(str(sock))  # closed without unlink: what SIGKILL leaves
    stale_inode = os.lstat(sock).st_ino
    with Mount(shadow, device, tmp_path / "mnt") as mount:
        assert mount.process is not None
        assert os.lstat(sock).st_ino != stale_inode
        assert call(sock, "/pid")[2] == f"pid: {mount.process.pid}\n"
        assert recognized_by_upstream_cli(mount.mountpoint)
        # A second (daemonizing) mount of the same tree: the waiting parent prints the daemon's
        # reason, naming the live daemon's pid, not just "exited before mounting".
        second = tmp_path / "second"
        second.mkdir()
        done = subprocess.run([MOUNT_CLI, "--shadow", str(shadow), "--device", str(device), "--log-file",
                               str(tmp_path / "second.log"), str(second)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and not os.path.ismount(second)
        reason = done.stderr.splitlines()[-1]  # after the warning that no agent runs on this tree
        assert f"a live famfs-fuse-mount (pid {mount.process.pid}) answers on {sock}" in reason
        assert "another mount namespace" in reason and "see " in reason
    assert not sock.exists()

    mountpoint = tmp_path / "refused"
    mountpoint.mkdir()

    def refused_mount() -> str:
        done = subprocess.run([MOUNT_CLI, "--foreground", "--shadow", str(shadow), "--device", str(device),
                               str(mountpoint)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and not os.path.ismount(mountpoint)
        return done.stderr

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live_daemon:
        live_daemon.bind(str(sock))
        live_daemon.listen()
        assert f"a live famfs-fuse-mount (pid ?) answers on {sock}" in refused_mount()  # it never answers /pid
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)  # left to its owner
    sock.unlink()
    sock.mkdir()
    assert f"REST socket {sock}: Is a directory" in refused_mount()
    assert sock.is_dir() and [path.name for path in shadow.iterdir() if path.name.startswith(f".{SOCKET}")] == []


@pytest.mark.parametrize(("text", "value"), [(b"7", 7), (b"  -3x", -3), (b"+12\n", 12), (b"level=3", 0), (b"", 0)])
def test_atoi_as_c(text: bytes, value: int) -> None:
    assert rest.atoi(text) == value


@pytest.mark.parametrize(("syslog_level", "name"), [(0, "error"), (3, "error"), (4, "warning"), (5, "info"),
                                                    (6, "info"), (7, "debug"), (9, "debug")])
def test_syslog_levels_map_to_ours(syslog_level: int, name: str) -> None:
    assert rest.structlog_level(syslog_level) == name


def test_parse_head() -> None:
    assert rest.parse_head(b"POST /log_level?x HTTP/1.0\r\nHost: h\r\nContent-Length: 2") == ("POST", "/log_level", 2)
    for head, status in [(b"GET /pid", 400), (b"GET /pid HTTP/2.0", 400), (b"GET pid HTTP/1.1", 400),
                         (b"GET /pid HTTP/1.1\r\nno colon", 400), (b"GET /pid HTTP/1.1\r\nContent-Length: -1", 400),
                         (b"GET /pid HTTP/1.1\r\nTransfer-Encoding: chunked", 400),
                         (b"GET /pid HTTP/1.1\r\nContent-Length: 99999", 413)]:
        with pytest.raises(rest.BadRequest) as refused:
            rest.parse_head(head)
        assert refused.value.status == status, head
