"""The systemd units pass `systemd-analyze verify` and keep their sandbox."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "deploy" / "systemd"
INSTALLED_BINARY = "/opt/interceptor/bin/interceptor"  # scripts/build-deb.sh
STOP_POST = "/usr/lib/interceptor/node-stop-post"


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
        text = (unit.read_text().replace(INSTALLED_BINARY, str(_venv_interceptor()))
                .replace(STOP_POST, str(UNITS / "node-stop-post")))
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
    assert d["ExecStopPost"] == [f"+{STOP_POST}"]
    # Readiness, watchdog, and the restart hand-over (listeners in the fd store,
    # datapath kept: node-stop-post removes it on a real stop only).
    assert (d["Type"], d["NotifyAccess"], d["WatchdogSec"]) == (["notify"], ["main"], ["30s"])
    assert int(d["FileDescriptorStoreMax"][0]) >= 1024
    assert d["Environment"] == ["INTERCEPTOR_NODE_KEEP_DATAPATH_ON_EXIT=true"]
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
    assert d["User"] == ["interceptor"] and d["Group"] == ["interceptor"]  # the package's
    assert (d["Type"], d["NotifyAccess"], d["WatchdogSec"]) == (["notify"], ["main"], ["30s"])
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
    stop_post = (UNITS / "node-stop-post").read_text()
    lines = d["ExecStart"] + [ln for ln in stop_post.splitlines() if ln.startswith("exec ")]
    for line in lines:
        line = line.removeprefix("exec ").replace('"$binary"', INSTALLED_BINARY)
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


# Exposure as `systemd-analyze security` scores it (0 = locked down, 10 =
# unprotected). The node needs root with network and BPF capabilities; the
# backend needs nothing.
EXPOSURE_LIMIT = {"interceptor-node.service": 3.5, "interceptor-backend.service": 1.5}


@pytest.mark.parametrize("name", sorted(EXPOSURE_LIMIT))
def test_systemd_analyze_security_score(verifiable_units: Path, name: str) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(verifiable_units / name)],
                          capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr
    score = float(found.group(1))
    print(f"{name}: systemd-analyze security exposure {score}")
    assert score <= EXPOSURE_LIMIT[name], proc.stdout


def test_node_stop_post_keeps_the_datapath_unless_the_unit_is_stopping(tmp_path: Path) -> None:
    """The helper reads the job systemd runs; a stand-in ``systemctl`` on PATH
    plays each job, a stand-in binary records whether cleanup ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "ran"
    (bin_dir / "interceptor").write_text(f"#!/bin/sh\necho \"$@\" > {ran}\n")
    (bin_dir / "interceptor").chmod(0o755)
    for job, cleans in (("stop", True), ("restart", False), ("", False)):
        listing = f"42 interceptor-node.service {job} running" if job else ""
        (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho '{listing}'\n")
        (bin_dir / "systemctl").chmod(0o755)
        ran.unlink(missing_ok=True)
        proc = subprocess.run(["sh", str(UNITS / "node-stop-post")], capture_output=True,
                              text=True, timeout=30, check=False,
                              env={"PATH": f"{bin_dir}:/usr/bin:/bin",
                                   "INTERCEPTOR_BINARY": str(bin_dir / "interceptor")})
        assert proc.returncode == 0, proc.stderr
        assert ran.exists() == cleans, (job, proc.stdout)
        if cleans:
            assert ran.read_text().split() == [
                "node", "--config", "/etc/interceptor/node.toml", "--cleanup",
                "--no-keep-datapath-on-exit"]
