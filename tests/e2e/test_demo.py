"""The quick-start demo works and leaves nothing behind: no namespace, no
process, no temporary directory (both datapaths)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.lab import REPO

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.slow]


def _leftovers() -> tuple[list[str], list[str], list[str]]:
    namespaces = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                             text=True, check=True).stdout.split()
                  if n.startswith("imdemo-")]
    procs = [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                             text=True, check=True).stdout.splitlines()
             if "interceptor-demo." in line]
    dirs = [str(p) for p in Path("/tmp").glob("interceptor-demo.*")]
    return namespaces, procs, dirs


@pytest.mark.parametrize("datapath", ["nft", "ebpf"])
def test_demo_reads_metadata_and_cleans_up(datapath: str) -> None:
    before = _leftovers()
    r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True,
                       text=True, timeout=300, check=False,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                            "DEMO_DATAPATH": datapath})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "i-0demo0000000001" in r.stdout
    assert "demo-vm" in r.stdout
    assert _leftovers() == before
