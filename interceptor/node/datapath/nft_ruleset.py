"""The nft datapath's configuration and ruleset text (nft.py applies it).

The ruleset is constant: per-tap state lives only in set and map elements,
added by ``NftDatapath.sync``; nft.py's docstring walks through the rules.
``deploy/nftables/interceptor.nft`` is :func:`reference_ruleset` for the
default configuration, for operators to review
(``python -m interceptor.node.datapath.nft_ruleset`` regenerates it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from interceptor.common.errors import ConfigError, DatapathError
from interceptor.node.datapath.base import MARK_MASK, MARK_TAG
from interceptor.node.datapath.bridge import BYPASS_MAC
from interceptor.node.datapath.contract import DatapathConfig

INGRESS_CHAIN = "tap_ingress"  # shards are named tap_ingress_0, tap_ingress_1, ...
# The kernel takes at most 256 devices per netdev chain message (EFBIG), and
# nft 1.0.6 cannot list a chain with more; taps are spread over shards of
# this size, each with the same rules (a device is in exactly one shard).
SHARD_SIZE = 200
# High byte of the mark on every frame from a managed tap, set at the tap's
# ingress: the one trace of the tap that survives a bridge (whose frames the
# IP layer sees with iif = the bridge), so host_input can filter them. Not
# MARK_TAG: the policy routing rules must not match it. Only the high byte
# (this project's) is written, so an operator's low mark bits mean the same.
GUEST_MARK_TAG = 0x4E000000

# Counter sets: name -> (family, TapCounters field).
COUNTER_SETS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "cnt_arp_reply": ("netdev", "arp_replies"),  # and NDP neighbour advertisements
    "cnt_refused": ("netdev", "refused_packets"),
    "cnt_steered": ("inet", "steered_packets"),
    "cnt_syn_limited": ("inet", "syn_rate_limited"),
    "cnt_conn_limited": ("inet", "conn_limited"),
    "cnt_unsteered_drop": ("inet", "unsteered_dropped"),
    "cnt_input_drop": ("inet", "host_input_dropped"),
})

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class NftConfig(DatapathConfig):
    """The shared options plus what only nftables has."""

    table: str = "interceptor"
    ingress_priority: int = -300
    nft_binary: str = "nft"
    # Kernels built without CONFIG_NFT_REJECT_NETDEV (Debian 12's 6.1 among
    # them) cannot send the netdev chain's RSTs: install() probes and, there,
    # drops instead (guests then wait for their own timeout, still fail closed).
    netdev_reject: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _NAME.match(self.table):
            raise ConfigError(f"config: invalid nft table name {self.table!r}")


def _set_of(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def quoted(names: Iterable[str]) -> str:
    return _set_of(f'"{n}"' for n in sorted(names))


def _v6(cfg: NftConfig) -> str:
    """The IPv6 metadata addresses as an nft set literal ('' when IPv6 is off)."""
    return _set_of(cfg.metadata_address6) if cfg.metadata_address6 else ""


def _per_family(cfg: NftConfig, rule: str) -> str:
    """``rule`` (with ``{daddr}``/``{saddr}`` for the address match) for IPv4
    and, when configured, for the IPv6 metadata addresses."""
    md = cfg.metadata_address
    out = rule.format(daddr=f"ip daddr {md}", saddr=f"ip saddr {md}", tproxy=f"ip to {md}")
    md6 = _v6(cfg)
    if md6 and "{tproxy}" in rule:  # one listener per address: one rule each
        for a in cfg.metadata_address6:
            out += rule.format(daddr=f"ip6 daddr {a}", tproxy=f"ip6 to [{a}]")
    elif md6:
        out += rule.format(daddr=f"ip6 daddr {md6}", saddr=f"ip6 saddr {md6}")
    return out


def render_ruleset(cfg: NftConfig) -> str:
    """The tables, sets and constant chains; elements and the netdev ingress
    chain (which needs a device list) are added by ``sync``."""
    t, port = cfg.table, cfg.metadata_port
    names = quoted(cfg.patterns)
    counter_decl = {
        fam: "".join(
            f"  set {n} {{ type iface_index; flags dynamic; size 65535; counter; }}\n"
            for n, (f, _) in COUNTER_SETS.items() if f == fam)
        for fam in ("inet", "netdev")}
    allow = ""
    if cfg.input_allow_udp:
        allow += f"    udp dport {_set_of(map(str, cfg.input_allow_udp))} accept\n"
    if cfg.input_allow_tcp:
        allow += f"    tcp dport {_set_of(map(str, cfg.input_allow_tcp))} accept\n"
    not_ours = f"iif != @managed iifname != {names}"
    limits = ""  # 0 = no limit: the rule is left out; one meter per tap for both families
    if cfg.syn_rate_per_s:
        limits += _per_family(cfg, (
            f"    {{daddr}} tcp dport {port} tcp flags & (syn | ack) == syn "
            f"add @syn_rl {{{{ iif limit rate over {cfg.syn_rate_per_s}/second burst "
            f"{cfg.syn_burst} packets }}}} update @cnt_syn_limited {{{{ iif }}}} drop\n"))
    if cfg.max_connections:
        limits += _per_family(cfg, (
            f"    {{daddr}} tcp dport {port} ct state new add @conn_ct "
            f"{{{{ iif ct count over {cfg.max_connections} }}}} "
            f"update @cnt_conn_limited {{{{ iif }}}} drop\n"))
    zone_pre = _per_family(cfg, f"    {{daddr}} tcp dport {port} ct zone set iif map @vm_zone\n")
    zone_out = _per_family(cfg, f"    {{saddr}} tcp sport {port} ct zone set oif map @vm_zone\n")
    steer = _per_family(cfg, (
        f"    {{daddr}} tcp dport {port} meta mark set iif map @vm_mark "
        f"update @cnt_steered {{{{ iif }}}} tproxy {{tproxy}}:{port} accept\n"))
    fail = _per_family(cfg, "    {daddr} update @cnt_unsteered_drop { iif } drop "
                            "comment \"fail closed\"\n".replace("{ iif }", "{{ iif }}"))
    allow_md = _per_family(cfg, (
        f"    meta mark & 0x{MARK_MASK:08x} == 0x{MARK_TAG:08x} {{daddr}} tcp dport {port} "
        "accept\n"))
    return f"""\
