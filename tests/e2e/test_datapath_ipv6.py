"""The datapath suite over IPv6 (both datapaths, routed and bridged taps):
guests that have only a link-local address ask ``[fe80::a9fe:a9fe%eth0]``
(OpenStack's address) or ``[fd00:ec2::254]`` with an on-link route; guests
with a global address ask through their default gateway (the node's
link-local address on the tap or bridge). Identity is the tap, never the
source address; the neighbour advertisement, refusal, toggle and host
isolation hold as for IPv4 (test_datapath.py)."""

from __future__ import annotations

import time

import pytest

from interceptor.node.datapath.contract import ARP_REPLY_MAC
from tests.e2e.datapath_support import (
    FAST_S,
    Nodes,
    body_and_time,
    counter,
    steer,
    wait_no_tentative,
)
from tests.lab import Guest, NetnsRpc, Topology, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

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


def fetch6(guest: Guest, address: str, *extra: str,
           max_time: float = 3.0) -> tuple[int, str, float]:
    return body_and_time(guest.curl(url(address, guest), *extra, max_time=max_time))


@pytest.mark.parametrize("address", [EC2, LL])
@pytest.mark.parametrize("bridged", [False, True])
def test_link_local_guest_reads_through_its_tap(topology: Topology, node: NetnsRpc,
                                                address: str, bridged: bool) -> None:
    bridge = topology.add_bridge() if bridged else None
    guest = v6_guest(topology, mode="ll", bridge=bridge)
    steer(node, guest)
    wait_no_tentative(topology, guest)
    code, body, seconds = fetch6(guest, address)
    assert code == 200, body
    device, peer, _mark = body.split()
    assert device == guest.tap
    assert peer.startswith("fe80:")
    assert seconds < FAST_S
    assert counter(node, guest.tap, "arp_replies") >= 1  # the neighbour advertisement
    neigh = guest.run(["ip", "-6", "neigh", "show", address]).stdout
    assert ARP_REPLY_MAC in neigh, neigh
