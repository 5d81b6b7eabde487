"""Packet-level tests of interceptor/node/datapath/bpf/tap_ingress.c through
BPF_PROG_TEST_RUN.

Each frame is built with scapy, run once through the loaded program as if it
arrived on a given link of the private namespace, and judged by the action,
the frame the program left behind, ``skb->mark`` and the counters.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from interceptor.node.datapath.base import MARK_MASK, MARK_TAG, METADATA_ADDRESS, mark_for
from interceptor.node.datapath.bridge import BYPASS_MAC
from interceptor.node.datapath.contract import ARP_REPLY_MAC as DEFAULT_ARP_MAC
from interceptor.node.datapath.ebpf import EbpfDatapath
from interceptor.node.datapath.ebpf_syscall import ProgRunResult, prog_test_run
from interceptor.node.datapath.listeners import open_tap_listener
from interceptor.node.datapath.nft_ruleset import GUEST_MARK_TAG as SEEN  # "seen by the program"
from tests.bpf.lab import FORWARDED, GATEWAY, PacketLab

pytestmark = pytest.mark.root

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7

GUEST_MAC = "52:54:00:12:34:56"
GUEST_IP = "10.0.0.2"
MD = METADATA_ADDRESS


LISTENING = ("ena", "rate")


@pytest.fixture(scope="module")
def listeners() -> Iterator[dict[str, socket.socket]]:
    socks = {name: open_tap_listener(name) for name in LISTENING}
    try:
        yield socks
    finally:
        for s in socks.values():
            s.close()


@pytest.fixture(scope="module")
def dp(lab: PacketLab, listeners: dict[str, socket.socket]) -> EbpfDatapath:
    """ena/enb/rate steered (ena and rate have listeners), off refused."""
    dp = lab.datapath(syn_rate_per_s=20, syn_burst=40)
    dp.sync(lab.taps({"ena": True, "enb": True, "rate": True, "off": False}))
    return dp


def run(dp: EbpfDatapath, lab: PacketLab, link: str, frame: Any) -> ProgRunResult:
    return prog_test_run(dp.tap_program_fd, bytes(frame), ifindex=lab.ifindex[link])


def counts(dp: EbpfDatapath, link: str) -> dict[str, int]:
    c = dp.counters()[link]
    return {"steered": c.steered_packets, "refused": c.refused_packets,
            "arp": c.arp_replies, "syn_limited": c.syn_rate_limited,
            "malformed": c.malformed, "no_listener": c.no_listener,
            "unsteered_dropped": c.unsteered_dropped, "arp_refused": c.arp_refused,
            "host_input_dropped": c.host_input_dropped}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def arp_request(pdst: str = MD, **kw: Any) -> Any:
    fields = {"op": 1, "hwsrc": GUEST_MAC, "psrc": GUEST_IP, "pdst": pdst, **kw}
    return Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(**fields)


def to_md(l4: Any, **ip: Any) -> Any:
    return Ether(src=GUEST_MAC, dst=DEFAULT_ARP_MAC) / IP(src=GUEST_IP, dst=MD, **ip) / l4


def syn(sport: int = 40000, **ip: Any) -> Any:
    return to_md(TCP(sport=sport, dport=80, flags="S", seq=1000), **ip)


def checksums_valid(frame: bytes) -> bool:
    pkt = Ether(frame)
    redo = Ether(frame)
    del redo[IP].chksum
    del redo[TCP].chksum
    redo = Ether(bytes(redo))
    return bool(pkt[IP].chksum == redo[IP].chksum and pkt[TCP].chksum == redo[TCP].chksum)


# -- ARP ---------------------------------------------------------------------------


def test_arp_request_on_enabled_tap_becomes_a_reply(lab: PacketLab, dp: EbpfDatapath) -> None:
    before = counts(dp, "ena")
    res = run(dp, lab, "ena", arp_request())
    assert res.retval == TC_ACT_REDIRECT
    reply = Ether(res.data)
    assert reply.dst == GUEST_MAC and reply.src == DEFAULT_ARP_MAC
    arp = reply[ARP]
    assert arp.op == 2
    assert (arp.hwsrc, arp.psrc) == (DEFAULT_ARP_MAC, MD)
    assert (arp.hwdst, arp.pdst) == (GUEST_MAC, GUEST_IP)
    assert delta(before, counts(dp, "ena")) == {"arp": 1}


def test_arp_on_refused_tap_is_dropped(lab: PacketLab, dp: EbpfDatapath) -> None:
    before = counts(dp, "off")
    assert run(dp, lab, "off", arp_request()).retval == TC_ACT_SHOT
    assert delta(before, counts(dp, "off")) == {"arp_refused": 1}


def test_arp_on_unknown_link_is_dropped(lab: PacketLab, dp: EbpfDatapath) -> None:
    assert run(dp, lab, "brp", arp_request()).retval == TC_ACT_SHOT


def test_other_arp_passes_untouched(lab: PacketLab, dp: EbpfDatapath) -> None:
    frame = bytes(arp_request(pdst="10.0.0.1"))
    res = run(dp, lab, "ena", frame)
    assert res.retval == TC_ACT_OK
    assert res.data == frame


def patched(frame: Any, offset: int, value: bytes) -> bytes:
    raw = bytes(frame)
    return raw[:offset] + value + raw[offset + len(value):]


@pytest.mark.parametrize("frame", [
    arp_request(op=2),  # a reply about the address
    arp_request(psrc=MD),  # a guest claiming the address
    patched(arp_request(), 14 + 4, b"\x08"),  # hardware length 8, same layout
    patched(arp_request(), 14 + 2, b"\x86\xdd"),  # protocol type IPv6
    patched(arp_request(), 14 + 0, b"\x00\x06"),  # hardware type IEEE 802
], ids=["reply", "claim", "hlen8", "ptype-ipv6", "htype802"])
def test_odd_arp_about_the_address_is_dropped(lab: PacketLab, dp: EbpfDatapath,
                                              frame: Any) -> None:
    before = counts(dp, "ena")
    assert run(dp, lab, "ena", frame).retval == TC_ACT_SHOT
    assert delta(before, counts(dp, "ena")) == {"malformed": 1}


def test_arp_when_refused_option_answers_refused_taps(lab: PacketLab) -> None:
    dp = lab.datapath(arp_when_refused=True, arp_reply_mac="02:00:00:00:00:99")
    dp.sync(lab.taps({"off": False}))
    res = run(dp, lab, "off", arp_request())
    assert res.retval == TC_ACT_REDIRECT
    assert Ether(res.data)[ARP].hwsrc == "02:00:00:00:00:99"
    dp.remove()


# -- TCP to the metadata address -------------------------------------------------------


def test_syn_on_enabled_tap_with_listener_is_steered(lab: PacketLab, dp: EbpfDatapath) -> None:
    """Handed to the tap's socket with the tap's mark, and readdressed to the
    group address a bridge hands back to the port (routed or bridged alike);
    nothing else in the frame changes."""
    before = counts(dp, "ena")
    frame = bytes(syn())
    res = run(dp, lab, "ena", frame)
    assert res.retval == TC_ACT_OK
    assert res.mark == mark_for(lab.ifindex["ena"])
    assert Ether(res.data).dst == BYPASS_MAC
    assert res.data[6:] == frame[6:]
    assert delta(before, counts(dp, "ena")) == {"steered": 1}


def test_ip_options_are_skipped_by_ihl(lab: PacketLab, dp: EbpfDatapath) -> None:
    frame = syn(sport=40001, options=[b"\x01\x01\x01\x00"])  # NOPs, EOL: ihl 6
    assert Ether(bytes(frame))[IP].ihl == 6
    res = run(dp, lab, "ena", frame)
    assert res.retval == TC_ACT_OK
    assert res.mark == mark_for(lab.ifindex["ena"])


def test_enabled_tap_without_listener_gets_a_reset(lab: PacketLab, dp: EbpfDatapath) -> None:
    """No socket on the tap (the daemon was killed): the guest is refused at
    once, by the RST a closed port sends, straight back out of the tap."""
    before = counts(dp, "enb")
    res = run(dp, lab, "enb", syn(sport=40004))
    assert res.retval == TC_ACT_REDIRECT
    rst = Ether(res.data)
    assert (rst[IP].src, rst[IP].dst) == (MD, GUEST_IP)
    assert (rst[TCP].sport, rst[TCP].dport, rst[TCP].flags) == (80, 40004, "RA")
    assert checksums_valid(res.data)
    assert delta(before, counts(dp, "enb")) == {"no_listener": 1}


def test_host_wildcard_listener_is_never_chosen(lab: PacketLab, dp: EbpfDatapath,
                                                listeners: dict[str, socket.socket]) -> None:
    """A host service on 0.0.0.0:80 (possible only while our listeners are
    gone, e.g. the daemon is down) must never get a guest's metadata SYN."""
    for name in LISTENING:
        listeners.pop(name).close()
    host = socket.socket()
    try:
        host.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host.bind(("0.0.0.0", 80))
        host.listen()
        res = run(dp, lab, "ena", syn(sport=40010))
        assert res.retval == TC_ACT_REDIRECT  # a RST to the guest
        assert Ether(res.data)[TCP].flags == "RA"
    finally:
        host.close()
        for name in LISTENING:
            listeners[name] = open_tap_listener(name)
    assert run(dp, lab, "ena", syn(sport=40011)).retval == TC_ACT_OK


