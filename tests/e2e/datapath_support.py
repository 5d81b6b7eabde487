"""The test side of the datapath suites (test_datapath.py,
test_datapath_host_input.py): starting a node of either kind
(datapath_node.py runs inside the node namespace) and the few calls every
case makes. The ``nodes`` fixture (conftest.py) parametrises over both."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from interceptor.node.datapath.ebpf import EbpfConfig
from tests.lab import Guest, NetnsRpc, Topology

DATAPATHS = ("nft", "ebpf")
MD = "http://169.254.169.254/latest/meta-data/"
FAST_S = 0.5
AGENT = "tests.e2e.datapath_node:DatapathNode"
PATTERNS = ["mdtap*", "tap*"]  # the topology's taps and the 1000-tap test's
# A host service guests may use (input_allow_tcp): the bridge still carries
# guest <-> host traffic, and nothing else on the node is reachable.
HOST_PORT = 8080
# `ip netns exec` gives the eBPF loader a private mount namespace with its own
# /sys: reach the host's bpffs through this (the test) process's root, so pins
# outlive the loader as they do in production.
HOST_BPFFS = f"/proc/{os.getpid()}/root/sys/fs/bpf"


@dataclass
class Nodes:
    """Starts datapath nodes of one kind in the topology's node namespace;
    ``close`` removes what a killed node may have left (the eBPF pins are
    global, unlike everything in the namespace)."""

    topology: Topology
    kind: str
    started: list[NetnsRpc] = field(default_factory=list)

    def kernel_options(self) -> dict[str, Any]:
        if self.kind == "ebpf":
            return {"instance": self.topology.prefix, "bpffs": HOST_BPFFS}
        return {}

    def start(self, **options: Any) -> NetnsRpc:
        node = self.topology.rpc(AGENT, self.kind, {"patterns": PATTERNS,
                                                    **self.kernel_options(), **options})
        node.call("install")
        self.started.append(node)
        return node

    def close(self) -> None:
        if self.kind != "ebpf" or not self.started:
            return
        try:
            self.topology.rpc(AGENT, self.kind, self.kernel_options()).call("remove")
        finally:
            pin_dir = EbpfConfig(instance=self.topology.prefix).pin_dir
            if pin_dir.is_dir():
                for entry in pin_dir.iterdir():
                    entry.unlink(missing_ok=True)
                pin_dir.rmdir()


def body_and_time(proc: subprocess.CompletedProcess[str]) -> tuple[int, str, float]:
    body, _, tail = proc.stdout.rpartition("\n")
    code, _, seconds = tail.partition(" ")
    return int(code or 0), body, float(seconds or 0)


def fetch(guest: Guest, *extra: str, max_time: float = 3.0) -> tuple[int, str, float]:
    return body_and_time(guest.curl(MD, *extra, max_time=max_time))


def steer(node: NetnsRpc, *guests: Guest, refused: tuple[Guest, ...] = ()) -> None:
    """Sync ``guests`` steered and ``refused`` not, and open the listeners."""
    taps = {g.tap: {"steer": True, "bridge": g.bridge} for g in guests}
    taps.update({g.tap: {"steer": False, "bridge": g.bridge} for g in refused})
    node.call("sync", taps)
    for g in guests:
        node.call("listen", g.tap)


def counter(node: NetnsRpc, tap: str, name: str) -> int:
    return int(node.call("counters")[tap][name])
