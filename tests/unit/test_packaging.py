"""``pip install .`` gives a working ``interceptor`` command, and the wheel
ships what the daemon loads at run time (the eBPF C source)."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_wheel_installs_the_command_and_ships_the_bpf_source(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("interceptor-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "interceptor/node/datapath/bpf/tap_ingress.c" in names
    assert "interceptor/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "interceptor = interceptor.cli:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()

    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    install = subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install",
                              "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    version = subprocess.run([str(target / "bin" / "interceptor"), "--version"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.startswith("interceptor "), version