def test_listener_of_another_tap_is_never_chosen(lab: PacketLab, dp: EbpfDatapath) -> None:
    # enb has no listener; ena's (bound to ena) must not be used for enb.
    res = run(dp, lab, "enb", syn(sport=40002))
    # refused (a RST back out of the tap), not steered: no steering mark
    assert res.retval == TC_ACT_REDIRECT and res.mark & MARK_MASK != MARK_TAG


def test_syn_on_refused_tap_gets_a_reset(lab: PacketLab, dp: EbpfDatapath) -> None:
    before = counts(dp, "off")
    res = run(dp, lab, "off", syn(sport=40003))
    assert res.retval == TC_ACT_REDIRECT
    rst = Ether(res.data)
    assert (rst.src, rst.dst) == (DEFAULT_ARP_MAC, GUEST_MAC)
    assert (rst[IP].src, rst[IP].dst, rst[IP].ihl, rst[IP].len) == (MD, GUEST_IP, 5, 40)
    assert (rst[TCP].sport, rst[TCP].dport) == (80, 40003)
    assert rst[TCP].flags == "RA"
    assert (rst[TCP].seq, rst[TCP].ack) == (0, 1001)
    assert len(res.data) == 54
    assert checksums_valid(res.data)
    assert delta(before, counts(dp, "off")) == {"refused": 1}


