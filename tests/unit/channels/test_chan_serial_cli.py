"""``interceptor serial``: configuration errors are one line and exit 2."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
    (("--driver", "file", "--directory", "/x", "--operator-port", "-1"), "operator_port"),
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


def test_unusable_socket_dir_and_busy_port_are_one_line(tmp_path: Path) -> None:
    files = tmp_path / "vms"
    files.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run("--driver", "file", "--directory", str(files), "--socket-dir",
            str(blocker / "sock"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "socket_dir" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("--driver", "file", "--directory", str(files), "--socket-dir",
                str(tmp_path / "s"), "--tcp-port", str(port), "--operator-port", "0",
                "--concentrator-token", "c" * 20)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and not (tmp_path / "s" / "x.sock").exists()


def test_sigterm_removes_every_socket(tmp_path: Path) -> None:
    files, sockets = tmp_path / "vms", Path(tempfile.mkdtemp(prefix="sercli-", dir="/tmp"))
    files.mkdir()
    (files / "vm1.yaml").write_text("metadata: {instance-id: i-1}\n")
    proc = subprocess.Popen([sys.executable, "-m", "interceptor", "serial", "--driver", "file",
                             "--directory", str(files), "--socket-dir", str(sockets),
                             "--operator-port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (sockets / "vm1.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert list(sockets.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(sockets, ignore_errors=True)
