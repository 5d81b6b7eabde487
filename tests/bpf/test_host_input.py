"""Packet-level tests of the host input filter in
interceptor/node/datapath/bpf/tap_ingress.c: what a guest sends to any
address of the node itself is dropped unless it is ICMP, a reply on a
connection the host opened, or to an allowed port; forwarded traffic is
untouched. The lab namespace is a routing node (lab.routed_node)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import Ether

from interceptor.node.datapath.ebpf import EbpfDatapath
from interceptor.node.datapath.ebpf_syscall import ProgRunResult, prog_test_run
from interceptor.node.datapath.nft_ruleset import GUEST_MARK_TAG as SEEN  # "seen by the program"
from tests.bpf.lab import (
    BRIDGE_ADDR,
    BRIDGE_ADDR6,
    BRIDGE_MAC,
    FORWARDED,
    FORWARDED6,
    GATEWAY,
    HOST_LL,
    LOOPBACK_ADDR,
    UPLINK_ADDR,
    UPLINK_ADDR6,
    PacketLab,
)

pytestmark = pytest.mark.root

TC_ACT_OK = 0
TC_ACT_SHOT = 2

GUEST_MAC = "52:54:00:12:34:56"
GUEST_IP = "10.0.0.2"
GUEST_IP6 = "2001:db8:1::2"
GUEST_LL = "fe80::5054:ff:fe12:3456"
HOST_MAC = "02:00:00:00:00:01"

HOST_V4 = [GATEWAY, UPLINK_ADDR, LOOPBACK_ADDR, "127.0.0.1", "192.0.2.255",
           "255.255.255.255", "224.0.0.251", "169.254.169.253"]


@pytest.fixture(scope="module")
def dp(lab: PacketLab) -> EbpfDatapath:
    """ena steered, off refused, brp a bridge port; no ports allowed."""
    dp = lab.datapath()
    dp.sync(lab.taps({"ena": True, "off": False, "brp": False}, bridge={"brp": "br"}))
    return dp


@pytest.fixture(scope="module")
def allowing(lab: PacketLab) -> EbpfDatapath:
    dp = lab.datapath(input_allow_udp=(67, 547), input_allow_tcp=(53,))
    dp.sync(lab.taps({"ena": True}))
    return dp


def run(dp: EbpfDatapath, lab: PacketLab, link: str, frame: Any) -> ProgRunResult:
    return prog_test_run(dp.tap_program_fd, bytes(frame), ifindex=lab.ifindex[link])


def dropped(dp: EbpfDatapath, link: str) -> int:
    return dp.counters()[link].host_input_dropped


def v4(dst: str, l4: Any, src: str = GUEST_IP, **ip: Any) -> Any:
    return Ether(src=GUEST_MAC, dst=HOST_MAC) / IP(src=src, dst=dst, **ip) / l4


def v6(dst: str, l4: Any, src: str = GUEST_IP6) -> Any:
    return Ether(src=GUEST_MAC, dst=HOST_MAC) / IPv6(src=src, dst=dst) / l4


def assert_dropped(dp: EbpfDatapath, lab: PacketLab, link: str, frame: Any) -> None:
    before = dropped(dp, link)
    res = run(dp, lab, link, frame)
    assert (res.retval, res.mark) == (TC_ACT_SHOT, SEEN), Ether(bytes(frame)).summary()
    assert dropped(dp, link) == before + 1


def assert_untouched(dp: EbpfDatapath, lab: PacketLab, link: str, frame: Any) -> None:
    raw = bytes(frame)
    before = dropped(dp, link)
    res = run(dp, lab, link, raw)
    assert (res.retval, res.data, res.mark) == (TC_ACT_OK, raw, SEEN), Ether(raw).summary()
    assert dropped(dp, link) == before


# -- IPv4 ----------------------------------------------------------------------------


@pytest.mark.parametrize("dst", HOST_V4)
@pytest.mark.parametrize("l4", [TCP(sport=40000, dport=7070, flags="S"),
                                UDP(sport=40000, dport=7071)], ids=["tcp", "udp"])
@pytest.mark.parametrize("link", ["ena", "off"])
def test_ipv4_to_the_node_is_dropped(lab: PacketLab, dp: EbpfDatapath, dst: str, l4: Any,
                                     link: str) -> None:
    """The tap's own address, another interface's, one on lo, loopback,
    directed and limited broadcast, multicast: all the node's own."""
    if dst == "169.254.169.253":
        # A link-local address the node owns (on lo) is the node's too.
        with IPRoute() as ipr:
            ipr.addr("replace", index=1, address=dst, prefixlen=32)
        try:
            assert_dropped(dp, lab, link, v4(dst, l4))
        finally:
            with IPRoute() as ipr:
                ipr.addr("del", index=1, address=dst, prefixlen=32)
        return
    assert_dropped(dp, lab, link, v4(dst, l4))