def test_data_segment_on_refused_tap_gets_reset_at_its_ack(lab: PacketLab,
                                                            dp: EbpfDatapath) -> None:
    seg = to_md(TCP(sport=40004, dport=80, flags="PA", seq=5000, ack=777)) / Raw(b"GET / HTTP")
    res = run(dp, lab, "off", seg)
    assert res.retval == TC_ACT_REDIRECT
    rst = Ether(res.data)
    assert rst[TCP].flags == "R"
    assert rst[TCP].seq == 777
    assert len(res.data) == 54  # payload trimmed
    assert checksums_valid(res.data)


def test_reset_is_never_answered(lab: PacketLab, dp: EbpfDatapath) -> None:
    seg = to_md(TCP(sport=40005, dport=80, flags="R", seq=1))
    assert run(dp, lab, "off", seg).retval == TC_ACT_SHOT


def test_refused_syn_with_ip_options_is_dropped(lab: PacketLab, dp: EbpfDatapath) -> None:
    frame = syn(sport=40006, options=[b"\x01\x01\x01\x00"])
    assert run(dp, lab, "off", frame).retval == TC_ACT_SHOT


def test_unknown_link_is_refused(lab: PacketLab, dp: EbpfDatapath) -> None:
    assert run(dp, lab, "brp", syn()).retval == TC_ACT_REDIRECT


