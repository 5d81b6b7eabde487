"""The example configs load with the real config classes, list every option
with its default, and say what each option does."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from interceptor.backend.config import BackendConfig
from interceptor.channels.serial_config import SerialConfig
from interceptor.common.config import load
from interceptor.node.config import NodeConfig

CONFIG_DIR = Path(__file__).parents[2] / "deploy" / "config"
_KEY = re.compile(r"^([a-z_][a-z0-9_]*)\s*=")

# Options whose example value is a placeholder or a deployment choice, not the default.
PLACEHOLDERS = {
    "node": {"node_name", "backend_url", "node_token", "signing_key"},
    "backend": {"admin_token", "signing_key", "node_tokens"},
    "serial": set(),
}
CASES = [("node", NodeConfig, "node.toml"), ("backend", BackendConfig, "backend.toml"),
         ("serial", SerialConfig, "serial.toml")]


def _defaults(cls: type[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _documented_keys(path: Path) -> dict[str, bool]:
    """Top-level option → whether a comment explains it (inline, or the comment
    block right above it or above the group of options it belongs to)."""
    lines = path.read_text().splitlines()
    out: dict[str, bool] = {}
    for i, line in enumerate(lines):
        match = _KEY.match(line)
        if not match:
            continue
        documented = "#" in line
        j = i - 1
        while not documented and j >= 0:
            above = lines[j].strip()
            if above.startswith("#"):
                documented = not above.startswith("# ----")
                break
            if not _KEY.match(above):
                break
            j -= 1
        out[match.group(1)] = documented
    return out


@pytest.mark.parametrize(("section", "cls", "filename"), CASES)
def test_example_loads_with_the_real_config_class(section: str, cls: type[Any],
                                                  filename: str) -> None:
    cfg = load(cls, section=section, path=str(CONFIG_DIR / filename), environ={})
    defaults = _defaults(cls)
    for name, default in defaults.items():
        if name not in PLACEHOLDERS[section]:
            assert getattr(cfg, name) == default, f"{filename}: {name} differs from the default"


@pytest.mark.parametrize(("section", "cls", "filename"), CASES)
def test_example_lists_and_explains_every_option(section: str, cls: type[Any],
                                                 filename: str) -> None:
    documented = _documented_keys(CONFIG_DIR / filename)
    options = {f.name for f in dataclasses.fields(cls)}
    # node_tokens is a TOML table ([backend.node_tokens]), not a key line.
    listed = set(documented) | ({"node_tokens"} if "[backend.node_tokens]" in
                                (CONFIG_DIR / filename).read_text() else set())
    assert options - listed == set(), f"{filename} does not list {sorted(options - listed)}"
    undocumented = sorted(k for k, ok in documented.items() if not ok and k in options)
    assert undocumented == [], f"{filename}: no comment for {undocumented}"
