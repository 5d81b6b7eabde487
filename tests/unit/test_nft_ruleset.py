"""The nft datapath's generated ruleset and sync batches (no kernel needed)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from interceptor.common.errors import ConfigError, DatapathError
from interceptor.node.datapath import nft, nft_ruleset
from interceptor.node.datapath.base import MARK_MASK, MARK_TAG, TapState, mark_for
from interceptor.node.datapath.bridge import BYPASS_BIT, BYPASS_MAC, PortFacts
from interceptor.node.datapath.netlink import NetLink, parse_links
from interceptor.node.datapath.nft import NftDatapath, _Applied
from interceptor.node.datapath.nft_ruleset import (
    SHARD_SIZE,
    NftConfig,
    reference_ruleset,
    render_ingress_chain,
    render_ruleset,
)
from interceptor.node.datapath.zones import ZonePool

REPO = Path(__file__).resolve().parents[2]


def tap(name: str, ifindex: int, steer: bool = True) -> TapState:
    return TapState(name, ifindex, f"i-{name}" if steer else None, steer)


def test_deploy_reference_file_is_generated_from_the_code() -> None:
    text = (REPO / "deploy/nftables/interceptor.nft").read_text()
    assert text == reference_ruleset(), (
        "regenerate: python -m interceptor.node.datapath.nft_ruleset > "
        "deploy/nftables/interceptor.nft")


def test_ruleset_has_no_per_tap_rules_and_fails_closed() -> None:
    text = render_ruleset(NftConfig())
    assert "table inet interceptor" in text and "table netdev interceptor" in text
    # Steering goes through the ifindex map and an explicit tproxy address.
    assert "meta mark set iif map @vm_mark" in text
    assert "tproxy ip to 169.254.169.254:80 accept" in text
    assert "tproxy ip to :" not in text  # would mean "the tap's own address"
    # Fail closed after the steering rule, and a host input filter.
    steer = text[text.index("chain steer"):text.index("chain host_input")]
    assert steer.index("tproxy") < steer.index('drop comment "fail closed"')
    assert 'drop comment "no other host service for guests"' in text
    # Unsynced taps that match the patterns are covered by name.
    assert 'iifname != { "tap*", "vnet*" } return' in text
    # Limits from the config.
    assert "limit rate over 20/second burst 40 packets" in text
    assert "ct count over 64" in text


def test_every_guest_frame_is_marked_for_the_host_input_filter() -> None:
    # Bridged taps: the IP layer sees the bridge as iif, so the filter also
    # keys on the mark set at the tap's ingress, before anything else.
    chain = render_ingress_chain(NftConfig(), 0, ["tap0"])
    rules = [ln.strip() for ln in chain.splitlines() if ln.startswith("    ")]
    assert rules[1].startswith("meta mark set meta mark & 0x00ffffff | 0x4e000000 ")
    text = render_ruleset(NftConfig())
    host_input = text[text.index("chain host_input"):text.index("table netdev")]
    rules = [ln.strip() for ln in host_input.splitlines() if ln.startswith("    ")]
    assert rules[1] == ('meta mark & 0xff000000 != 0x4e000000 iif != @managed '
                        'iifname != { "tap*", "vnet*" } return')
    # Dropped from a tap: counted per tap; through a bridge: one counter.
    assert rules[-2].startswith("iif @managed update @cnt_input_drop { iif } drop")
    assert rules[-1].startswith("counter drop")
    # Policy routing matches the steering tag only: the guest tag never hits it.
    assert nft_ruleset.GUEST_MARK_TAG & MARK_MASK != MARK_TAG & MARK_MASK
    assert nft_ruleset.GUEST_MARK_TAG & ~MARK_MASK == 0


def test_config_knobs_reach_the_ruleset() -> None:
    cfg = NftConfig(table="mdx", patterns=("vm-*",), syn_rate_per_s=5, syn_burst=7,
                    max_connections=3, input_allow_udp=(67,), input_allow_tcp=(53, 5353),
                    metadata_port=8775)
    text = render_ruleset(cfg)
    assert "table inet mdx" in text
    assert 'iifname != { "vm-*" }' in text
    assert "limit rate over 5/second burst 7 packets" in text
    assert "ct count over 3" in text
    assert "udp dport { 67 } accept" in text and "tcp dport { 53, 5353 } accept" in text
    assert "tproxy ip to 169.254.169.254:8775" in text
    assert "ip daddr 169.254.169.254 tcp dport 8775 meta mark set" in text


def test_zero_limits_mean_no_limit() -> None:
    text = render_ruleset(NftConfig(syn_rate_per_s=0, max_connections=0))
    assert "@syn_rl {" not in text and "@conn_ct {" not in text
    assert "tproxy ip to 169.254.169.254:80 accept" in text


@pytest.mark.parametrize("kwargs", [
    {"table": "bad name"}, {"patterns": ("ta*p",)}, {"patterns": ("x" * 20,)},
    {"arp_reply_mac": "zz:00:00:00:00:00"}, {"metadata_address": "1.2.3"},
    {"metadata_port": 0}, {"syn_rate_per_s": -1}, {"input_allow_tcp": (70000,)},
    {"metadata_address": "fd00:ec2::254"}, {"metadata_address6": ("169.254.169.254",)},
    {"metadata_address6": ("ff02::1",)}, {"metadata_address6": ("::",)},
    {"metadata_address6": ("fd00:ec2::254", "FD00:EC2::254")},
    {"metadata_address6": ("fd00::1", "fd00::2", "fd00::3")}, {"route_table": 252},
])
def test_bad_config_is_a_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"^config: "):
        NftConfig(**kwargs)  # type: ignore[arg-type]


def test_ingress_chain_answers_arp_and_resets() -> None:
    text = render_ingress_chain(NftConfig(), 3, ["tap2", "tap1"])
    assert 'chain tap_ingress_3' in text
    assert 'devices = { "tap1", "tap2" }' in text
    assert "arp operation set reply fwd to iif" in text
    assert ("ip daddr 169.254.169.254 iif @steered meta pkttype set host "
            "ether daddr set 01:80:c2:00:00:02 accept") in text
    assert "reject with tcp reset" in text
    with pytest.raises(DatapathError):
        render_ingress_chain(NftConfig(), 0, [f"t{i}" for i in range(SHARD_SIZE + 1)])


def batch(old: dict[str, TapState], new: dict[str, TapState],
          shards: list[set[str]]) -> tuple[str, list[set[str]]]:
    dp = NftDatapath()
    return dp._sync_batch(new, _Applied(taps=old, shards=shards), full=False)


def test_incremental_sync_touches_only_changed_elements() -> None:
    old = {"tap1": tap("tap1", 11), "tap2": tap("tap2", 12, steer=False)}
    new = {"tap1": tap("tap1", 11, steer=False), "tap3": tap("tap3", 13)}
    text, shards = batch(old, new, [{"tap1", "tap2"}])
    lines = text.splitlines()
    # tap1 unsteered: add-then-delete (idempotent delete) of its map entries.
    assert "add element inet interceptor vm_mark { 11 : 0x4d00000b }" in lines
    assert "delete element inet interceptor vm_mark { 11 : 0x4d00000b }" in lines
    assert "delete element netdev interceptor steered { 11 }" in lines
    # tap2 gone: unmanaged, its counters dropped.
    assert "delete element inet interceptor managed { 12 }" in lines
    assert "delete element inet interceptor cnt_steered { 12 }" in lines
    # tap3 new and steered.
    assert "add element inet interceptor managed { 13 }" in lines
    assert "add element inet interceptor vm_zone { 13 : 1 }" in lines
    assert "add element netdev interceptor steered { 13 }" in lines
    # No rule is ever added or deleted.
    assert not [ln for ln in lines if re.match(r"(add|insert|delete) rule", ln)]
    # tap2 left shard 0, so that shard is re-created with tap1 and tap3.
    assert shards == [{"tap1", "tap3"}]
    assert "delete chain netdev interceptor tap_ingress_0" in lines


def test_unchanged_state_is_an_empty_batch() -> None:
    taps = {"tap1": tap("tap1", 11)}
    text, shards = batch(taps, taps, [{"tap1"}])
    assert text == "" and shards == [{"tap1"}]


def test_new_taps_join_a_shard_without_recreating_it() -> None:
    old = {f"tap{i}": tap(f"tap{i}", i + 2) for i in range(SHARD_SIZE - 1)}
    new = dict(old, tapx=tap("tapx", 900), tapy=tap("tapy", 901))
    text, shards = batch(old, new, [set(old)])
    assert "delete chain" not in text
    assert 'add chain netdev interceptor tap_ingress_0 { type filter hook ingress devices = ' \
           '{ "tapx" } priority -300; }' in text
    assert "chain tap_ingress_1 {" in text and '"tapy"' in text  # a new shard
    assert shards == [set(old) | {"tapx"}, {"tapy"}]


def test_recreated_tap_rehooks_its_shard_and_moves_elements() -> None:
    old = {"tap1": tap("tap1", 11), "tap2": tap("tap2", 12)}
    new = {"tap1": tap("tap1", 40), "tap2": tap("tap2", 12)}
    text, shards = batch(old, new, [{"tap1", "tap2"}])
    assert "delete element inet interceptor vm_mark { 11 : 0x4d00000b }" in text
    assert "add element inet interceptor vm_mark { 40 : 0x4d000028 }" in text
    assert "delete chain netdev interceptor tap_ingress_0" in text
    assert shards == [{"tap1", "tap2"}]


def test_full_sync_flushes_and_rewrites_all_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    dp = NftDatapath()
    monkeypatch.setattr(dp, "_existing_shards", lambda: ["tap_ingress_0", "tap_ingress_4"])
    taps = {f"tap{i}": tap(f"tap{i}", i + 2, steer=i % 2 == 0) for i in range(450)}
    text, shards = dp._sync_batch(taps, _Applied(), full=True)
    assert "flush set inet interceptor managed" in text
    assert "flush map inet interceptor vm_mark" in text
    assert "delete chain netdev interceptor tap_ingress_4" in text
    assert [len(s) for s in shards] == [200, 200, 50]
    assert text.count("delete chain netdev interceptor tap_ingress_") == 2
    assert text.count("chain tap_ingress_") == 3  # re-created shards


def test_zones_are_allocated_unique_for_any_ifindex() -> None:
    # ifindex mod 65535 would give 1 and 65536 the same zone: two guests with
    # the same address and port would then share conntrack entries.
    pool = ZonePool()
    big = [1, 65536, 131071, (1 << 24) + 1, (1 << 31) - 1]
    pool.assign(big)
    zones = pool.zones
    assert sorted(zones.values()) == [1, 2, 3, 4, 5]
    pool.assign([65536, 7])  # kept taps keep their zone; freed zones are reused
    assert pool.zones[65536] == zones[65536] and pool.zones[7] == 1
    assert all(0 < z <= 0xFFFF for z in pool.zones.values())
    with pytest.raises(ValueError, match="zones"):
        ZonePool(size=2).assign([1, 2, 3])


def test_marks_cover_every_linux_ifindex() -> None:
    for ifindex in (1, 65536, (1 << 24) - 1, 1 << 24, (1 << 31) - 1):
        assert mark_for(ifindex) & MARK_MASK == MARK_TAG
    with pytest.raises(ValueError):
        mark_for(0)


def test_sync_of_large_ifindexes_gives_distinct_zones() -> None:
    taps = {f"tap{i}": tap(f"tap{i}", i) for i in (1, 65536, (1 << 24) + 1)}
    text, _ = NftDatapath()._sync_batch(taps, _Applied(taps={}, shards=[]), full=False)
    zone_line = next(ln for ln in text.splitlines() if " vm_zone " in ln)
    assert zone_line == ("add element inet interceptor vm_zone "
                         "{ 1 : 1, 65536 : 2, 16777217 : 3 }")


def test_bad_tap_entry_is_refused() -> None:
    dp = NftDatapath()
    dp._applied = _Applied()
    with pytest.raises(DatapathError, match="bad tap entry"):
        dp.sync({"tap1": tap("tap2", 3)})


ARP_REQUEST_RULE = re.compile(r"^ *arp htype 1 .*arp operation request.*$", re.M)


def test_arp_is_answered_on_steered_taps_only_by_default() -> None:
    rule = ARP_REQUEST_RULE.search(render_ingress_chain(NftConfig(), 0, ["tap1"]))
    assert rule is not None
    assert "arp daddr ip 169.254.169.254 iif @steered update @cnt_arp_reply" in rule.group()


def test_arp_when_refused_answers_on_every_managed_tap() -> None:
    text = render_ingress_chain(NftConfig(arp_when_refused=True), 0, ["tap1"])
    rule = ARP_REQUEST_RULE.search(text)
    assert rule is not None
    assert "iif @steered" not in rule.group()
    assert "arp daddr ip 169.254.169.254 update @cnt_arp_reply" in rule.group()
    # Only ARP changes: TCP from a refused tap is still reset, nothing steered.
    assert "meta l4proto tcp update @cnt_refused { iif } reject with tcp reset" in text
    assert "ip daddr 169.254.169.254 iif @steered meta pkttype set host" in text


def test_steered_frames_are_readdressed_past_a_bridge() -> None:
    # 01:80:c2:00:00:02: a link-local group address whose bit a bridge's
    # group_fwd_mask may never have (bits 0-2 are restricted in the kernel).
    assert BYPASS_MAC == "01:80:c2:00:00:02"
    assert 1 << int(BYPASS_MAC.rsplit(":", 1)[1], 16) == BYPASS_BIT
    assert BYPASS_BIT & 0x7
    text = render_ingress_chain(NftConfig(), 0, ["tap1"])
    lines = [ln.strip() for ln in text.splitlines()]
    reply = next(ln for ln in lines if ln.startswith("arp operation reply"))
    assert "meta pkttype host iif @steered ether daddr set 01:80:c2:00:00:02 accept" in reply
    # Nothing about the metadata address itself passes that way.
    assert lines.index(reply) > lines.index(
        'arp daddr ip 169.254.169.254 drop comment "no ARP answer on an unsteered tap"')


@pytest.mark.parametrize(("facts", "reason"), [
    (PortFacts("02:00:00:00:00:01"), None),  # routed
    (PortFacts("fe:54:00:00:00:01", "br0", "02:bb:00:00:00:01"), None),
    (PortFacts("fe:54:00:00:00:01", "br0", "02:bb:00:00:00:01", group_fwd_mask=0x4000), None),
    (PortFacts("fe:54:00:00:00:01", "br0", "fe:54:00:00:00:01"), "has the MAC of its bridge"),
    (PortFacts("fe:54:00:00:00:01", "br0", "02:bb:00:00:00:01", group_fwd_mask=0x4),
     "group_fwd_mask 0x4"),
])
def test_which_bridge_ports_cannot_be_steered(facts: PortFacts, reason: str | None) -> None:
    why = facts.unsteerable()
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


def _nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _newlink(index: int, name: str, mac: str, master: int = 0, kind: str = "",
             fwd_mask: int | None = None, flags: int = 1) -> bytes:
    info = _nla(1, kind.encode() + b"\0") if kind else b""
    if fwd_mask is not None:
        info += _nla(4, b"bridge\0") + _nla(5 | 0x8000, _nla(31, struct.pack("=H", fwd_mask)))
    attrs = (_nla(3, name.encode() + b"\0") + _nla(1, bytes.fromhex(mac.replace(":", "")))
             + _nla(18 | 0x8000, info))
    if master:
        attrs += _nla(10, struct.pack("=I", master))
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 16, 2, 1, 0) + body


def test_link_dump_is_parsed() -> None:
    datagram = b"".join((
        _newlink(2, "br0", "02:BB:00:00:00:01", kind="bridge", flags=0),
        _newlink(3, "tap1", "fe:54:00:00:00:01", master=2, kind="tun", fwd_mask=4),
        _newlink(4, "tap2", "fe:54:00:00:00:02", kind="tun"),
        _newlink(5, "bond0", "02:00:00:00:00:05", kind="bond"),
        _newlink(6, "tap3", "fe:54:00:00:00:03", master=5, kind="tun")))
    links: dict[int, NetLink] = {}
    assert parse_links(datagram, links) is False  # no NLMSG_DONE yet
    assert links[3] == NetLink("tap1", "fe:54:00:00:00:01", 2, "tun", 4)
    assert links[2] == NetLink("br0", "02:bb:00:00:00:01", 0, "bridge", 0, up=False)
    assert parse_links(struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0), links) is True


def test_unsteerable_taps_stay_fail_closed() -> None:
    old = {"tap1": tap("tap1", 11), "tap2": tap("tap2", 12)}
    text, _ = NftDatapath()._sync_batch(old, _Applied(taps=old, shards=[{"tap1", "tap2"}]),
                                        full=False, blocked={"tap2"})
    lines = text.splitlines()
    assert "delete element netdev interceptor steered { 12 }" in lines
    assert "delete element inet interceptor vm_mark { 12 : 0x4d00000c }" in lines
    assert not [ln for ln in lines if "{ 11" in ln]
    # Unblocked later: steered again.
    text, _ = NftDatapath()._sync_batch(
        old, _Applied(taps=old, shards=[{"tap1", "tap2"}], blocked={"tap2": "why"}), full=False)
    assert "add element netdev interceptor steered { 12 }" in text.splitlines()


def test_sync_warns_once_per_unsteerable_tap(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    dp = NftDatapath()
    dp._applied = _Applied()
    batches: list[str] = []
    monkeypatch.setattr(dp, "_apply", batches.append)
    monkeypatch.setattr(dp, "_existing_shards", list)
    same = PortFacts("fe:54:00:00:00:01", "br0", "fe:54:00:00:00:01")
    links = {11: NetLink("tap1", same.mac, master=2), 12: NetLink("tap2", "fe:54:00:00:00:02"),
             2: NetLink("br0", same.mac, kind="bridge")}
    monkeypatch.setattr(nft, "dump_links", lambda: links)
    taps = {"tap1": tap("tap1", 11), "tap2": tap("tap2", 12, steer=False)}
    dp.sync(taps)
    dp.sync(taps)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "tap tap1 is not steered" in warnings[0]
    assert dp.unsteerable() == {"tap1": same.unsteerable()}
    assert "steered { 11 }" not in "".join(batches)


def test_ipv6_rules_per_address_and_off_when_empty() -> None:
    cfg = NftConfig()
    assert cfg.metadata_address6 == ("fd00:ec2::254", "fe80::a9fe:a9fe")
    text = render_ruleset(cfg) + render_ingress_chain(cfg, 0, ["tap1"])
    for a in cfg.metadata_address6:  # one listener per address: one tproxy each
        assert f"ip6 daddr {a} tcp dport 80 meta mark set iif map @vm_mark" in text
        assert f"tproxy ip6 to [{a}]:80 accept" in text
    assert "ip6 daddr { fd00:ec2::254, fe80::a9fe:a9fe } meta l4proto tcp " in text
    # NDP: one answer rule per (target, multicast or unicast destination).
    assert text.count("icmpv6 type set nd-neighbor-advert") == 4
    assert "ip6 daddr ff02::1:ff00:254 " in text and "ip6 daddr ff02::1:fffe:a9fe " in text
    off = NftConfig(metadata_address6=())
    text = render_ruleset(off) + render_ingress_chain(off, 0, ["tap1"])
    assert "ip6 daddr" not in text.replace("ip6 daddr set", "") and "icmpv6" not in text
    assert NftConfig(metadata_address6=("FD00:EC2:0::254",)).metadata_address6 == (
        "fd00:ec2::254",)


def _ones(data: bytes) -> int:
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _icmp6_ok(src: bytes, dst: bytes, icmp: bytes) -> bool:
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    return _ones(pseudo + icmp) == 0xFFFF


@pytest.mark.parametrize("unicast", [False, True])
def test_ndp_rewrite_keeps_the_checksum_right(unicast: bool) -> None:
    """Replays the rule's writes on a solicitation the way the kernel does
    (incremental checksum updates for the address and type writes only) and
    checks the advertisement's checksum."""
    import ipaddress
    target = ipaddress.IPv6Address("fd00:ec2::254")
    guest = ipaddress.IPv6Address("fe80::5054:ff:fe12:3456").packed
    gmac = bytes.fromhex("525400123456")
    mac = bytes.fromhex(NftConfig().arp_reply_mac.replace(":", ""))
    dst = target if unicast else nft_ruleset._solicited_node(str(target))
    ns = bytearray(bytes([135, 0, 0, 0]) + bytes(4) + target.packed + bytes([1, 1]) + gmac)
    csum = 0xFFFF ^ _ones(guest + dst.packed + struct.pack("!I3xB", 32, 58) + bytes(ns))
    ns[2:4] = csum.to_bytes(2, "big")
    assert _icmp6_ok(guest, dst.packed, bytes(ns))

    def update(old: bytes, new: bytes) -> None:  # RFC 1624, as nft's csum write
        c = int.from_bytes(ns[2:4], "big")
        total = (0xFFFF ^ c) + (0xFFFF ^ _ones(old)) + _ones(new)
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        ns[2:4] = (0xFFFF ^ total).to_bytes(2, "big")

    filler = nft_ruleset._checksum_filler(dst, NftConfig().arp_reply_mac)
    daddr = gmac + int(filler, 16).to_bytes(10, "big")  # raw: no update
    update(daddr, guest)  # ip6 daddr set ip6 saddr
    update(guest, target.packed)  # ip6 saddr set <target>
    update(bytes([135, 0]), bytes([136, 0]))  # icmpv6 type set
    ns[0] = 136
    ns[4:8] = bytes.fromhex("60000000")  # raw writes: no update
    ns[24] = 2
    ns[26:32] = mac
    assert _icmp6_ok(target.packed, guest, bytes(ns))