# -- everything else to the address, and malformed frames ----------------------------------


@pytest.mark.parametrize("l4", [
    TCP(sport=40000, dport=443, flags="S"),
    UDP(sport=40000, dport=80),
    ICMP(),
], ids=["tcp443", "udp80", "icmp"])
@pytest.mark.parametrize("link", ["ena", "off"])
def test_other_traffic_to_the_address_is_dropped(lab: PacketLab, dp: EbpfDatapath,
                                                 l4: Any, link: str) -> None:
    before = counts(dp, link)
    res = run(dp, lab, link, to_md(l4))
    assert res.retval == TC_ACT_SHOT
    assert res.mark == SEEN
    assert delta(before, counts(dp, link)) == {"unsteered_dropped": 1}


@pytest.mark.parametrize("frag", [
    {"frag": 1},  # a non-first fragment (offset 8 bytes)
    {"flags": "MF"},  # a first fragment
])
def test_fragments_to_the_address_are_dropped(lab: PacketLab, dp: EbpfDatapath,
                                              frag: dict[str, Any]) -> None:
    before = counts(dp, "ena")
    res = run(dp, lab, "ena", syn(**frag))
    assert res.retval == TC_ACT_SHOT
    assert res.mark == SEEN
    assert delta(before, counts(dp, "ena")) == {"malformed": 1}


def test_truncated_headers_are_dropped(lab: PacketLab, dp: EbpfDatapath) -> None:
    # (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than an IP header)
    full = bytes(syn())
    for frame in (full[:14 + 20], full[:14 + 20 + 8]):  # no TCP header, half of one
        before = counts(dp, "ena")
        res = run(dp, lab, "ena", frame)
        assert (res.retval, res.mark) == (TC_ACT_SHOT, SEEN)
        assert delta(before, counts(dp, "ena")) == {"malformed": 1}


@pytest.mark.parametrize("ip", [{"ihl": 4}, {"version": 6}, {"len": 30}],
                         ids=["ihl4", "version6", "totlen-short"])
def test_bad_ip_header_to_the_address_is_dropped(lab: PacketLab, dp: EbpfDatapath,
                                                 ip: dict[str, Any]) -> None:
    res = run(dp, lab, "ena", syn(**ip))
    assert res.retval == TC_ACT_SHOT
    assert res.mark == SEEN


def test_tcp_doff_below_five_is_dropped(lab: PacketLab, dp: EbpfDatapath) -> None:
    res = run(dp, lab, "ena", to_md(TCP(sport=40007, dport=80, flags="S", dataofs=4)))
    assert res.retval == TC_ACT_SHOT


def test_short_ethernet_and_other_protocols_pass(lab: PacketLab, dp: EbpfDatapath) -> None:
    frames = [
        bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff", type=0x88CC)) + b"\0" * 4,
        bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff", type=0x86DD)) + b"\0" * 40,
        bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff", type=0x0806)),  # ARP, no body
    ]
    for frame in frames:
        res = run(dp, lab, "ena", frame)
        assert (res.retval, res.data, res.mark) == (TC_ACT_OK, frame, SEEN)


