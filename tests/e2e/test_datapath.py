"""End to end through both datapaths (routed taps here; bridged ones in
test_datapath_bridged.py, host services in test_datapath_host_input.py),
one suite: guests in namespaces, the
datapath and the per-tap listeners in a "node" namespace (datapath_node.py),
every case parametrised over ``nft`` and ``ebpf`` (and routed/bridged where it
matters), so identity, spoofing, fail-closed and isolation hold on both by
construction. A case runs on one datapath only where the contract
(contract.py) says the kernels differ, and says why."""

from __future__ import annotations

import time
from typing import Any

import pytest

from interceptor.node.datapath.base import mark_for
from interceptor.node.datapath.contract import ARP_REPLY_MAC
from tests.e2e.datapath_support import (
    AGENT,
    FAST_S,
    MD,
    Nodes,
    body_and_time,
    concurrent_fetch,
    counter,
    fetch,
    guest_neigh,
    guest_reaches_allowed_port,
    steer,
    wait_no_tentative,
)
from tests.lab import NetnsRpc, Topology, ifindex, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

# -- identity ---------------------------------------------------------------------


@pytest.mark.parametrize("route", ["onlink", "gateway"])
@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_guest_reads_through_its_tap(topology: Topology, node: NetnsRpc, route: str,
                                     kind: str) -> None:
    guest = topology.add_guest(route=route, kind=kind)
    steer(node, guest)
    code, body, seconds = fetch(guest)
    assert code == 200, body
    device, peer, _mark = body.split()
    assert device == guest.tap
    assert peer.startswith("10.0.0.2:")
    assert seconds < FAST_S
    assert counter(node, guest.tap, "steered_packets") >= 3
    if route == "onlink":
        assert counter(node, guest.tap, "arp_replies") >= 1
        assert ARP_REPLY_MAC in guest_neigh(guest)
    assert node.call("hook_count", guest.tap) == 1


def test_same_ip_same_port_concurrently(topology: Topology, node: NetnsRpc) -> None:
    a = topology.add_guest(ip="10.0.0.2/24")
    b = topology.add_guest(ip="10.0.0.2/24", route="gateway")
    steer(node, a, b)
    start = time.monotonic()
    results = concurrent_fetch((a, b), 40123)
    wall = time.monotonic() - start
    for guest, (code, body, seconds) in zip((a, b), results, strict=True):
        assert code == 200, body
        assert body.split()[:2] == [guest.tap, "10.0.0.2:40123"]
        assert seconds < FAST_S  # no ~1 s SYN retransmit
    assert wall < 1.5


def test_spoofed_source_lands_on_own_tap(topology: Topology, node: NetnsRpc) -> None:
    victim = topology.add_guest(ip="10.0.0.2/24", mac="02:00:00:00:00:02")
    spoofer = topology.add_guest(ip="10.0.0.3/24", route="gateway")
    steer(node, victim, spoofer)
    # The spoofer sends with the victim's address (and later its MAC too).
    spoofer.run(["ip", "addr", "add", "10.0.0.2/32", "dev", spoofer.ifname], check=True)
    code, body, _ = fetch(spoofer, "--interface", "10.0.0.2")
    assert code == 200
    assert body.split()[0] == spoofer.tap
    assert body.split()[1].startswith("10.0.0.2:")
    spoofer.run(["ip", "link", "set", spoofer.ifname, "address", "02:00:00:00:00:02"],
                check=True)
    code, body, _ = fetch(spoofer, "--interface", "10.0.0.2")
    assert code == 200 and body.split()[0] == spoofer.tap
    code, body, _ = fetch(victim)
    assert code == 200 and body.split()[0] == victim.tap


def test_configured_metadata_address_and_port(topology: Topology, nodes: Nodes) -> None:
    """Another metadata address and port mean the same on both datapaths:
    served there (ARP included), and the default one is not special."""
    node = nodes.start(metadata_address="169.254.1.1", metadata_port=8080)
    guest = topology.add_guest()
    guest.run(["ip", "route", "add", "169.254.1.1", "dev", guest.ifname], check=True)
    steer(node, guest)
    proc = guest.curl("http://169.254.1.1:8080/latest/meta-data/")
    code, body, seconds = body_and_time(proc)
    assert code == 200, (body, proc.stderr)
    assert body.split()[0] == guest.tap and seconds < FAST_S
    assert ARP_REPLY_MAC in guest.run(["ip", "neigh", "show", "169.254.1.1"]).stdout
    assert fetch(guest, max_time=1)[0] == 0  # 169.254.169.254:80: nobody's
    assert ARP_REPLY_MAC not in guest_neigh(guest)


