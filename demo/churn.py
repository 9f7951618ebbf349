"""A randomized mix of mkdir / creat / cp / rm on the master, mirrored in a local tree.

Every copied file and every directory also exists under `expected/` with the same relative
path and bytes, so `diff -r expected <a client's mount>` must come out empty once the client
has caught up. Randomized files (`famfsctl creat --randomize`) have no local copy: their names
start with `rnd_` (diff skips them) and `randomized` keeps each one's seed for `famfsctl verify`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from demo.cluster import Cluster

RANDOMIZED_PREFIX = "rnd_"
MAX_DEPTH = 4  # keeps every relpath well under famfs's 79 bytes
DIR_MODES = ("0755", "0750", "0775", "2775")
FILE_MODES = (0o644, 0o600, 0o755, 0o444)
MiB = 1 << 20
# Mostly small files, as source trees are; a few cross the 2 MiB allocation unit.
FILE_SIZES = (0, 1, 100, 4095, 4096, 20000, 65536, 2 * MiB + 3)
FILE_SIZE_WEIGHTS = (3, 5, 20, 10, 10, 20, 10, 1)


@dataclass
class Churn:
    cluster: Cluster
    expected: Path
    rng: random.Random = field(default_factory=lambda: random.Random(5))
    dirs: list[str] = field(default_factory=lambda: [""])
    copied: list[str] = field(default_factory=list)
    randomized: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    _serial: int = 0

    def __post_init__(self) -> None:
        self.expected.mkdir(parents=True, exist_ok=True)

    def run(self, entries: int, between_steps: Callable[[Churn], None] | None = None) -> int:
        """Random steps until at least `entries` more log entries exist; how many were appended."""
        start = self.cluster.next_index()
        while self.cluster.next_index() - start < entries:
            self.step()
            if between_steps is not None:
                between_steps(self)
        return self.cluster.next_index() - start

    def step(self) -> None:
        operations: list[tuple[Callable[[], None], int]] = [
            (self.copy_tree, 30), (self.copy_files, 15), (self.make_dirs, 15), (self.create_randomized, 15),
            (self.remove, 25 if self.copied or self.randomized else 0),
        ]
        actions, weights = zip(*operations, strict=True)
        self.rng.choices(actions, weights)[0]()
        self.steps += 1

    # --- the operations ---------------------------------------------------------------------

    def make_dirs(self) -> None:
        parent = self._parent()
        names = [self._name("d") for _ in range(self.rng.randint(1, 2))]
        path = self._join(parent, *names)
        self.cluster.ctl("mkdir", "-p", "-m", self.rng.choice(DIR_MODES), path)
        for depth in range(1, len(names) + 1):
            relpath = self._join(parent, *names[:depth])
            (self.expected / relpath).mkdir()
            self.dirs.append(relpath)

    def copy_tree(self) -> None:
        parent = self._parent()
        name = self._name("t")
        local = self.expected / parent / name
        self._generate_tree(local, files=self.rng.randint(30, 120), subdirs=self.rng.randint(0, 3))
        self.cluster.ctl("cp", "-r", str(local), parent)
        for path in sorted(local.rglob("*")):
            relpath = str(path.relative_to(self.expected))
            (self.dirs if path.is_dir() else self.copied).append(relpath)
        self.dirs.append(self._join(parent, name))

    def copy_files(self) -> None:
        parent = self._parent()
        sources = [self._generate_file(self.expected / parent / self._name("f")) for _ in range(self.rng.randint(1, 6))]
        self.cluster.ctl("cp", *map(str, sources), parent or "/")
        self.copied += [self._join(parent, source.name) for source in sources]

    def create_randomized(self) -> None:
        relpath = self._join(self._parent(), self._name(RANDOMIZED_PREFIX))
        seed = self.rng.randint(1, 1 << 30)
        size = self.rng.choice((1, 4096, MiB + 7, 3 * MiB))
        self.cluster.ctl("creat", "-s", str(size), "--randomize", "--seed", str(seed), relpath)
        self.randomized[relpath] = seed

    def remove(self) -> None:
        pool = self.copied + list(self.randomized)
        relpath = self.rng.choice(pool)
        self.cluster.ctl("rm", relpath)
        if relpath in self.randomized:
            del self.randomized[relpath]
        else:
            self.copied.remove(relpath)
            (self.expected / relpath).unlink()

    # --- helpers ----------------------------------------------------------------------------

    def _parent(self) -> str:
        return self.rng.choice([path for path in self.dirs if path.count("/") < MAX_DEPTH - 1] or [""])

    def _name(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial}"

    @staticmethod
    def _join(*parts: str) -> str:
        return "/".join(part for part in parts if part)

    def _generate_tree(self, root: Path, *, files: int, subdirs: int) -> None:
        root.mkdir()
        directories = [root]
        for _ in range(subdirs):
            directories.append(self.rng.choice(directories) / self._name("s"))
            directories[-1].mkdir()
        for _ in range(files):
            self._generate_file(self.rng.choice(directories) / self._name("f"))

    def _generate_file(self, path: Path) -> Path:
        size = self.rng.choices(FILE_SIZES, FILE_SIZE_WEIGHTS)[0]
        path.write_bytes(self.rng.randbytes(size))
        path.chmod(self.rng.choice(FILE_MODES))
        return path