@pytest.mark.parametrize("l4", [TCP(sport=40000, dport=22, flags="S"), UDP(dport=53),
                                ICMP()], ids=["tcp", "udp", "icmp"])
def test_forwarded_ipv4_passes(lab: PacketLab, dp: EbpfDatapath, l4: Any) -> None:
    assert_untouched(dp, lab, "ena", v4(FORWARDED, l4))
    # (not a node address: 169.254.169.253 only goes out of the default route)
    assert_untouched(dp, lab, "ena", v4("169.254.169.253", l4))


@pytest.mark.parametrize("dst", [GATEWAY, UPLINK_ADDR, "255.255.255.255"])
def test_icmp_to_the_node_passes(lab: PacketLab, dp: EbpfDatapath, dst: str) -> None:
    assert_untouched(dp, lab, "ena", v4(dst, ICMP()))


def test_other_protocols_to_the_node_are_dropped(lab: PacketLab, dp: EbpfDatapath) -> None:
    assert_dropped(dp, lab, "ena", v4(GATEWAY, b"\0" * 8, proto=47))  # GRE
    assert_dropped(dp, lab, "ena", v4("224.0.0.22", b"\x22" + b"\0" * 7, proto=2))  # IGMP


def test_ip_options_do_not_hide_the_port(lab: PacketLab, allowing: EbpfDatapath) -> None:
    opts: dict[str, Any] = {"options": [b"\x01\x01\x01\x00"]}
    assert_untouched(allowing, lab, "ena", v4(GATEWAY, TCP(dport=53, flags="S"), **opts))
    assert_dropped(allowing, lab, "ena", v4(GATEWAY, TCP(dport=54, flags="S"), **opts))


def test_fragments(lab: PacketLab, dp: EbpfDatapath) -> None:
    """A first fragment is judged like a datagram; a later one passes, since
    without its first fragment it can never reach a socket."""
    assert_dropped(dp, lab, "ena", v4(GATEWAY, UDP(dport=7071) / (b"x" * 16), flags="MF"))
    assert_untouched(dp, lab, "ena", v4(GATEWAY, b"x" * 16, frag=3, proto=17))


def test_truncated_transport_header_to_the_node_is_dropped(lab: PacketLab,
                                                           dp: EbpfDatapath) -> None:
    # An IP header that claims 2 bytes of UDP: no ports to judge.
    frame = bytes(v4(GATEWAY, b"\x9c\x40", proto=17))
    assert_dropped(dp, lab, "ena", frame)


# -- bridge ports ------------------------------------------------------------------------
# brp is a port of br (BRIDGE_MAC, BRIDGE_ADDR): what the bridge passes up to
# the node is judged as entering on br; what it switches to others is not.

OTHER_GUEST_MAC = "52:54:00:00:00:77"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"


def link_mac(lab: PacketLab, link: str) -> str:
    with IPRoute() as ipr:  # (/sys/class/net shows another namespace)
        return str(ipr.get_links(lab.ifindex[link])[0].get_attr("IFLA_ADDRESS"))


def on_bridge(mac: str, dst: str, l4: Any, src: str = "10.9.0.2") -> Any:
    fam = IPv6(src="2001:db8:9::2", dst=dst) if ":" in dst else IP(src=src, dst=dst)
    return Ether(src=GUEST_MAC, dst=mac) / fam / l4