def test_replies_do_not_loop_with_fwmark_accept(topology: Topology, node: NetnsRpc) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    node.call("fwmark_accept", 1)
    code, body, seconds = fetch(guest)
    assert code == 200 and seconds < FAST_S
    mark = mark_for(ifindex(topology.node, guest.tap))
    assert body.split()[2] == f"{mark:#x}"  # the accepted socket inherited the mark


# -- fail closed ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_refused_tap_fails_fast_and_gets_no_arp(topology: Topology, node: NetnsRpc,
                                                kind: str) -> None:
    bound = topology.add_guest()
    gw = topology.add_guest(route="gateway", kind=kind)
    onlink = topology.add_guest()
    steer(node, bound, refused=(gw, onlink))
    node.call("listen", gw.tap)  # even with a listener a refused tap gets nothing
    proc = gw.curl(MD, max_time=3)
    assert proc.returncode == 7, proc.stderr  # connection refused, by the RST
    # curl's own clock: the wall time of `ip netns exec` grows with the
    # number of namespaces on the machine (other tests' too).
    assert body_and_time(proc)[2] < FAST_S
    # On-link guest of a refused tap: nobody answers ARP for the address; the
    # guest's own ARP timeout (about 3 s) ends its connect (EHOSTUNREACH).
    start = time.monotonic()
    proc = onlink.curl(MD, max_time=6)
    assert proc.returncode == 7, proc.stderr
    assert 2.0 < time.monotonic() - start < 5.0
    assert ARP_REPLY_MAC not in guest_neigh(onlink)
    counters = node.call("counters")
    assert counters[gw.tap]["refused_packets"] >= 1
    assert counters[onlink.tap]["arp_replies"] == 0
    if "arp_refused" in node.call("counted"):
        assert counters[onlink.tap]["arp_refused"] >= 1
    assert fetch(bound)[0] == 200


@pytest.mark.parametrize("bridged", [False, True])
def test_arp_when_refused_makes_onlink_guests_fail_fast(topology: Topology, nodes: Nodes,
                                                        bridged: bool) -> None:
    node = nodes.start(arp_when_refused=True)
    bridge = topology.add_bridge() if bridged else None
    bound = topology.add_guest(bridge=bridge)
    onlink = topology.add_guest(bridge=bridge, ip="10.0.0.3/24")
    steer(node, bound, refused=(onlink,))
    proc = onlink.curl(MD, max_time=3)
    assert proc.returncode == 7, proc.stderr  # connection refused, not a timeout
    assert body_and_time(proc)[2] < FAST_S  # curl's clock (without: ~3 s for ARP to fail)
    assert ARP_REPLY_MAC in guest_neigh(onlink)
    counters = node.call("counters")[onlink.tap]
    assert counters["arp_replies"] >= 1 and counters["refused_packets"] >= 1
    assert fetch(bound)[0] == 200


def test_unsynced_tap_fails_closed(topology: Topology, node: NetnsRpc) -> None:
    """A tap matching the managed names that no sync has named yet: its
    guest reaches neither the metadata service, nor the node's services, nor
    a metadata service upstream the node routes to (the host's own cloud
    one), although the node itself still reaches that."""
    upstream = topology.add_netns("u")
    sh(["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", upstream],
       netns=topology.node)
    sh(["ip", "addr", "add", "192.0.2.1/24", "dev", "up0"], netns=topology.node)
    sh(["ip", "link", "set", "up0", "up"], netns=topology.node)
    for cmd in (["ip", "addr", "add", "192.0.2.2/24", "dev", "up1"],
                ["ip", "link", "set", "up1", "up"],
                ["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"],
                ["ip", "route", "add", "10.0.0.0/24", "via", "192.0.2.1"]):
        sh(cmd, netns=upstream)
    sh(["ip", "route", "add", "169.254.169.254/32", "via", "192.0.2.2"], netns=topology.node)
    sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=topology.node)
    cloud = topology.rpc(AGENT, None, netns=upstream)
    cloud.call("host_service", "169.254.169.254", 80)
    # Positive control: the node's own traffic reaches the upstream service.
    assert sh(["curl", "-sS", "--max-time", "2", MD], netns=topology.node).stdout == "host"

    known = topology.add_guest()
    stranger = topology.add_guest(route="gateway")  # matches mdtap*, never synced
    # Routed: upstream's answers would find the way back (so a leak would show).
    sh(["ip", "route", "add", "10.0.0.2/32", "dev", stranger.tap], netns=topology.node)
    steer(node, known)
    node.call("listen", stranger.tap)  # even with a listener it must not be served
    node.call("host_service", "0.0.0.0", 8081)
    for url in (MD, "http://10.0.0.1:8081/"):
        proc = stranger.curl(url, max_time=1)
        assert proc.returncode != 0 and "200" not in proc.stdout, (url, proc.stdout)
    assert cloud.call("host_accepts", "169.254.169.254:80") == 1  # only the control
    assert node.call("host_accepts", "0.0.0.0:8081") == 0
    code, body, _ = fetch(known)  # served by its own listener, not routed upstream
    assert code == 200 and body.split()[0] == known.tap
    # Once synced, the stranger is served like anyone.
    steer(node, known, stranger)
    assert fetch(stranger)[0] == 200


