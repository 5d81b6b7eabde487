"""The systemd units pass `systemd-analyze verify` and keep their sandbox."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "deploy" / "systemd"
INSTALLED_BINARY = "/usr/local/bin/interceptor"


def _venv_interceptor() -> Path:
    # The console script installed next to the interpreter running the tests.
    script = Path(sys.executable).parent / "interceptor"
    assert script.exists(), f"{script} missing: run scripts/setup.sh"
    return script


def _directives(unit: Path) -> dict[str, list[str]]:
    """key → values (keys may repeat in unit files)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def verifiable_units(tmp_path: Path) -> Path:
    """Copies whose binary path points at the real venv script (verify checks it exists)."""
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace(INSTALLED_BINARY, str(_venv_interceptor()))
        (tmp_path / unit.name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("name", ["interceptor-node.service", "interceptor-backend.service"])
def test_systemd_analyze_verify_passes(verifiable_units: Path, name: str) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (package systemd)"
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(verifiable_units / name)],
                          capture_output=True, text=True, timeout=60, check=False)
    # verify exits 0 on unknown keys but prints a warning: both must be clean.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stderr + proc.stdout


def test_node_unit_runs_the_node_daemon_with_only_its_capabilities() -> None:
    d = _directives(UNITS / "interceptor-node.service")
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} node --config /etc/interceptor/node.toml"]
    assert d["ExecStopPost"][0].endswith(" node --config /etc/interceptor/node.toml --cleanup")
    assert "User" not in d and "DynamicUser" not in d  # root: nftables, tc, bpf
    caps = set(d["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_BPF",
                    "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"}
    assert set(d["AmbientCapabilities"][0].split()) == caps
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "Restart": "on-failure"}.items():
        assert d[key] == [value], key
    assert "/sys/fs/bpf" in d["ReadWritePaths"][0]
    assert d["RuntimeDirectory"] == ["interceptor"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX", "AF_PACKET"}


def test_backend_unit_is_unprivileged_and_sandboxed() -> None:
    d = _directives(UNITS / "interceptor-backend.service")
    assert d["ExecStart"][0].startswith(f"{INSTALLED_BINARY} backend serve --config ")
    assert d["DynamicUser"] == ["yes"]
    assert d["StateDirectory"] == ["interceptor"]
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
                "ProtectKernelTunables", "ProtectKernelModules", "MemoryDenyWriteExecute"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert "AF_NETLINK" not in d["RestrictAddressFamilies"][0]


@pytest.mark.parametrize("unit", ["interceptor-node.service", "interceptor-backend.service"])
def test_unit_command_lines_use_real_subcommands_and_flags(unit: str) -> None:
    """Every subcommand and flag a unit runs is one the CLI accepts."""
    d = _directives(UNITS / unit)
    for line in d["ExecStart"] + d.get("ExecStopPost", []):
        words = line.lstrip("-+!@").split()
        assert words[0] == INSTALLED_BINARY, line
        # The subcommand is every word before the first flag: "node", "backend serve".
        subcommand = list(itertools.takewhile(lambda w: not w.startswith("-"), words[1:]))
        proc = subprocess.run([str(_venv_interceptor()), *subcommand, "--help"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"{unit}: {subcommand}: {proc.stderr}"
        for word in words[1:]:
            if word.startswith("--"):
                assert word in proc.stdout, f"{unit}: {' '.join(subcommand)} has no flag {word}"