def assert_host_copy_refused(dp: EbpfDatapath, lab: PacketLab, frame: Any) -> None:
    """A broadcast/multicast frame the node must not take: passed on for the
    bridge to flood (made PACKET_OTHERHOST, which the IP layer drops; the
    e2e tests show both halves), counted as host input."""
    raw = bytes(frame)
    before = dropped(dp, "brp")
    res = run(dp, lab, "brp", raw)
    assert (res.retval, res.data, res.mark) == (TC_ACT_OK, raw, SEEN), Ether(raw).summary()
    assert dropped(dp, "brp") == before + 1


@pytest.mark.parametrize("dst", [BRIDGE_ADDR, UPLINK_ADDR, GATEWAY, LOOPBACK_ADDR,
                                 "127.0.0.1", "10.9.0.255", BRIDGE_ADDR6, UPLINK_ADDR6])
@pytest.mark.parametrize("l4", [TCP(sport=40000, dport=7070, flags="S"),
                                UDP(sport=40000, dport=7071)], ids=["tcp", "udp"])
@pytest.mark.parametrize("to", ["bridge", "tap"])
def test_bridge_port_unicast_to_the_node_is_dropped(lab: PacketLab, dp: EbpfDatapath,
                                                    dst: str, l4: Any, to: str) -> None:
    """To the bridge's MAC or the tap's own (both local FDB entries the
    bridge passes up): the bridge's addresses and every other local one."""
    mac = BRIDGE_MAC if to == "bridge" else link_mac(lab, "brp")
    assert_dropped(dp, lab, "brp", on_bridge(mac, dst, l4))


def test_bridge_port_judged_as_its_bridge_even_when_unsynced(lab: PacketLab) -> None:
    """The kernel's word wins: a tap that became a port since its TapState
    was made (bridge=None here) is judged as a port at once."""
    dp = lab.datapath()
    dp.sync(lab.taps({"brp": False}))
    assert_dropped(dp, lab, "brp", on_bridge(BRIDGE_MAC, BRIDGE_ADDR, UDP(dport=7071)))
    ports = dp._table("bridge_ports")
    entry = ports[ports.Key(lab.ifindex["brp"])]
    assert int(entry.bridge_ifindex) == lab.ifindex["br"]
    assert bytes(entry.bridge_mac) == bytes.fromhex(BRIDGE_MAC.replace(":", ""))


@pytest.mark.parametrize("dst", ["255.255.255.255", "10.9.0.255", "224.0.0.251", "ff02::1",
                                 "ff02::fb"])
@pytest.mark.parametrize("l4", [UDP(sport=5353, dport=5353),
                                TCP(sport=40000, dport=7070, flags="S")], ids=["udp", "tcp"])
def test_bridge_port_group_frames_keep_flooding(lab: PacketLab, dp: EbpfDatapath,
                                                dst: str, l4: Any) -> None:
    """Broadcast and multicast reach the node and the other guests: the
    node's copy is refused, the frame itself goes on."""
    if dst.startswith("ff02"):
        mac = "33:33:00:00:00:" + ("01" if dst == "ff02::1" else "fb")
    elif dst.startswith("224"):
        mac = "01:00:5e:00:00:fb"
    else:
        mac = BCAST_MAC
    assert_host_copy_refused(dp, lab, on_bridge(mac, dst, l4))


@pytest.mark.parametrize("dst", ["10.9.0.3", BRIDGE_ADDR, UPLINK_ADDR, "2001:db8:9::3",
                                 BRIDGE_ADDR6])
def test_bridge_port_unicast_to_another_station_passes(lab: PacketLab, dp: EbpfDatapath,
                                                       dst: str) -> None:
    """Guest to guest: switched by the bridge, never the node's, whatever the
    IP destination says."""
    for l4 in (TCP(sport=40000, dport=7070, flags="S"), UDP(dport=7071)):
        assert_untouched(dp, lab, "brp", on_bridge(OTHER_GUEST_MAC, dst, l4))


