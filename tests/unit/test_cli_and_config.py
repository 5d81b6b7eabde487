"""The command line and configuration: precedence, clear errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from interceptor.common import config as configlib
from interceptor.common.errors import ConfigError
from interceptor.node.config import NodeConfig

REQUIRED = {"node_name": "n1", "backend_url": "http://127.0.0.1:8700",
            "node_token": "t", "signing_key": "k"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interceptor", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return str(path)


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nnode_name = "n1"\nbackend_url = "http://b:1"\n'
                           'node_token = "t"\nsigning_key = "k"\ncache_ttl = 10\nrate_limit = 5\n'
                           'token_hop_limit = 3\n')
    cfg = configlib.load(NodeConfig, section="node", path=path,
                         environ={"INTERCEPTOR_NODE_CACHE_TTL": "20",
                                  "INTERCEPTOR_NODE_RATE_LIMIT": "7"},
                         flags={"cache_ttl": "30"})
    assert cfg.cache_ttl == 30.0  # flag beats env beats file
    assert cfg.rate_limit == 7.0  # env beats file
    assert cfg.token_hop_limit == 3  # file beats default
    assert cfg.stale_if_error == 300.0  # default


def test_lists_and_booleans_from_env() -> None:
    cfg = configlib.load(NodeConfig, section="node", path=None, flags=REQUIRED,
                         environ={"INTERCEPTOR_NODE_TAP_PATTERNS": "tap*, vnet*",
                                  "INTERCEPTOR_NODE_KEEP_DATAPATH_ON_EXIT": "yes"})
    assert cfg.tap_patterns == ["tap*", "vnet*"]
    assert cfg.keep_datapath_on_exit is True


@pytest.mark.parametrize(("text", "message"), [
    ("[node]\nnode_name = \n", "not valid TOML"),
    ('[node]\nnode_name = "n"\nbogus = 1\n', "unknown option 'bogus'"),
    ('[node]\nnode_name = "n"\n', "missing required option"),
])
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        configlib.load(NodeConfig, section="node", path=write(tmp_path, text), environ={})


@pytest.mark.parametrize(("flags", "message"), [
    ({"datapath": "iptables"}, "datapath must be nft or ebpf"),
    ({"cache_ttl": "soon"}, "cache_ttl must be float"),
    ({"backend_url": "ftp://x"}, "backend_url must be an http"),
    ({"disabled_action": "drop"}, "disabled_action must be reset or 403"),
    ({"host_allow_udp": "67,dns"}, "is not a port number"),
])
def test_bad_values_name_the_option(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        configlib.load(NodeConfig, section="node", path=None, environ={},
                       flags={**REQUIRED, **flags})


def test_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = run("node", "--config", str(tmp_path / "absent.toml"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read" in lines[0] and "absent.toml" in lines[0]


def test_malformed_backend_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "backend.toml"
    path.write_text("[backend\nlisten_port = 1\n")
    r = run("backend", "serve", "--config", str(path))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("args", [("--bogus",), ("node", "--bogus"), ("frobnicate",),
                                  ("backend", "serve", "--bogus")])
def test_unknown_arguments_print_usage_and_exit_2(args: tuple[str, ...]) -> None:
    r = run(*args)
    assert r.returncode == 2
    assert "usage" in r.stderr.lower()


@pytest.mark.parametrize("args", [("--help",), ("node", "--help"), ("backend", "--help"),
                                  ("backend", "serve", "--help"), ("ctl", "--help")])
def test_help_everywhere(args: tuple[str, ...]) -> None:
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower()


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("interceptor ")