def test_recreated_tap_is_not_served_until_synced(topology: Topology, node: NetnsRpc) -> None:
    guest = topology.add_guest(route="gateway")
    steer(node, guest)
    assert fetch(guest)[0] == 200
    old = ifindex(topology.node, guest.tap)
    new = topology.recreate_veth(guest)
    assert new != old
    node.call("listen", guest.tap)  # a listener on the new device, not yet synced
    proc = guest.curl(MD, max_time=1)
    assert proc.returncode != 0 and "200" not in proc.stdout, proc.stdout
    node.call("sync", {guest.tap: {"steer": True, "ifindex": new}})
    code, body, _ = fetch(guest)
    assert code == 200 and body.split()[0] == guest.tap


def test_toggle_takes_effect_for_new_connections_within_1s(topology: Topology,
                                                           node: NetnsRpc) -> None:
    guest = topology.add_guest(route="gateway")
    steer(node, guest)
    assert fetch(guest)[0] == 200
    node.call("sync", {guest.tap: {"steer": False}})
    start = time.monotonic()
    proc = guest.curl(MD, max_time=2)
    assert proc.returncode == 7, proc.stderr  # refused on the very next connection
    assert time.monotonic() - start < 1.0
    node.call("sync", {guest.tap: {"steer": True}})
    start = time.monotonic()
    code, body, _ = fetch(guest)
    assert code == 200 and body.split()[0] == guest.tap
    assert time.monotonic() - start < 1.0


def test_daemon_killed_then_restarted(topology: Topology, nodes: Nodes) -> None:
    """The kernel keeps the datapath while the daemon is away (a daemon with
    ``keep_datapath_on_exit``, or killed): ARP still answered, a refused tap
    still refused at once, TCP waits for the listener; a new daemon adopts
    it without duplicating anything."""
    node = nodes.start()
    on = topology.add_guest()
    off = topology.add_guest(route="gateway")
    steer(node, on, refused=(off,))
    assert fetch(on)[0] == 200
    steered_before = counter(node, on.tap, "steered_packets")

    node.proc.kill()  # kill -9 (and with it the listeners)
    node.proc.wait(5)
    on.run(["ip", "neigh", "flush", "dev", on.ifname], check=True)
    proc = on.curl(MD, max_time=1)
    if nodes.kind == "ebpf":  # it sees the socket is gone: a RST, at once
        assert proc.returncode == 7 and body_and_time(proc)[2] < FAST_S, proc.stderr
    else:  # nft learns it only from the daemon's lapsed heartbeat (test_restarts.py)
        assert proc.returncode == 28, proc.stderr  # timeout: SYN dropped, retried later
    assert ARP_REPLY_MAC in guest_neigh(on)
    proc = off.curl(MD, max_time=3)
    assert proc.returncode == 7 and body_and_time(proc)[2] < FAST_S, proc.stderr

    again = nodes.start()
    steer(again, on, refused=(off,))
    for g in (on, off):
        assert again.call("hook_count", g.tap) == 1
    code, body, _ = fetch(on)
    assert code == 200 and body.split()[0] == on.tap
    if nodes.kind == "ebpf":  # pinned per-CPU map; nft's install replaces its tables
        assert counter(again, on.tap, "steered_packets") > steered_before
    assert fetch(off, max_time=3)[0] == 0


