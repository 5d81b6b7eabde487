"""The test side of the datapath suites (test_datapath.py,
test_datapath_host_input.py): starting a node of either kind
(datapath_node.py runs inside the node namespace) and the few calls every
case makes. The ``nodes`` fixture (conftest.py) parametrises over both."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from interceptor.node.datapath.ebpf import EbpfConfig
from tests.lab import Guest, NetnsRpc, Topology, sh

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


def guest_neigh(guest: Guest) -> str:
    return guest.run(["ip", "neigh", "show", "169.254.169.254"]).stdout


def service_in(topology: Topology, guest: Guest, tcp: int, udp: int) -> NetnsRpc:
    """A TCP and a UDP socket on every address of ``guest``, counting what arrives."""
    return topology.rpc("tests.e2e.hostservice:HostService", tcp, udp, netns=guest.netns)


def wait_count(read: Any, want: int, timeout: float = 5.0) -> int:
    """Poll ``read()`` until it reaches ``want`` or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while value < want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return int(value)


def send_udp(guest: Guest, address: str, port: int) -> None:
    family = "AF_INET6" if ":" in address else "AF_INET"
    r = guest.run(["python3", "-c", f"import socket; s=socket.socket(socket.{family}, "
                   f"socket.SOCK_DGRAM); s.sendto(b'x', ({address!r}, {port}))"])
    assert r.returncode == 0, r.stderr


def wait_no_tentative(topology: Topology, *guests: Guest) -> None:
    """Wait (bounded) for IPv6 duplicate address detection on both ends."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            sh(["ip", "-6", "addr", "show", "tentative"], netns=topology.node).stdout
            or any(g.run(["ip", "-6", "addr", "show", "tentative"]).stdout for g in guests)):
        time.sleep(0.1)


def concurrent_fetch(guests: tuple[Guest, ...], port: int) -> list[tuple[int, str, float]]:
    """The guests' requests at once, each from local ``port``."""
    procs = [subprocess.Popen(
        ["ip", "netns", "exec", g.netns, "curl", "-sS", "--max-time", "3", "--local-port",
         str(port), "-w", "\n%{http_code} %{time_total}", MD],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in guests]
    return [body_and_time(subprocess.CompletedProcess([], 0, p.communicate(timeout=10)[0], ""))
            for p in procs]


def br_netfilter(topology: Topology, value: int) -> None:
    """Set ``bridge-nf-call-iptables`` in the node (per network namespace)."""
    sh(["sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={value}"], netns=topology.node)
    flag = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    assert sh(["cat", flag], netns=topology.node).stdout.strip() == str(value)


def host_reaches_guest(topology: Topology, guest: Guest, via: str) -> None:
    """The node's own connection to the guest completes (over ``via``)."""
    service = service_in(topology, guest, 7080, 7081)
    sh(["ip", "neigh", "flush", "dev", via], netns=topology.node)
    sh(["curl", "-s", "--max-time", "2", f"http://{guest.ip.split('/')[0]}:7080/"],
       netns=topology.node, check=False)
    assert service.call("seen")["tcp"] == 1


def guest_reaches_allowed_port(topology: Topology, node: NetnsRpc, guest: Guest) -> None:
    node.call("host_service", "0.0.0.0", HOST_PORT)
    if guest.bridge:
        sh(["ip", "neigh", "flush", "dev", guest.bridge], netns=topology.node)
    proc = guest.curl(f"http://{guest.gateway}:{HOST_PORT}/", max_time=2)
    assert proc.stdout.startswith("host"), proc.stderr
    assert node.call("host_accepts", f"0.0.0.0:{HOST_PORT}") == 1


# -- IPv6 guests (test_datapath_ipv6.py, the IPv6 product and cloud-init tests) --

EC2 = "fd00:ec2::254"
LL = "fe80::a9fe:a9fe"
GLOBAL_GW = "fe80::1"  # the node's address on a routed tap / the bridge, as a router's


def url(address: str, guest: Guest) -> str:
    host = f"{address}%25{guest.ifname}" if address.startswith("fe80:") else address
    return f"http://[{host}]/latest/meta-data/"


def v6_guest(topology: Topology, *, mode: str, bridge: str | None = None,
             address: str | None = None, mac: str | None = None) -> Guest:
    """A guest with IPv6 only (its IPv4 address removed): ``mode`` "ll" has
    only its link-local address and an on-link route to fd00:ec2::254;
    "global" has ``address`` (a /64) and a default route via the node."""
    guest = topology.add_guest(bridge=bridge, mac=mac)
    guest.run(["ip", "-4", "addr", "flush", "dev", guest.ifname], check=True)
    if mode == "ll":
        guest.run(["ip", "-6", "route", "add", f"{EC2}/128", "dev", guest.ifname], check=True)
    else:
        assert address
        guest.run(["ip", "-6", "addr", "add", address, "dev", guest.ifname, "nodad"],
                  check=True)
        guest.run(["ip", "-6", "route", "add", "default", "via", GLOBAL_GW, "dev",
                   guest.ifname], check=True)
        on = bridge or guest.tap
        have = sh(["ip", "-6", "addr", "show", "dev", on], netns=topology.node).stdout
        if GLOBAL_GW not in have:
            sh(["ip", "-6", "addr", "add", f"{GLOBAL_GW}/64", "dev", on, "nodad"],
               netns=topology.node)
        # The routed network's job: a route to the guest's prefix via its tap.
        prefix = address.rsplit(":", 1)[0] + ":/64"
        sh(["ip", "-6", "route", "replace", prefix, "dev", on], netns=topology.node)
    return guest
