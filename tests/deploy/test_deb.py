"""scripts/build-deb.sh builds a Debian package that holds what issue 16
asks for: the private environment under /opt (it runs from the extracted
tree), the units, the stop helper, example configs, dependencies on
nftables and BCC, and maintainer scripts that never overwrite a config and
start nothing on a fresh install. Installing it on a real Debian 12 with
systemd is the VM test's part (tests/vm/)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build-deb.sh"), str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("build-deb: ") for line in lines), proc.stdout
    yield next(out.glob("interceptor_*_amd64.deb"))


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_control_pulls_in_the_datapath_tools(deb: Path) -> None:
    depends = {d.strip().split()[0] for d in _field(deb, "Depends").split(",")}
    assert {"python3", "nftables", "iproute2", "systemd", "adduser"} <= depends
    # apt installs Recommends by default; an nft-only node can go without BCC.
    recommends = {d.strip() for d in _field(deb, "Recommends").split(",")}
    assert {"python3-bpfcc", "linux-headers-amd64"} <= recommends
    assert _field(deb, "Version") == "0.1.0"


def test_contents_and_the_environment_runs_from_the_tree(deb: Path, tmp_path: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for wanted in ("/opt/interceptor/bin/interceptor", "/opt/interceptor/pyvenv.cfg",
                   "/lib/systemd/system/interceptor-node.service",
                   "/lib/systemd/system/interceptor-backend.service",
                   "/usr/lib/interceptor/node-stop-post", "/usr/bin/interceptor",
                   "/usr/share/doc/interceptor/examples/node.toml",
                   "/usr/share/doc/interceptor/examples/backend.toml"):
        assert wanted in paths, wanted
    assert not any(p.startswith("/etc/") for p in paths), "configs are made by postinst"
    assert not any("__pycache__" in p for p in paths)
    assert not any("/site-packages/pip/" in p or "/site-packages/scapy/" in p for p in paths)
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    script = (root / "opt/interceptor/bin/interceptor").read_text()
    assert script.startswith("#!/opt/interceptor/bin/python\n")
    leftover = subprocess.run(["grep", "-rlI", "/tmp/interceptor-deb.", str(root)],
                              capture_output=True, text=True, check=False).stdout
    assert leftover == "", f"the build directory is referenced: {leftover[:500]}"
    version = subprocess.run([str(root / "opt/interceptor/bin/python"), "-m", "interceptor",
                              "--version"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert version.returncode == 0 and version.stdout.startswith("interceptor 0.1.0"), version
    # Self-contained: with this machine's Debian Python packages hidden, both
    # daemons' composition roots import (BCC, imported only for eBPF, aside).
    cfg = root / "opt/interceptor/pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace("include-system-site-packages = true",
                                           "include-system-site-packages = false"))
    imports = subprocess.run([str(root / "opt/interceptor/bin/python"), "-c",
                              "import interceptor.node.app, interceptor.backend.app, "
                              "interceptor.backend.store.postgres"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert imports.returncode == 0, imports.stderr[-2000:]


def test_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    for name in ("postinst", "prerm", "postrm"):
        script = control / name
        assert script.stat().st_mode & 0o777 == 0o755
        subprocess.run(["sh", "-n", str(script)], check=True)
    postinst = (control / "postinst").read_text()
    # Configs 0600 and only when absent; the backend's system user; no start
    # on a fresh install, try-restart (hand-over) on upgrade only.
    assert 'if [ ! -e "/etc/interceptor/$name.toml" ]' in postinst
    assert "install -m 0600 -o root -g root" in postinst
    assert "adduser --system --group" in postinst and "interceptor" in postinst
    assert "enable" not in postinst and "systemctl start" not in postinst
    assert 'if [ -n "${2:-}" ]; then' in postinst and "try-restart" in postinst
    prerm = (control / "prerm").read_text()
    assert "--cleanup" in prerm and "disable --now interceptor-node.service" in prerm
    assert "rm -f /etc/interceptor/node.toml" in (control / "postrm").read_text()
