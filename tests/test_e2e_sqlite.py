"""A real program on famfs: an SQLite database built outside, copied in by the master with
`famfsctl cp`, queried read-only through a client's mount — it must answer as the original."""

from __future__ import annotations

import json
import random
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from demo.cluster import Cluster, Host, wait_until

QUERIES = (
    "SELECT count(*), sum(population), min(name), max(name) FROM cities",
    "SELECT country, count(*), sum(population) FROM cities GROUP BY country ORDER BY country",
    "SELECT name, population FROM cities WHERE country = 'country-7' ORDER BY population DESC LIMIT 20",
    "SELECT c.name, n.note FROM cities c JOIN notes n ON n.city_id = c.id WHERE c.id % 997 = 0 ORDER BY c.id",
    "SELECT id, length(photo), hex(substr(photo, 1000, 16)) FROM photos ORDER BY id",
    "PRAGMA integrity_check",
)


def build_database(path: Path) -> None:
    """Big enough to span several 2 MiB allocation units; an index and blobs so pages are varied."""
    rng = random.Random(11)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE cities (id INTEGER PRIMARY KEY, name TEXT, country TEXT, population INTEGER)")
        db.execute("CREATE TABLE notes (city_id INTEGER REFERENCES cities(id), note TEXT)")
        db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, photo BLOB)")
        db.executemany("INSERT INTO cities VALUES (?, ?, ?, ?)",
                       ((n, f"city-{n}-{rng.random():.6f}", f"country-{rng.randrange(40)}", rng.randrange(10**7))
                        for n in range(1, 40001)))
        db.executemany("INSERT INTO notes VALUES (?, ?)", ((n, f"note {n} " * rng.randrange(1, 8)) for n in range(1, 40001, 3)))
        db.executemany("INSERT INTO photos VALUES (?, ?)", ((n, rng.randbytes(300_000)) for n in range(12)))
        db.execute("CREATE INDEX cities_by_country ON cities(country, population)")


# Run as a program on the client host: SQLite resolves symlinks in a path, so it cannot open a
# file through /proc/PID/root of another mount namespace; it has to run inside it.
ANSWER_SCRIPT = """
import json, sqlite3, sys
from contextlib import closing
uri, mmap_size, *queries = sys.argv[1:]
with closing(sqlite3.connect(uri, uri=True)) as db:
    db.execute(f"PRAGMA mmap_size = {int(mmap_size)}")
    print(json.dumps([db.execute(query).fetchall() for query in queries]))
"""


def answers(host: Host, uri: str, *, mmap_size: int = 0) -> list[list[list[object]]]:
    """What the sqlite3 module answers to QUERIES, in a Python process running on `host`."""
    run = host.run_inside([sys.executable, "-c", ANSWER_SCRIPT, uri, str(mmap_size), *QUERIES])
    parsed: list[list[list[object]]] = json.loads(run.stdout)
    return parsed


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqlite")


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[Cluster]:
    with Cluster(workdir / "cluster", size="2g") as running:
        yield running


@pytest.fixture(scope="module")
def database_in_famfs(cluster: Cluster, workdir: Path) -> tuple[Path, str]:
    original = workdir / "cities.db"
    build_database(original)
    assert original.stat().st_size > 3 * (1 << 20)
    cluster.ctl("mkdir", "-p", "datasets")
    cluster.ctl("cp", str(original), "datasets/")
    relpath = "datasets/cities.db"
    for client in cluster.clients:
        wait_until(lambda client=client: client.view(relpath).exists(), 30, f"{relpath} on {client.name}")
    return original, relpath


def read_only_uri(path: Path) -> str:
    # immutable=1: famfs files never change size and there is no -journal or -wal next to them.
    return f"file:{path}?mode=ro&immutable=1"


def test_sqlite_module_reads_database_through_client_mount(cluster: Cluster, database_in_famfs: tuple[Path, str]) -> None:
    original, relpath = database_in_famfs
    expected = answers(cluster.clients[0], read_only_uri(original))
    assert expected[0][0][0] == 40000 and expected[-1] == [["ok"]]
    for client in cluster.clients:
        assert answers(client, read_only_uri(client.mountpoint / relpath)) == expected
        # The same through mmap'd pages of the famfs file.
        assert answers(client, read_only_uri(client.mountpoint / relpath), mmap_size=256 << 20) == expected


def test_sqlite3_cli_inside_client_namespace(cluster: Cluster, database_in_famfs: tuple[Path, str]) -> None:
    original, relpath = database_in_famfs
    client: Host = cluster.clients[1]
    query = "SELECT country, count(*), sum(population) FROM cities GROUP BY country ORDER BY country;"
    through_mount = client.run_inside(["sqlite3", "-readonly", read_only_uri(client.mountpoint / relpath), query])
    local = client.run_inside(["sqlite3", "-readonly", read_only_uri(original), query])
    assert through_mount.stdout == local.stdout
    assert len(through_mount.stdout.splitlines()) == 40
