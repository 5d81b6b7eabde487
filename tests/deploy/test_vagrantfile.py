"""The Vagrantfile parses, `vagrant validate` accepts it, and both VMs are
provisioned by scripts/setup.sh — the script the README uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
VAGRANTFILE = REPO / "Vagrantfile"
SETUP = "scripts/setup.sh"

# Loads the Vagrantfile without Vagrant to print its provisioning scripts;
# `vagrant validate` (below) checks the configuration itself.
_DUMP_SCRIPTS = """
require "json"
module Vagrant
  def self.configure(_version); end
end
load ARGV[0]
names = %w[SETUP_SCRIPT SETUP BACKEND_SERVICES COMPUTE_SERVICES]
puts JSON.generate(names.to_h { |name| [name, Object.const_get(name)] })
"""


def _scripts(tmp_path: Path) -> dict[str, str]:
    # A copy, so the secrets the Vagrantfile generates land in tmp_path/.vagrant.
    copy = tmp_path / "Vagrantfile"
    shutil.copyfile(VAGRANTFILE, copy)
    proc = subprocess.run(["ruby", "-e", _DUMP_SCRIPTS, str(copy)], capture_output=True,
                          text=True, timeout=60, check=True)
    scripts: dict[str, str] = json.loads(proc.stdout)
    return scripts


def test_ruby_syntax() -> None:
    assert shutil.which("ruby"), "ruby missing (scripts/setup.sh installs it)"
    proc = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_vagrant_validate(tmp_path: Path) -> None:
    assert shutil.which("vagrant"), "vagrant missing (scripts/setup.sh installs it)"
    shutil.copyfile(VAGRANTFILE, tmp_path / "Vagrantfile")
    env = {**os.environ, "HOME": str(tmp_path / "home"),
           "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    # No provider (VirtualBox, libvirt) exists here: validate the rest.
    proc = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_both_vms_are_provisioned_by_the_setup_script(tmp_path: Path) -> None:
    scripts = _scripts(tmp_path)
    assert scripts["SETUP_SCRIPT"].strip() == SETUP
    assert f"/vagrant/{SETUP}" in scripts["SETUP"]
    text = VAGRANTFILE.read_text()
    for machine in ("backend", "compute"):
        assert f'{machine}.vm.provision "setup", type: "shell", inline: SETUP' in text
    setup = REPO / SETUP
    assert setup.is_file() and os.access(setup, os.X_OK), f"{SETUP} missing or not executable"
    for name, body in scripts.items():
        if name != "SETUP_SCRIPT":
            proc = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True,
                                  timeout=30, check=False)
            assert proc.returncode == 0, f"{name}: {proc.stderr}"


def test_readme_uses_the_same_setup_script() -> None:
    readme = (REPO / "README.md").read_text()
    assert SETUP in readme, "README.md does not mention scripts/setup.sh"


def test_units_and_configs_the_vagrantfile_installs_exist() -> None:
    text = VAGRANTFILE.read_text()
    for rel in ("deploy/systemd/interceptor-backend.service",
                "deploy/systemd/interceptor-node.service",
                "deploy/config/backend.toml", "deploy/config/node.toml"):
        assert f"/vagrant/{rel}" in text and (REPO / rel).is_file(), rel