# interceptor: nftables datapath (generated by interceptor.node.datapath.nft_ruleset)
# Per-tap state lives only in the sets/maps below (keyed by ifindex), filled
# at run time; netdev chains "{INGRESS_CHAIN}_<n>" are added with the managed
# taps as their devices (at most {SHARD_SIZE} each).
# Marks (mask 0x{MARK_MASK:08x}): 0x{MARK_TAG:08x}|ifindex steered to a listener,
# 0x{GUEST_MARK_TAG:08x} anything else from a managed tap (host input filter).
table inet {t} {{
  set managed {{ type iface_index; }}
  map vm_mark {{ type iface_index : mark; }}
  map vm_zone {{ typeof iif : ct zone; }}
  set syn_rl {{ type iface_index; flags dynamic,timeout; size 65535; timeout 60s; }}
  set conn_ct {{ type iface_index; flags dynamic; size 65535; }}
{counter_decl["inet"]}
  chain raw_pre {{
    type filter hook prerouting priority raw; policy accept;
{zone_pre}  }}

  chain raw_out {{
    type filter hook output priority raw; policy accept;
{zone_out}  }}

  chain steer {{
    type filter hook prerouting priority mangle; policy accept;
    {not_ours} return
{limits}{steer}{fail}  }}

  chain host_input {{
    type filter hook input priority filter; policy accept;
    meta mark & 0x{MARK_MASK:08x} != 0x{GUEST_MARK_TAG:08x} {not_ours} return
{allow_md}    ct state established,related accept
    meta l4proto {{ 1, 58 }} accept comment "ICMP, ICMPv6 (no names: no /etc/protocols needed)"
{allow}    iif @managed update @cnt_input_drop {{ iif }} drop \
comment "no other host service for guests"
    counter drop comment "the same, through a bridge (iif is the bridge: not counted per tap)"
  }}
}}

