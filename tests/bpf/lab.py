"""A private network namespace to load and test-run the tc program in.

The program runs through ``BPF_PROG_TEST_RUN``, which needs real ifindexes
(and sockets, for the listener lookup) in the calling thread's network
namespace. So the tests here run with the main thread moved into a private
namespace (``tests.lab.entered_netns``) holding a few veth pairs; the namespace, the pins and
everything else are removed afterwards, also on failure.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

from interceptor.node.datapath.base import TapState
from interceptor.node.datapath.ebpf import EbpfConfig, EbpfDatapath
from tests.lab import unique

# Host ends of veth pairs made in the private namespace ("up" is the node's
# uplink, never a tap).
LINKS = ("ena", "enb", "rate", "off", "brp", "up")

# Addresses of the routed "node" the lab namespace plays (see routed_node).
GATEWAY = "10.0.0.1"  # on every tap, /32, as a routed-tap host has it
HOST_LL = "fe80::1"  # the node's IPv6 link-local address on every tap
UPLINK_ADDR = "192.0.2.1"
UPLINK_ADDR6 = "2001:db8:f::1"
LOOPBACK_ADDR = "203.0.113.9"  # a host address on lo
FORWARDED = "198.51.100.10"  # beyond the default route: forwarded
FORWARDED6 = "2001:db8:99::10"
BRIDGE_MAC = "02:b0:00:00:00:01"  # br's own (brp is its port)
BRIDGE_ADDR = "10.9.0.1"  # on br, /24: bridged guests' subnet
BRIDGE_ADDR6 = "2001:db8:9::1"  # on br, /64


@dataclass
class PacketLab:
    """A private namespace with links, where datapaths can be loaded."""

    netns: str
    ifindex: dict[str, int]
    datapaths: list[EbpfDatapath] = field(default_factory=list)

    def datapath(self, **overrides: Any) -> EbpfDatapath:
        """An installed datapath with its own pin directory."""
        dp = EbpfDatapath(EbpfConfig(instance=unique(), **overrides))
        self.datapaths.append(dp)
        dp.install()
        return dp

    def taps(self, steer: dict[str, bool], bridge: dict[str, str] | None = None
             ) -> dict[str, TapState]:
        bridge = bridge or {}
        return {name: TapState(name, self.ifindex[name], f"i-{name}" if on else None, on,
                               bridge.get(name))
                for name, on in steer.items()}


def routed_node(netns_name: str, ifindex: dict[str, int]) -> None:
    """Make the namespace a routing node: forwarding on, the gateway address
    on every tap, an uplink with a default route, an address on lo, a bridge
    (br, with port brp) with addresses of its own. The
    routes need no neighbours: bpf_fib_lookup reports a forward either way."""
    cmds = [
        "sysctl -qw net.ipv4.conf.all.forwarding=1",
        "sysctl -qw net.ipv6.conf.all.forwarding=1",
        f"ip addr add {UPLINK_ADDR}/24 dev up",
        f"ip addr add {UPLINK_ADDR6}/64 dev up nodad",
        f"ip addr add {LOOPBACK_ADDR}/32 dev lo",
        "ip route add default via 192.0.2.254 dev up",
        f"ip addr add {BRIDGE_ADDR}/24 dev br",
        f"ip addr add {BRIDGE_ADDR6}/64 dev br nodad",
        "ip -6 route add default via 2001:db8:f::fe dev up",
    ]
    for link in ifindex:
        if link not in ("up", "br"):
            cmds += [f"ip addr add {GATEWAY}/32 dev {link}",
                     f"ip addr add {HOST_LL}/64 dev {link} nodad"]
    for cmd in cmds:
        subprocess.run(["ip", "netns", "exec", netns_name, *cmd.split()], check=True,
                       capture_output=True, timeout=10)
