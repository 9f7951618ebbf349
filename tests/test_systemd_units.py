"""The systemd units as `famfsctl install-units` writes them: systemd-analyze verifies them, and
their hardening scores as systemd-analyze security counts it stay low."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from famfs.master import units_install
from tests.famfsctl_util import famfsctl

ANALYZE = shutil.which("systemd-analyze") or "systemd-analyze"  # make deps installs systemd
EXPOSURE_MAX = 5.0  # systemd-analyze security: 0 safest .. 10 unsafe (the old units scored 9.6)



@pytest.fixture
def installed(tmp_path: Path) -> Path:
    unit_dir = tmp_path / "system"
    done = famfsctl("install-units", "--unit-dir", unit_dir)
    assert done.stdout.splitlines()[:len(units_install.UNITS)] == [f"installed {unit_dir / name}" for name in units_install.UNITS]
    return unit_dir


def test_installed_units_pass_systemd_analyze_verify(installed: Path) -> None:
    units = [str(installed / name) for name in units_install.UNITS]
    done = subprocess.run([str(ANALYZE), "verify", *units], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    for name in units_install.UNITS:
        text = (installed / name).read_text()
        program = re.search(r"^ExecStart=(\S+)", text, re.M)
        assert program and Path(program[1]).name == units_install.program_of(name)
        assert Path(program[1]).is_file() and "@BINDIR@" not in text and "@DOCUMENTATION@" not in text


def test_mount_unit_neither_requires_the_agent_nor_runs_in_a_namespace_of_its_own(installed: Path) -> None:
    text = (installed / "famfs-fuse-mount.service").read_text()
    assert "Wants=famfs-agent.service" in text and "Requires=" not in text and "--mkdir" in text
    for namespacing in ("ProtectSystem", "PrivateTmp", "ProtectHome", "PrivateDevices", "ProtectKernelTunables"):
        assert f"\n{namespacing}=" not in text  # its FUSE mount must land in the host's namespace


@pytest.mark.parametrize("name", list(units_install.UNITS))
def test_hardening_exposure_is_low(installed: Path, name: str) -> None:
    done = subprocess.run([str(ANALYZE), "security", "--offline=yes", str(installed / name)], capture_output=True,
                          text=True, timeout=120)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found[1]) <= EXPOSURE_MAX
