"""Ordinary tools verbatim on the master's mount: tar -xf, tar -xpf, rsync -a, cp -a, cp -r and mv
of a tree holding symlinks, 0700/0755/2775 directories and files of several modes and owners.

Each tool runs as it is, once into a plain local directory (the reference: what the tool makes on
an ordinary file system, the umask's and the tool's own choices included) and once into the
master's mount. The master's mount must show the reference (names, types, modes, owners, link
targets, sizes, and the times the tool set: kept for the mount's lifetime), a client's mount the
same without the links (famfs logs none: fusefs/links.py) and without the times (famfs logs none),
with the same bytes (`diff -r`); fsck stays clean. Real parts only: demo/cluster.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster, Host, wait_until
from famfs import format as fmt
from tests.famfsctl_util import entries

# (path, mode, uid, gid); directories end with "/"
TREE: tuple[tuple[str, int, int, int], ...] = (
    ("private/", 0o700, 1234, 1234),
    ("private/secret", 0o600, 1234, 1234),
    ("shared/", 0o2775, 0, 5),
    ("shared/data", 0o664, 1000, 5),
    ("shared/sub/", 0o755, 1000, 5),
    ("shared/sub/note", 0o644, 1000, 5),
    ("open/", 0o755, 0, 0),
    ("open/tool", 0o755, 0, 0),
    ("open/readonly", 0o444, 2000, 2000),
    ("open/setuid", 0o4755, 0, 0),
    ("top", 0o640, 0, 5),
    ("empty", 0o644, 0, 0),
)
PAST = 1_600_000_000 * 10**9 + 987_654_321  # 2020-09-13, with nanoseconds
LINKS = (("link", "top", 1000, 1000), ("open/uplink", "../top", 0, 0), ("dangling", "nowhere", 0, 0))

Listing = dict[str, tuple[object, ...]]


def build_source(root: Path) -> None:
    root.mkdir()
    for n, (path, _, _, _) in enumerate(TREE):
        if path.endswith("/"):
            (root / path).mkdir()
        else:
            (root / path).write_bytes(os.urandom(0 if path == "empty" else 1000 * n + 1))
    for path, target, uid, gid in LINKS:
        os.symlink(target, root / path)
        os.lchown(root / path, uid, gid)
    for n, (path, mode, uid, gid) in enumerate(reversed(TREE)):  # files first, so the 0700 directory is last
        os.chown(root / path, uid, gid)
        os.chmod(root / path, mode)
        # Times of the past: rsync takes a directory made in the same second as its source's
        # mtime for up to date, and leaves it the time it was made.
        os.utime(root / path, ns=(PAST + n * 1_000_000_007, PAST + n * 1_000_000_007 + 123))


def listing(root: Path, *, times: bool, links: bool = True) -> Listing:
    """relpath -> what `stat` says of it (and its target, for a link), everything below root."""
    found: Listing = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) and not links:
                continue
            rel = str(path.relative_to(root))
            row: tuple[object, ...] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                row += (os.readlink(path),)
            elif stat.S_ISREG(st.st_mode):
                row += (st.st_size,)
            if times and not stat.S_ISLNK(st.st_mode):
                row += (st.st_mtime_ns,)
            found[rel] = row
    return found


def times_of(root: Path, unit_ns: int) -> dict[str, int]:
    """relpath -> mtime in `unit_ns` of every file and directory below root."""
    return {relpath: os.lstat(root / relpath).st_mtime_ns // unit_ns
            for relpath, row in listing(root, times=False).items() if not str(row[0]).startswith("l")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("master-mount-tools")


@pytest.fixture(scope="module")
def source(workdir: Path) -> Path:
    root = workdir / "src"
    build_source(root)
    subprocess.run(["tar", "-cf", str(workdir / "src.tar"), "-C", str(root), "."], check=True)
    return root


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[Cluster]:
    with Cluster(workdir / "cluster", size="4g", clients=1) as running:
        yield running


def run(host: Host, command: str) -> subprocess.CompletedProcess[str]:
    return host.run_inside(["sh", "-c", command], check=False)


SECOND, NS = 10**9, 1
# name -> (the command, with DST the directory it fills; the precision of the times it keeps, if any:
# a tar archive holds whole seconds)
TOOLS = {
    "tar-xf": ("tar -xf {tar} -C {dst}", SECOND),
    "tar-xpf": ("tar -xpf {tar} -C {dst}", SECOND),
    "rsync-a": ("rsync -a {src}/ {dst}/", NS),
    "cp-a": ("cp -a {src}/. {dst}", NS),
    "cp-r": ("cp -r {src}/. {dst}", None),
    "mv-in": ("cp -a {src} {scratch}/moved && mv {scratch}/moved/* {dst}/", NS),
}


def expected(workdir: Path, source: Path, name: str) -> Path:
    """What the tool makes in an ordinary directory, run the same way."""
    command, _ = TOOLS[name]
    reference = workdir / "reference" / name
    scratch = workdir / "scratch-ref" / name
    reference.mkdir(parents=True)
    scratch.mkdir(parents=True)
    done = subprocess.run(["sh", "-c", command.format(tar=workdir / "src.tar", src=source, dst=reference,
                                                      scratch=scratch)], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    return reference


def shown_on_client(cluster: Cluster, relpath: str, reference: Path) -> None:
    """The client's mount shows the reference without its links, the same bytes, once played."""
    client = cluster.clients[0]
    want = listing(reference, times=False, links=False)
    wait_until(lambda: client.view(relpath).is_dir() and listing(client.view(relpath), times=False) == want, 30,
               f"{relpath} whole on {client.name}")
    plain = reference.parent / f"{reference.name}-nolinks"
    shutil.copytree(reference, plain, symlinks=True, ignore=lambda top, names: [
        name for name in names if os.path.islink(os.path.join(top, name))])
    compared = client.run_inside(["diff", "-r", str(plain), str(client.mountpoint / relpath)], check=False)
    assert (compared.returncode, compared.stdout, compared.stderr) == (0, "", "")


