"""``interceptor serial``: configuration errors are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from interceptor.channels.serial_cli import load


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interceptor", "serial", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(("args", "message"), [
    (("--driver", "magic"), "driver must be backend or file"),
    (("--driver", "file"), "directory is required"),
    (("--driver", "file", "--directory", "/x", "--socket-mode", "9"), "socket_mode"),
    (("--driver", "file", "--directory", "/x", "--tcp-port", "70000"), "tcp_port"),
    (("--driver", "file", "--directory", "/x", "--concentrator-token", "short"),
     "concentrator_token"),
    (("--driver", "file", "--directory", "/x", "--packet-rate", "zero"), "packet_rate"),
    (("--driver", "backend",), "missing required option"),
    (("--driver", "file", "--directory", "/x", "--socket-group", "no-such-group-4c1"),
     "socket_group"),
])
def test_bad_options_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_backend_driver_reads_the_node_section(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nnode_name = "node-a"\nbackend_url = "http://127.0.0.1:1"\n'
                    'node_token = "t"\nsigning_key = "k"\n'
                    '[serial]\nsocket_dir = "/run/x"\nconcentrator_token = "'
                    + "c" * 16 + '"\n')
    cfg, node = load(["--config", str(path), "--tcp-port", "0"])
    assert cfg.driver == "backend" and cfg.socket_dir == "/run/x" and not cfg.tcp_enabled
    assert cfg.gid is None and cfg.mode == 0o660
    assert node is not None and node.node_name == "node-a"


def test_help() -> None:
    r = run("--help")
    assert r.returncode == 0 and "--socket-dir" in r.stdout