def test_bridge_port_forwarded_and_icmp_pass(lab: PacketLab, dp: EbpfDatapath) -> None:
    """Routed through the node (the bridge's MAC, a remote address), ICMP and
    ND to it, and broadcast ICMP/ARP-less discovery: untouched, uncounted."""
    assert_untouched(dp, lab, "brp", on_bridge(BRIDGE_MAC, FORWARDED, UDP(dport=53)))
    assert_untouched(dp, lab, "brp", on_bridge(BRIDGE_MAC, FORWARDED6, TCP(flags="S")))
    assert_untouched(dp, lab, "brp", on_bridge(BRIDGE_MAC, BRIDGE_ADDR, ICMP()))
    assert_untouched(dp, lab, "brp", on_bridge(BCAST_MAC, "255.255.255.255", ICMP()))
    ns = ICMPv6ND_NS(tgt=BRIDGE_ADDR6)
    assert_untouched(dp, lab, "brp", on_bridge("33:33:ff:00:00:01", "ff02::1:ff00:1", ns))


def test_bridge_port_allowed_ports_pass(lab: PacketLab) -> None:
    dp = lab.datapath(input_allow_udp=(67,), input_allow_tcp=(53,))
    dp.sync(lab.taps({"brp": True}, bridge={"brp": "br"}))
    dhcp = on_bridge(BCAST_MAC, "255.255.255.255", UDP(sport=68, dport=67), src="0.0.0.0")
    assert_untouched(dp, lab, "brp", dhcp)
    assert_untouched(dp, lab, "brp", on_bridge(BRIDGE_MAC, BRIDGE_ADDR, TCP(dport=53,
                                                                             flags="S")))
    assert_dropped(dp, lab, "brp", on_bridge(BRIDGE_MAC, BRIDGE_ADDR, UDP(dport=53)))
    assert_host_copy_refused(dp, lab, on_bridge(BCAST_MAC, "255.255.255.255",
                                                UDP(dport=68)))


def test_bridge_port_reply_on_host_connection_passes(
        lab: PacketLab, dp: EbpfDatapath, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, _ = tcp_pair
    cport = client.getsockname()[1]
    ack = on_bridge(BRIDGE_MAC, LOOPBACK_ADDR, TCP(sport=cport, dport=7300, flags="A"),
                    src=GATEWAY)
    assert_untouched(dp, lab, "brp", ack)
    syn = on_bridge(BRIDGE_MAC, LOOPBACK_ADDR, TCP(sport=cport + 1, dport=7300, flags="S"),
                    src=GATEWAY)
    assert_dropped(dp, lab, "brp", syn)


# -- allow-lists -----------------------------------------------------------------------


def test_allowed_ports_pass(lab: PacketLab, allowing: EbpfDatapath) -> None:
    assert_untouched(allowing, lab, "ena",
                     v4("255.255.255.255", UDP(sport=68, dport=67), src="0.0.0.0"))
    assert_untouched(allowing, lab, "ena", v4(GATEWAY, TCP(dport=53, flags="S")))
    assert_untouched(allowing, lab, "ena", v6("ff02::1:2", UDP(sport=546, dport=547),
                                              src=GUEST_LL))
    assert_dropped(allowing, lab, "ena", v4(GATEWAY, UDP(dport=53)))  # TCP only
    assert_dropped(allowing, lab, "ena", v4(GATEWAY, TCP(dport=67, flags="S")))  # UDP only


def test_allow_list_is_rewritten_on_install(lab: PacketLab, allowing: EbpfDatapath) -> None:
    """A restart with another allow-list adopts the pinned map and replaces
    its contents."""
    frame = v4(GATEWAY, UDP(dport=67))
    assert_untouched(allowing, lab, "ena", frame)
    narrower = EbpfDatapath(dataclasses.replace(allowing.cfg, input_allow_udp=(547,)))
    narrower.install()
    try:
        narrower.sync(lab.taps({"ena": True}))
        assert run(narrower, lab, "ena", frame).retval == TC_ACT_SHOT
    finally:
        narrower.close()
        allowing.install()
        allowing.sync(lab.taps({"ena": True}))
    assert_untouched(allowing, lab, "ena", frame)


# -- replies on connections the host opened ---------------------------------------------


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """An established connection GATEWAY:<port> -> LOOPBACK_ADDR:7300."""
    server = socket.create_server((LOOPBACK_ADDR, 7300))
    client = socket.socket()
    try:
        client.bind((GATEWAY, 0))
        client.connect((LOOPBACK_ADDR, 7300))
        conn, _ = server.accept()
        try:
            yield client, conn
        finally:
            conn.close()
    finally:
        client.close()
        server.close()


def test_reply_on_host_tcp_connection_passes(lab: PacketLab, dp: EbpfDatapath,
                                             tcp_pair: tuple[socket.socket, socket.socket]
                                             ) -> None:
    client, _ = tcp_pair
    cport = client.getsockname()[1]
    # Seen from LOOPBACK_ADDR:7300's established socket, GATEWAY:cport is the peer.
    ack = v4(LOOPBACK_ADDR, TCP(sport=cport, dport=7300, flags="A"), src=GATEWAY)
    assert_untouched(dp, lab, "ena", ack)
    # A pure SYN on that 4-tuple is no reply (it could reopen a TIME-WAIT one).
    assert_dropped(dp, lab, "ena", v4(LOOPBACK_ADDR, TCP(sport=cport, dport=7300, flags="S"),
                                      src=GATEWAY))
    # The same service's listener is not a connection of the host's.
    assert_dropped(dp, lab, "ena", v4(LOOPBACK_ADDR, TCP(sport=cport + 1, dport=7300,
                                                         flags="S"), src=GATEWAY))


def test_reply_on_connected_udp_socket_passes(lab: PacketLab, dp: EbpfDatapath) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((UPLINK_ADDR, 7301))
        sock.connect((GUEST_IP, 5353))
        assert_untouched(dp, lab, "ena", v4(UPLINK_ADDR, UDP(sport=5353, dport=7301)))
        assert_dropped(dp, lab, "ena", v4(UPLINK_ADDR, UDP(sport=5354, dport=7301)))
    finally:
        sock.close()
    unconnected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        unconnected.bind(("0.0.0.0", 7301))
        assert_dropped(dp, lab, "ena", v4(UPLINK_ADDR, UDP(sport=5353, dport=7301)))
    finally:
        unconnected.close()


# -- IPv6 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("l4", [TCP(sport=40000, dport=7070, flags="S"),
                                UDP(sport=40000, dport=7071)], ids=["tcp", "udp"])
