"""End to end through both datapaths: the per-tap limits (SYN rate,
connections) and what 0 ("no limit") means, the same on both (contract.py)."""

from __future__ import annotations

import pytest

from tests.e2e.datapath_support import Nodes, counter, steer
from tests.lab import Guest, Topology

pytestmark = [pytest.mark.root, pytest.mark.e2e]


GUEST_CONNECT = """
import socket, sys, time
n, hold = int(sys.argv[1]), sys.argv[2] == "hold"
ok = 0
socks = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(0.3)
    try:
        s.connect(("169.254.169.254", 80))
        ok += 1
        socks.append(s)
    except OSError:
        s.close()
    if not hold:
        for s in socks:
            s.close()
        socks = []
print(ok)
"""


def guest_connects(guest: Guest, n: int, hold: bool) -> int:
    out = guest.run(["python3", "-c", GUEST_CONNECT, str(n), "hold" if hold else "close"],
                    timeout=30, check=True).stdout
    return int(out)


def test_per_tap_syn_rate_limit(topology: Topology, nodes: Nodes) -> None:
    node = nodes.start(syn_rate_per_s=1, syn_burst=5)
    a, b = topology.add_guest(), topology.add_guest()
    steer(node, a, b)
    assert guest_connects(a, 10, hold=False) <= 6  # burst 5 (+1 refilled at most)
    assert counter(node, a.tap, "syn_rate_limited") >= 4
    assert guest_connects(b, 3, hold=False) == 3  # the flood on a did not hurt b


def test_zero_limits_mean_no_limit(topology: Topology, nodes: Nodes) -> None:
    node = nodes.start(syn_rate_per_s=0, max_connections=0)
    guest = topology.add_guest()
    steer(node, guest)
    assert guest_connects(guest, 80, hold=False) == 80  # 20/s burst 40 would drop some
    assert guest_connects(guest, 80, hold=True) == 80  # 64 by default
    assert counter(node, guest.tap, "syn_rate_limited") == 0


@pytest.mark.parametrize("nodes", ["nft"], indirect=True)
def test_per_tap_connection_limit_in_the_kernel(topology: Topology, nodes: Nodes) -> None:
    """nft only: its kernel counts connections per tap (``ct count``). On eBPF
    the guest HTTP server enforces ``max_connections`` alone (contract.py;
    tests/unit/node/test_node_http_server.py)."""
    node = nodes.start(max_connections=3)
    a, b = topology.add_guest(), topology.add_guest()
    steer(node, a, b)
    assert guest_connects(a, 5, hold=True) == 3  # the 4th and 5th SYN are dropped
    assert counter(node, a.tap, "conn_limited") >= 2
    assert guest_connects(b, 3, hold=True) == 3  # another tap has its own budget


GUEST_CONNECT6 = GUEST_CONNECT.replace("socket.socket()", "socket.socket(socket.AF_INET6)") \
    .replace('("169.254.169.254", 80)', '("fd00:ec2::254", 80)')


def test_per_tap_syn_rate_limit_holds_across_both_families(topology: Topology,
                                                           nodes: Nodes) -> None:
    """One SYN budget per tap: IPv6 SYNs draw from the same bucket as IPv4."""
    from tests.e2e.datapath_support import v6_guest, wait_no_tentative
    node = nodes.start(syn_rate_per_s=1, syn_burst=5)
    a = v6_guest(topology, mode="ll")
    b = v6_guest(topology, mode="ll")
    steer(node, a, b)
    wait_no_tentative(topology, a, b)
    out = a.run(["python3", "-c", GUEST_CONNECT6, "10", "close"], timeout=30, check=True)
    assert int(out.stdout) <= 6
    assert counter(node, a.tap, "syn_rate_limited") >= 4
    out = b.run(["python3", "-c", GUEST_CONNECT6, "3", "close"], timeout=30, check=True)
    assert int(out.stdout) == 3  # the flood on a did not hurt b
