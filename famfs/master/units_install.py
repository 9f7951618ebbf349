"""`famfsctl install-units`: the systemd units for famfs-agent, famfs-fuse-mount and the reclaim
coordinator (famfsctl reclaimd, on the master), written with
the paths of this installation (the directory holding the programs' scripts, and the docs of the
source tree when it has them), so that what is installed runs as written."""

from __future__ import annotations

import os
import sysconfig
from importlib import resources
from pathlib import Path

UNITS = {"famfs-agent.service": "agent.md", "famfs-fuse-mount.service": "fusefs.md", "famfs-reclaimd.service": "reclaim.md"}
PROGRAMS = {"famfs-reclaimd.service": "famfsctl"}  # a unit whose program is not named after it
UNIT_DIR = Path("/etc/systemd/system")
DOCS = Path(__file__).resolve().parents[2] / "docs"  # the source tree's docs (an editable install)


def program_of(name: str) -> str:
    """The program unit `name` runs."""
    return PROGRAMS.get(name, name.removesuffix(".service"))


def scripts_dir() -> Path:
    """Where pip put famfs-agent and famfs-fuse-mount for this interpreter (a venv's bin/)."""
    return Path(sysconfig.get_path("scripts"))


def render(name: str, bindir: Path, docs: Path = DOCS) -> str:
    template = resources.files("famfs.master").joinpath("systemd", name).read_text()
    page = docs / UNITS[name]
    documentation = f"Documentation=file://{page}" if page.is_file() else f"# Documentation: {name.removesuffix('.service')} --help"
    return template.replace("@BINDIR@", str(bindir)).replace("@DOCUMENTATION@", documentation)


def install(unit_dir: Path = UNIT_DIR, bindir: Path | None = None) -> list[Path]:
    """Write every unit into unit_dir (made if missing); the paths written."""
    bindir = bindir or scripts_dir()
    for name in UNITS:
        program = bindir / program_of(name)
        if not os.access(program, os.X_OK):
            raise ValueError(f"{program}: not an executable: install the package first (make install)")
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        path = unit_dir / name
        staged = path.with_name(f".{name}.tmp")
        staged.write_text(render(name, bindir))
        staged.chmod(0o644)
        staged.replace(path)
        written.append(path)
    return written
