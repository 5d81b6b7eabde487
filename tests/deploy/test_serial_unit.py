"""The serial channel's systemd unit: it verifies, runs a real command line, stays confined."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.deploy.test_systemd_units import (
    INSTALLED_BINARY,
    UNITS,
    _directives,
    _venv_interceptor,
    verifiable_units,
)

__all__ = ["verifiable_units"]
UNIT = "interceptor-serial.service"


def test_serial_unit_verifies(verifiable_units: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (package systemd)"
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(verifiable_units / UNIT)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stderr + proc.stdout


def test_serial_unit_runs_the_serial_subcommand_confined() -> None:
    d = _directives(UNITS / UNIT)
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} serial --config /etc/interceptor/node.toml"]
    proc = subprocess.run([str(_venv_interceptor()), "serial", "--help"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "--config" in proc.stdout
    assert d["CapabilityBoundingSet"] == ["CAP_CHOWN"]
    assert d["RuntimeDirectory"] == ["interceptor-serial"]  # the default socket_dir
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    for key in ("NoNewPrivileges", "PrivateDevices", "ProtectKernelModules",
                "MemoryDenyWriteExecute"):
        assert d[key] == ["yes"], key
