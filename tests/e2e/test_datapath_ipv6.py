"""The datapath suite over IPv6 (both datapaths, routed and bridged taps):
guests that have only a link-local address ask ``[fe80::a9fe:a9fe%eth0]``
(OpenStack's address) or ``[fd00:ec2::254]`` with an on-link route; guests
with a global address ask through their default gateway (the node's
link-local address on the tap or bridge). Identity is the tap, never the
source address; the neighbour advertisement, refusal, toggle and host
isolation hold as for IPv4 (test_datapath.py)."""

from __future__ import annotations

import subprocess
import time

import pytest

from interceptor.node.datapath.contract import ARP_REPLY_MAC
from tests.e2e.datapath_support import (
    EC2,
    FAST_S,
    GLOBAL_GW,
    LL,
    Nodes,
    body_and_time,
    counter,
    steer,
    url,
    v6_guest,
    wait_no_tentative,
)
from tests.lab import Guest, NetnsRpc, Topology, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

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


@pytest.mark.parametrize("bridged", [False, True])
def test_global_guest_reads_through_its_tap(topology: Topology, node: NetnsRpc,
                                            bridged: bool) -> None:
    bridge = topology.add_bridge() if bridged else None
    guest = v6_guest(topology, mode="global", bridge=bridge, address="2001:db8:1::2/64")
    steer(node, guest)
    wait_no_tentative(topology, guest)
    for address in (EC2, LL):
        code, body, seconds = fetch6(guest, address)
        assert code == 200, (address, body)
        device, peer, _mark = body.split()
        assert device == guest.tap
        expect = "2001:db8:1::2:" if address == EC2 else "fe80:"
        assert peer.startswith(expect), (address, peer)
        assert seconds < FAST_S


