"""The architecture's import rules (docs/architecture.md), checked on every source file.

Dependencies point one way: agent and fusefs use the core (famfs), never each other and never the
master's tools (famfs.master); the core imports none of them; nothing outside tests imports
tests. A violation fails here with the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# package -> prefixes it must never import (a prefix matches the module and its submodules)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "famfs": ("famfs.master", "agent", "fusefs", "demo", "bench", "tests"),
    "famfs.master": ("agent", "fusefs", "demo", "bench", "tests"),
    "agent": ("famfs.master", "fusefs", "demo", "bench", "tests"),
    "fusefs": ("famfs.master", "agent", "demo", "bench", "tests"),
    "demo": ("bench", "tests"),
    "bench": ("tests",),
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
    return sorted(p for package in ("famfs", "agent", "fusefs", "demo", "bench") for p in (REPO / package).rglob("*.py"))


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