@pytest.mark.parametrize("link", ["ena", "off"])
def test_ordinary_guest_traffic_passes_untouched(lab: PacketLab, dp: EbpfDatapath,
                                                 link: str) -> None:
    frames = [
        Ether(src=GUEST_MAC, dst="02:00:00:00:00:01") / IP(src=GUEST_IP, dst=FORWARDED)
        / TCP(sport=1234, dport=80, flags="S"),
        Ether(src=GUEST_MAC, dst="02:00:00:00:00:01") / IP(src=GUEST_IP, dst="169.254.169.253")
        / UDP(sport=68, dport=67),
        Ether(src=GUEST_MAC, dst="02:00:00:00:00:01") / IP(src=MD, dst=FORWARDED) / ICMP(),
        Ether(src=GUEST_MAC, dst="02:00:00:00:00:01") / IP(src=MD, dst=GATEWAY) / ICMP(),
    ]
    before = counts(dp, link)
    for frame in frames:
        raw = bytes(frame)
        res = run(dp, lab, link, raw)
        assert (res.retval, res.data, res.mark) == (TC_ACT_OK, raw, SEEN)
    assert delta(before, counts(dp, link)) == {}


# -- SYN rate limit ------------------------------------------------------------------


def test_syn_token_bucket_limits_per_tap(lab: PacketLab, dp: EbpfDatapath) -> None:
    """Burst 40 at 20/s: a quick run of 50 SYNs lets the burst through (plus at
    most one refill if the run is slow) and drops the rest; other segments and
    other taps are unaffected."""
    before = counts(dp, "rate")
    results = [run(dp, lab, "rate", syn(sport=41000 + i)).retval for i in range(50)]
    passed = results.count(TC_ACT_OK)
    assert 40 <= passed <= 42
    assert results.count(TC_ACT_SHOT) == 50 - passed
    d = delta(before, counts(dp, "rate"))
    assert d == {"steered": passed, "syn_limited": 50 - passed}
    ack = to_md(TCP(sport=41000, dport=80, flags="A", seq=1001, ack=1))
    assert run(dp, lab, "rate", ack).retval == TC_ACT_OK
    assert run(dp, lab, "ena", syn(sport=42000)).retval == TC_ACT_OK


# -- bridged taps ----------------------------------------------------------------------


def link_mac(lab: PacketLab, link: str) -> str:
    with IPRoute() as ipr:  # (/sys/class/net shows another namespace)
        return str(ipr.get_links(lab.ifindex[link])[0].get_attr("IFLA_ADDRESS"))


def arp_reply(dst: str) -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst=dst)
                 / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST_IP, hwdst=dst, pdst=GATEWAY))


def test_arp_reply_to_the_tap_is_readdressed_on_enabled_taps(lab: PacketLab,
                                                            dp: EbpfDatapath) -> None:
    """The answer to the host's neighbour resolution on the tap goes to the
    group address, so a bridge hands it to the tap (not to itself)."""
    frame = arp_reply(link_mac(lab, "ena"))
    res = run(dp, lab, "ena", frame)
    assert res.retval == TC_ACT_OK
    assert Ether(res.data).dst == BYPASS_MAC
    assert res.data[6:] == frame[6:]


@pytest.mark.parametrize(("link", "to"), [("ena", "other"), ("off", "own"), ("enb", "bcast")])
def test_other_arp_replies_pass_untouched(lab: PacketLab, dp: EbpfDatapath, link: str,
                                          to: str) -> None:
    """Not to the tap's own MAC (another host on a bridge, broadcast), or on
    a refused tap: left to the bridge."""
    dst = {"other": "02:00:00:00:00:77", "own": link_mac(lab, link),
           "bcast": "ff:ff:ff:ff:ff:ff"}[to]
    frame = arp_reply(dst)
    res = run(dp, lab, link, frame)
    assert (res.retval, res.data) == (TC_ACT_OK, frame)


def test_tagged_arp_reply_is_left_alone(lab: PacketLab, dp: EbpfDatapath) -> None:
    """802.1Q-tagged frames belong to the bridge's VLANs: never readdressed."""
    from scapy.layers.l2 import Dot1Q
    mac = link_mac(lab, "ena")
    frame = bytes(Ether(src=GUEST_MAC, dst=mac) / Dot1Q(vlan=5)
                  / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST_IP, hwdst=mac, pdst=GATEWAY))
    res = run(dp, lab, "ena", frame)
    assert (res.retval, res.data) == (TC_ACT_OK, frame)