table netdev {t} {{
  set steered {{ type iface_index; }}
  set alive {{ type inet_service; flags timeout; }}
{counter_decl["netdev"]}}}
"""  # noqa: S608 (nft syntax, not SQL)


def shard_name(index: int) -> str:
    return f"{INGRESS_CHAIN}_{index}"


def render_ingress_chain(cfg: NftConfig, shard: int, devices: Sequence[str]) -> str:
    """One netdev ingress chain (shard) hooked on ``devices`` (≤ SHARD_SIZE)."""
    if not 0 < len(devices) <= SHARD_SIZE:
        raise DatapathError(f"nft: an ingress shard takes 1..{SHARD_SIZE} devices")
    t, md = cfg.table, cfg.metadata_address
    mac = cfg.arp_reply_mac
    devs = quoted(devices)
    arp_on = "" if cfg.arp_when_refused else "iif @steered "
    ndp, ip6 = _ndp_rules(cfg, arp_on), _ip6_rules(cfg)
    refuse = "reject with tcp reset" if cfg.netdev_reject else "drop"
    return f"""\
table netdev {t} {{
  chain {shard_name(shard)} {{
    type filter hook ingress devices = {devs} priority {cfg.ingress_priority}; policy accept;
    meta mark set meta mark & 0x{0xFFFFFFFF ^ MARK_MASK:08x} | 0x{GUEST_MARK_TAG:08x} \
comment "from a guest, also once its bridge has it"
    arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation request \
arp daddr ip {md} {arp_on}update @cnt_arp_reply {{ iif }} \
ether daddr set ether saddr arp daddr ether set arp saddr ether \
arp daddr ip set arp saddr ip ether saddr set {mac} arp saddr ether set {mac} \
arp saddr ip set {md} arp operation set reply fwd to iif
    arp daddr ip {md} drop comment "no ARP answer on an unsteered tap"
    arp operation reply meta pkttype host iif @steered ether daddr set {BYPASS_MAC} \
accept comment "to the tap, not its bridge: the host resolves guests on the tap"
{ndp}    ip daddr {md} iif @steered tcp dport {cfg.metadata_port} tcp dport != @alive \
update @cnt_refused {{ iif }} {refuse} comment "no daemon alive: fail fast"
    ip daddr {md} iif @steered meta pkttype set host ether daddr set {BYPASS_MAC} accept
    ip daddr {md} meta l4proto tcp update @cnt_refused {{ iif }} {refuse}
    ip daddr {md} drop
{ip6}  }}
}}
"""  # noqa: S608 (nft syntax, not SQL)


# ICMPv6 offsets (RFC 4861): the flags word of a neighbour advertisement
# (Solicited + Override) at 4, the target at 8, the first option at 24 (type,
# length, MAC).
_NA_FLAGS = 0x6000  # high word of the flags
_OPT_SLLAO = 0x0101  # source link-layer address option (type 1, 8 bytes)
_OPT_TLLAO = 0x0201


def _ones_sum(words: Iterable[int]) -> int:
    total = 0
    for w in words:
        total += w
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def _solicited_node(address: str) -> ipaddress.IPv6Address:
    low = int(ipaddress.IPv6Address(address)) & 0xFFFFFF
    return ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | low)


def _checksum_filler(daddr: ipaddress.IPv6Address, mac: str) -> str:
    """The 10 bytes that keep the ICMPv6 checksum right across the rewrite.

    nft updates the checksum for the address and type writes but not for
    raw ``@th`` writes (flags, option type, the option's MAC). So the rule
    first overwrites the destination address, raw, with the guest's MAC
    followed by these bytes, and only then sets it (checksummed) to the
    guest's address: the kernel's update then also carries
    ``gm - filler`` = what the raw writes changed. Solving
    sum(A) - sum(gm ++ filler) = flags + option type + (our MAC - gm) for
    the filler gives sum(filler) = sum(A) - flags - option - sum(our MAC),
    one word (ones' complement); the rest is zeros."""
    need = _ones_sum([*_words(daddr.packed), 0xFFFF ^ _NA_FLAGS,
                      0xFFFF ^ (_OPT_TLLAO - _OPT_SLLAO),
                      *(0xFFFF ^ w for w in _words(bytes.fromhex(mac.replace(":", ""))))])
    return f"0x{need:04x}{0:016x}"


def _ndp_rules(cfg: NftConfig, arp_on: str) -> str:
    """A neighbour solicitation for an IPv6 metadata address (multicast, or a
    unicast reachability probe) rewritten in place into the advertisement
    (the ARP answer's MAC, Solicited + Override) and sent back out the tap;
    dropped where ARP would be. Only solicitations that carry the guest's MAC
    (every one but duplicate address detection's, source ::, never ours to
    answer). One rule per (target, destination), since the checksum filler
    depends on the destination (:func:`_checksum_filler`)."""
    if not cfg.metadata_address6:
        return ""
    mac = cfg.arp_reply_mac
    hexmac = mac.replace(":", "")
    # The target address at 8 (nft 1.0.6 has no "icmpv6 taddr"), as an integer.
    taddr = "@th,64,128"
    rules = ""
    for target in cfg.metadata_address6:
        t = ipaddress.IPv6Address(target)
        for daddr in (_solicited_node(target), t):
            rules += (
                f"    icmpv6 type nd-neighbor-solicit ip6 daddr {daddr} {taddr} 0x{int(t):032x} "  # noqa: S608
                f"ip6 saddr != :: @th,192,16 0x{_OPT_SLLAO:04x} {arp_on}"
                f"update @cnt_arp_reply {{ iif }} "
                f"ether daddr set ether saddr ether saddr set {mac} "
                f"@nh,192,48 set @th,208,48 @nh,240,80 set {_checksum_filler(daddr, mac)} "
                f"ip6 daddr set ip6 saddr ip6 saddr set {taddr} "
                f"icmpv6 type set nd-neighbor-advert @th,32,32 set 0x{_NA_FLAGS:04x}0000 "
                f"@th,192,8 set 2 @th,208,48 set 0x{hexmac} fwd to iif\n")
    targets = _set_of(f"0x{int(ipaddress.IPv6Address(a)):032x}"
                      for a in cfg.metadata_address6)
    return rules + (
        f"    icmpv6 type nd-neighbor-solicit {taddr} {targets} drop "
        "comment \"no NDP answer on an unsteered tap\"\n"
        f"    icmpv6 type nd-neighbor-advert meta pkttype host iif @steered "
        f"ether daddr set {BYPASS_MAC} accept comment \"to the tap, as ARP replies\"\n")


def _ip6_rules(cfg: NftConfig) -> str:
    md6 = _v6(cfg)
    if not md6:
        return ""
    refuse = "reject with tcp reset" if cfg.netdev_reject else "drop"
    return (f"    ip6 daddr {md6} iif @steered tcp dport {cfg.metadata_port} "  # noqa: S608
            f"tcp dport != @alive update @cnt_refused {{ iif }} {refuse} "
            "comment \"no daemon alive: fail fast\"\n"
            f"    ip6 daddr {md6} iif @steered meta pkttype set host "
            f"ether daddr set {BYPASS_MAC} accept\n"
            f"    ip6 daddr {md6} meta l4proto tcp update @cnt_refused {{ iif }} {refuse}\n"
            f"    ip6 daddr {md6} drop\n")


def reference_ruleset(cfg: NftConfig | None = None) -> str:
    """What ``deploy/nftables/interceptor.nft`` contains: the ruleset plus the
    ingress chain as it looks with two example taps."""
    cfg = cfg or NftConfig()
    example = render_ingress_chain(cfg, 0, ["tap0", "tap1"])
    return (render_ruleset(cfg)
            + "\n# The daemon adds chains like this one with the managed taps as devices:\n"
            + example)


if __name__ == "__main__":  # regenerate deploy/nftables/interceptor.nft
    print(reference_ruleset(), end="")