def test_remove_leaves_nothing(topology: Topology, node: NetnsRpc) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    assert node.call("installed")
    node.call("remove")
    node.call("remove")  # twice is fine
    assert not node.call("installed")
    assert node.call("leftovers") == []
    # And install after remove comes back to a working datapath.
    node.call("install")
    node.call("sync", {guest.tap: {"steer": True}})
    assert fetch(guest)[0] == 200


# -- isolation from host services -------------------------------------------------


def test_guest_cannot_reach_other_host_services(topology: Topology, node: NetnsRpc) -> None:
    guest = topology.add_guest(route="gateway")  # 10.0.0.1 on the tap
    sh(["ip", "route", "add", "10.0.0.2/32", "dev", guest.tap], netns=topology.node)
    steer(node, guest)
    sh(["ip", "addr", "add", "192.0.2.7/32", "dev", "lo"], netns=topology.node)
    for addr, port in (("0.0.0.0", 8088), ("127.0.0.1", 8081), ("0.0.0.0", 81)):
        node.call("host_service", addr, port)
    # Positive control: the services answer on the node itself.
    assert "host" in sh(["curl", "-sS", "--max-time", "2", "http://192.0.2.7:8088/"],
                        netns=topology.node).stdout
    to_node = ["http://10.0.0.1:8088/", "http://10.0.0.1:80/", "http://10.0.0.1:81/",
               "http://192.0.2.7:8088/", "http://192.0.2.7:81/"]
    for url in ["http://169.254.169.254:8088/", "http://169.254.169.254:81/", *to_node]:
        proc = guest.curl(url, max_time=1)
        assert proc.returncode != 0, (url, proc.stdout)
    assert node.call("host_accepts", "0.0.0.0:8088") == 1  # only the control
    assert node.call("host_accepts", "0.0.0.0:81") == 0
    assert node.call("host_accepts", "127.0.0.1:8081") == 0
    assert node.call("input_drops", guest.tap) >= len(to_node)
    assert counter(node, guest.tap, "unsteered_dropped") >= 2  # the other ports of md
    # Metadata still works, and so does the allow-listed port.
    assert fetch(guest)[0] == 200
    guest_reaches_allowed_port(topology, node, guest)


def test_guest_cannot_reach_host_over_ipv6_link_local(topology: Topology,
                                                      node: NetnsRpc) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    node.call("host_service", "::", 8082)
    host_ll = sh(["ip", "-6", "-o", "addr", "show", "dev", guest.tap, "scope", "link"],
                 netns=topology.node).stdout.split()[3].split("/")[0]
    assert host_ll.startswith("fe80:")
    wait_no_tentative(topology, guest)
    before = node.call("input_drops", guest.tap)
    proc = guest.curl(f"http://[{host_ll}%eth0]:8082/", max_time=1)
    assert proc.returncode == 28, proc.stderr  # the SYN left and was dropped
    assert node.call("host_accepts", ":::8082") == 0
    assert node.call("input_drops", guest.tap) > before
    # Positive control: the service answers on the node itself.
    assert "host" in sh(["curl", "-sS", "--max-time", "2", "http://[::1]:8082/"],
                        netns=topology.node).stdout


# -- scale ------------------------------------------------------------------------


@pytest.mark.slow
def test_sync_1000_taps_changes_per_tap_state_only(topology: Topology, nodes: Nodes) -> None:
    node = nodes.start()
    guest = topology.add_guest()
    steer(node, guest)
    names = [f"tap{topology.prefix[1:]}k{i}" for i in range(1000)]
    batch = "".join(f"tuntap add mode tap name {n}\n" for n in names)
    sh(["ip", "-batch", "-"], netns=topology.node, input=batch, timeout=120)
    taps: dict[str, dict[str, Any]] = {n: {"steer": i % 2 == 0} for i, n in enumerate(names)}
    taps[guest.tap] = {"steer": True}
    start = time.monotonic()
    node.call("sync", taps, timeout=120)
    first = time.monotonic() - start
    assert len(node.call("hooked")) == 1001
    # A small change costs a small sync: drop 10 taps, flip 10 others.
    for n in names[:10]:
        del taps[n]
    for n in names[10:20]:
        taps[n] = {"steer": not taps[n]["steer"]}
    start = time.monotonic()
    node.call("sync", taps, timeout=120)
    second = time.monotonic() - start
    assert len(node.call("hooked")) == 991
    assert node.call("hook_count", names[500]) == 1
    assert fetch(guest)[0] == 200
    print(f"{nodes.kind} sync 1000 taps: {first:.3f}s, incremental: {second:.3f}s")