@pytest.mark.parametrize("src", [GUEST_IP6, GUEST_LL], ids=["global", "linklocal"])
def test_ipv6_to_the_node_is_dropped(lab: PacketLab, dp: EbpfDatapath, l4: Any,
                                     src: str) -> None:
    for dst in (HOST_LL, UPLINK_ADDR6, "::1", "ff02::1", "ff02::fb"):
        for link in ("ena", "off"):
            assert_dropped(dp, lab, link, v6(dst, l4, src=src))


def test_forwarded_ipv6_passes(lab: PacketLab, dp: EbpfDatapath) -> None:
    assert_untouched(dp, lab, "ena", v6(FORWARDED6, TCP(dport=443, flags="S")))
    assert_untouched(dp, lab, "ena", v6(FORWARDED6, UDP(dport=53)))


def test_neighbour_discovery_and_mld_pass(lab: PacketLab, dp: EbpfDatapath) -> None:
    ns = ICMPv6ND_NS(tgt=HOST_LL)
    assert_untouched(dp, lab, "ena", v6("ff02::1:ff00:1", ns, src=GUEST_LL))
    assert_untouched(dp, lab, "ena", v6(HOST_LL, ICMPv6EchoRequest(), src=GUEST_LL))
    mld = IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport2()
    assert_untouched(dp, lab, "ena", v6("ff02::16", mld, src=GUEST_LL))


def test_ipv6_extension_headers_do_not_hide_the_port(lab: PacketLab, dp: EbpfDatapath,
                                                     allowing: EbpfDatapath) -> None:
    hbh = IPv6ExtHdrHopByHop()
    assert_dropped(dp, lab, "ena", v6(UPLINK_ADDR6, hbh / UDP(dport=7071)))
    assert_untouched(allowing, lab, "ena", v6(UPLINK_ADDR6, hbh / UDP(dport=547)))
    first = IPv6ExtHdrFragment(offset=0, m=1, id=7) / UDP(dport=7071) / (b"x" * 16)
    assert_dropped(dp, lab, "ena", v6(UPLINK_ADDR6, first))
    later = IPv6ExtHdrFragment(offset=3, m=0, id=7, nh=17) / (b"x" * 16)
    assert_untouched(dp, lab, "ena", v6(UPLINK_ADDR6, later))
