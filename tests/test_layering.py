"""The architecture's import rules (docs/architecture.md), checked on every source file.

Dependencies point one way: agent and fusefs use the core (famfs), never each other and never the
master's tools (famfs.master); the core imports none of them; nothing outside tests imports
tests. famfs_fuse_mount is the one composition root: it alone joins fusefs and famfs.master
(the mount gets the master's writer as a famfs.namespace.NamespaceWriter), and nothing imports
it. A violation fails here with the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)  # it parses files and starts nothing; bounded all the same

# package -> prefixes it must never import (a prefix matches the module and its submodules)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "famfs": ("famfs.master", "agent", "fusefs", "famfs_fuse_mount", "demo", "bench", "tests"),
    "famfs.master": ("agent", "fusefs", "famfs_fuse_mount", "demo", "bench", "tests"),
    "agent": ("famfs.master", "fusefs", "famfs_fuse_mount", "demo", "bench", "tests"),
    "fusefs": ("famfs.master", "agent", "famfs_fuse_mount", "demo", "bench", "tests"),
    "famfs_fuse_mount": ("agent", "demo", "bench", "tests"),  # the composition root: fusefs + famfs.master
    "demo": ("famfs_fuse_mount", "bench", "tests"),
    "bench": ("famfs_fuse_mount", "tests"),
}
# famfs/__init__.py may name famfs.master lazily (module __getattr__), never at import time.
LAZY_OK = {("famfs/__init__.py", "famfs.master")}


def package_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[:2] == ("famfs", "master"):
        return "famfs.master"
    return parts[0]


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, at top level) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    module_parts = list(path.relative_to(REPO).with_suffix("").parts)
    if module_parts[-1] == "__init__":
        module_parts.pop()
    top_level = {id(node) for node in tree.body}
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_parts[: len(module_parts) - node.level + (path.name == "__init__.py")]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name, id(node) in top_level))
            # `from famfs import master` imports famfs.master
            found += [(node.lineno, f"{name}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


def sources() -> list[Path]:
    return sorted(p for package in ("famfs", "agent", "fusefs", "famfs_fuse_mount", "demo", "bench") for p in (REPO / package).rglob("*.py"))


def violations(path: Path) -> list[str]:
    package = package_of(path)
    rel = str(path.relative_to(REPO))
    found = []
    for line, module, top in imports(path):
        for banned in FORBIDDEN[package]:
            if module == banned or module.startswith(banned + "."):
                if (rel, banned) in LAZY_OK and not top:
                    continue
                found.append(f"{rel}:{line}: {package} imports {module} (rule: {package} never imports {banned})")
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_one_way(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_catches_a_bad_import(tmp_path: Path) -> None:
    """The rule table is live: a fusefs module importing the writer is reported."""
    bad = REPO / "fusefs" / "_layering_probe.py"
    bad.write_text("from famfs.master import writer\nimport tests.conftest\n")
    try:
        found = violations(bad)
    finally:
        bad.unlink()
    assert len(found) == 3, found  # famfs.master (via `from famfs.master import writer`, twice), tests
    assert "fusefs never imports famfs.master" in found[0]


def test_one_composition_root() -> None:
    """Only famfs_fuse_mount joins the mount and the master's writer, and it is what runs."""
    def reaches(path: Path, package: str) -> bool:
        return any(module == package or module.startswith(package + ".") for _, module, _ in imports(path))

    joined = [str(path.relative_to(REPO)) for path in sources() if reaches(path, "fusefs") and reaches(path, "famfs.master")]
    assert joined == ["famfs_fuse_mount/__init__.py"]
    assert 'famfs-fuse-mount = "famfs_fuse_mount:main"' in (REPO / "pyproject.toml").read_text()