@pytest.mark.parametrize("name", list(TOOLS))
def test_tool_verbatim(cluster: Cluster, source: Path, workdir: Path, name: str) -> None:
    command, keeps_times = TOOLS[name]
    reference = expected(workdir, source, name)
    master = cluster.master
    dst = master.mountpoint / name
    scratch = workdir / "scratch" / name
    scratch.mkdir(parents=True)
    assert run(master, f"mkdir {dst}").returncode == 0
    # The destination directory gets the reference's mode and times too (cp -a and rsync set them).
    done = run(master, command.format(tar=workdir / "src.tar", src=source, dst=dst, scratch=scratch))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stderr
    assert listing(master.view(name), times=False) == listing(reference, times=False)
    if keeps_times is not None:  # the source's times, kept by the mount (rsync's on a plain directory may
        # be later: it sets a directory's times before its files are in it)
        assert times_of(master.view(name), keeps_times) == times_of(source, keeps_times)
    shown_on_client(cluster, name, reference)
    assert "fsck: clean" in master.famfsctl("fsck", str(cluster.image)).stdout


def test_mv_within_the_mount(cluster: Cluster, source: Path, workdir: Path) -> None:
    """mv of a directory to another directory of the mount: the log has no rename, so mv copies
    (EXDEV) and removes; the copy keeps names, modes, owners and times."""
    master = cluster.master
    assert run(master, f"mkdir {master.mountpoint}/mv-from {master.mountpoint}/mv-to").returncode == 0
    assert run(master, f"cp -a {source} {master.mountpoint}/mv-from/tree").returncode == 0
    before = listing(master.view("mv-from/tree"), times=True)
    done = run(master, f"mv {master.mountpoint}/mv-from/tree {master.mountpoint}/mv-to/")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert listing(master.view("mv-to/tree"), times=True) == before == listing(source, times=True)
    assert not master.view("mv-from/tree").exists()
    shown_on_client(cluster, "mv-to/tree", source)
    assert "fsck: clean" in master.famfsctl("fsck", str(cluster.image)).stdout


def test_setattr_entries_and_refusals(cluster: Cluster) -> None:
    """A new mode or owner is one SETATTR; the same values log nothing; a size change and a
    client's chmod are refused (EPERM); upstream's rules of the kernel (setgid kept, the
    owner's chown) are the kernel's (default_permissions)."""
    master, client = cluster.master, cluster.clients[0]
    assert run(master, f"mkdir -m 0750 {master.mountpoint}/attrs && echo hi > {master.mountpoint}/attrs/f").returncode == 0
    wait_until(lambda: client.view("attrs/f").exists(), 30, "attrs/f on the client")
    count = len(entries(cluster.image))
    assert run(master, f"chmod 0640 {master.mountpoint}/attrs/f && chown 7:8 {master.mountpoint}/attrs/f").returncode == 0
    assert run(master, f"chmod 2770 {master.mountpoint}/attrs").returncode == 0
    logged = entries(cluster.image)[count:]
    file_index = next(index for index, entry in enumerate(entries(cluster.image))
                      if isinstance(entry, fmt.FileEntry) and entry.relpath == "attrs/f")
    assert [type(entry) for entry in logged] == [fmt.SetattrEntry] * 3
    assert logged[1] == fmt.SetattrEntry("attrs/f", file_index, 0o640, 7, 8)
    assert (logged[2].relpath, logged[2].mode) == ("attrs", 0o2770)
    same = run(master, f"chmod 0640 {master.mountpoint}/attrs/f && chown 7:8 {master.mountpoint}/attrs/f")
    assert same.returncode == 0 and len(entries(cluster.image)) == count + 3  # nothing logged
    truncated = run(master, f"truncate -s 1 {master.mountpoint}/attrs/f")
    assert truncated.returncode == 1 and "Operation not permitted" in truncated.stderr
    wait_until(lambda: client.view("attrs/f").stat().st_uid == 7, 30, "the chown on the client")
    st, dir_st = client.view("attrs/f").stat(), client.view("attrs").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 7, 8)
    assert stat.S_IMODE(dir_st.st_mode) == 0o2770
    refused = run(client, f"chmod 0600 {client.mountpoint}/attrs/f")
    assert refused.returncode == 1 and "Operation not permitted" in refused.stderr
    assert run(master, f"rm -r {master.mountpoint}/attrs").returncode == 0
    assert "fsck: clean" in master.famfsctl("fsck", str(cluster.image)).stdout