def test_same_address_same_port_concurrently(topology: Topology, node: NetnsRpc) -> None:
    """Two guests with the same link-local address and MAC-derived nothing:
    same source address and port at once, each lands on its own tap."""
    a = v6_guest(topology, mode="ll", mac="02:00:00:00:00:0a")
    b = v6_guest(topology, mode="ll", mac="02:00:00:00:00:0a")
    steer(node, a, b)
    wait_no_tentative(topology, a, b)
    procs = [subprocess.Popen(
        ["ip", "netns", "exec", g.netns, "curl", "-sS", "--max-time", "3", "--local-port",
         "40123", "-w", "\n%{http_code} %{time_total}", url(LL, g)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in (a, b)]
    results = [body_and_time(subprocess.CompletedProcess([], 0, p.communicate(timeout=10)[0],
                                                         "")) for p in procs]
    peers = set()
    for guest, (code, body, seconds) in zip((a, b), results, strict=True):
        assert code == 200, body
        device, peer, _ = body.split()
        assert device == guest.tap and peer.endswith(":40123")
        peers.add(peer)
        assert seconds < FAST_S
    assert len(peers) == 1  # the very same source address and port


def test_spoofed_source_lands_on_own_tap(topology: Topology, node: NetnsRpc) -> None:
    victim = v6_guest(topology, mode="global", address="2001:db8:1::2/64",
                      mac="02:00:00:00:00:02")
    spoofer = v6_guest(topology, mode="global", address="2001:db8:1::3/64")
    steer(node, victim, spoofer)
    # The spoofer takes the victim's addresses (global and link-local) and MAC.
    spoofer.run(["ip", "-6", "addr", "add", "2001:db8:1::2/128", "dev", spoofer.ifname,
                 "nodad"], check=True)
    spoofer.run(["ip", "link", "set", spoofer.ifname, "address", "02:00:00:00:00:02"],
                check=True)
    spoofer.run(["ip", "-6", "addr", "flush", "dev", spoofer.ifname, "scope", "link"],
                check=True)
    spoofer.run(["ip", "-6", "addr", "add", "fe80::ff:fe00:2/64", "dev", spoofer.ifname,
                 "nodad"], check=True)
    wait_no_tentative(topology, victim, spoofer)
    proc = spoofer.curl(url(EC2, spoofer), "--interface", "2001:db8:1::2")
    code, body, _ = body_and_time(proc)
    assert code == 200, (proc.stderr, spoofer.run(["ip", "-6", "addr"]).stdout)
    assert body.split()[0] == spoofer.tap and body.split()[1].startswith("2001:db8:1::2:")
    code, body, _ = fetch6(spoofer, LL)
    assert code == 200, body
    assert body.split()[0] == spoofer.tap and body.split()[1].startswith("fe80::ff:fe00:2:")
    code, body, _ = fetch6(victim, EC2)
    assert code == 200 and body.split()[0] == victim.tap


@pytest.mark.parametrize("bridged", [False, True])
def test_refused_tap_fails_fast_and_gets_no_ndp(topology: Topology, node: NetnsRpc,
                                                bridged: bool) -> None:
    """As ARP: no neighbour answer on a refused tap (the guest's own
    resolution timeout ends its connect), a RST for a guest that reaches the
    address through its gateway."""
    bridge = topology.add_bridge() if bridged else None
    bound = v6_guest(topology, mode="ll", bridge=bridge)
    onlink = v6_guest(topology, mode="ll", bridge=bridge)
    gw = v6_guest(topology, mode="global", bridge=bridge, address="2001:db8:2::2/64")
    steer(node, bound, refused=(onlink, gw))
    node.call("listen", gw.tap)  # even with listeners a refused tap gets nothing
    wait_no_tentative(topology, bound, onlink, gw)
    proc = gw.curl(url(EC2, gw), max_time=3)
    assert proc.returncode == 7, proc.stderr  # connection refused, by the RST
    assert body_and_time(proc)[2] < FAST_S
    start = time.monotonic()
    proc = onlink.curl(url(LL, onlink), max_time=6)
    assert proc.returncode in (7, 28), proc.stderr  # no neighbour: never connected
    assert time.monotonic() - start > 2.0
    assert ARP_REPLY_MAC not in onlink.run(["ip", "-6", "neigh"]).stdout
    counters = node.call("counters")
    assert counters[gw.tap]["refused_packets"] >= 1
    assert counters[onlink.tap]["arp_replies"] == 0
    if "arp_refused" in node.call("counted"):
        assert counters[onlink.tap]["arp_refused"] >= 1
    assert fetch6(bound, LL)[0] == 200


@pytest.mark.parametrize("bridged", [False, True])
def test_ndp_when_refused_makes_onlink_guests_fail_fast(topology: Topology, nodes: Nodes,
                                                        bridged: bool) -> None:
    node = nodes.start(arp_when_refused=True)
    bridge = topology.add_bridge() if bridged else None
    bound = v6_guest(topology, mode="ll", bridge=bridge)
    onlink = v6_guest(topology, mode="ll", bridge=bridge)
    steer(node, bound, refused=(onlink,))
    wait_no_tentative(topology, bound, onlink)
    for address in (LL, EC2):
        proc = onlink.curl(url(address, onlink), max_time=3)
        assert proc.returncode == 7, (address, proc.stderr)  # refused, not a timeout
        assert body_and_time(proc)[2] < FAST_S
    assert ARP_REPLY_MAC in onlink.run(["ip", "-6", "neigh"]).stdout
    counters = node.call("counters")[onlink.tap]
    assert counters["arp_replies"] >= 2 and counters["refused_packets"] >= 2
    assert fetch6(bound, EC2)[0] == 200


def test_toggle_takes_effect_for_new_connections_within_1s(topology: Topology,
                                                           node: NetnsRpc) -> None:
    guest = v6_guest(topology, mode="global", address="2001:db8:1::2/64")
    steer(node, guest)
    wait_no_tentative(topology, guest)
    assert fetch6(guest, EC2)[0] == 200
    assert fetch6(guest, LL)[0] == 200  # on-link: its neighbour entry is known now
    node.call("sync", {guest.tap: {"steer": False}})
    start = time.monotonic()
    for address in (EC2, LL):
        proc = guest.curl(url(address, guest), max_time=2)
        assert proc.returncode == 7, (address, proc.stderr)
    assert time.monotonic() - start < 1.0
    node.call("sync", {guest.tap: {"steer": True}})
    start = time.monotonic()
    for address in (EC2, LL):
        code, body, _ = fetch6(guest, address)
        assert code == 200 and body.split()[0] == guest.tap
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("bridged", [False, True])
def test_guest_cannot_reach_other_host_services(topology: Topology, node: NetnsRpc,
                                                bridged: bool) -> None:
    """Over IPv6: nothing but port 80 of the metadata addresses, none of the
    node's own addresses (its link-local and global ones on the tap or
    bridge, another of its addresses), from link-local and global guests."""
    bridge = topology.add_bridge() if bridged else None
    glob = v6_guest(topology, mode="global", bridge=bridge, address="2001:db8:1::2/64")
    ll = v6_guest(topology, mode="ll", bridge=bridge)
    steer(node, glob, ll)
    on = bridge or glob.tap
    sh(["ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", on, "nodad"], netns=topology.node)
    sh(["ip", "-6", "addr", "add", "2001:db8:ff::7/128", "dev", "lo"], netns=topology.node)
    for port in (8088, 81):  # (80 on "::" would clash with the per-tap listeners)
        node.call("host_service", "::", port)
    wait_no_tentative(topology, glob, ll)
    assert "host" in sh(["curl", "-sS", "--max-time", "2", "http://[2001:db8:ff::7]:8088/"],
                        netns=topology.node).stdout  # positive control
    for guest in (glob, ll):
        targets = [f"http://[{EC2}]:8088/", f"http://[{EC2}]:81/",
                   f"http://[{LL}%25{guest.ifname}]:81/",
                   f"http://[{GLOBAL_GW}%25{guest.ifname}]:8088/",
                   f"http://[{GLOBAL_GW}%25{guest.ifname}]:81/"]
        if guest is glob:
            targets += ["http://[2001:db8:1::1]:8088/", "http://[2001:db8:1::1]:81/",
                        "http://[2001:db8:ff::7]:81/"]
        for target in targets:
            proc = guest.curl(target, max_time=1)
            assert proc.returncode != 0 and "host" not in proc.stdout, (target, proc.stdout)
        assert fetch6(guest, LL)[0] == 200
    for port in (8088, 81):
        want = 1 if port == 8088 else 0  # only the control
        assert node.call("host_accepts", f":::{port}") == want, port
    assert counter(node, glob.tap, "unsteered_dropped") >= 2
    assert node.call("input_drops", glob.tap) >= 3


def test_unsynced_tap_fails_closed(topology: Topology, node: NetnsRpc) -> None:
    """A tap matching the managed names that no sync has named yet: nothing
    over IPv6 either, even with listeners open on it; once synced, served."""
    known = v6_guest(topology, mode="ll")
    stranger = v6_guest(topology, mode="global", address="2001:db8:3::2/64")
    steer(node, known)
    node.call("listen", stranger.tap)
    wait_no_tentative(topology, known, stranger)
    for address in (EC2, LL):
        proc = stranger.curl(url(address, stranger), max_time=1)
        assert proc.returncode != 0 and "200" not in proc.stdout, (address, proc.stdout)
    assert fetch6(known, EC2)[0] == 200
    node.call("unlisten", stranger.tap)
    steer(node, known, stranger)
    code, body, _ = fetch6(stranger, EC2)
    assert code == 200 and body.split()[0] == stranger.tap
