"""The nftables datapath for routed and bridged taps.

Two tables named after the project (``inet`` and ``netdev`` families, the
name is configurable), a constant rule list, and per-tap state only as set
and map elements keyed by **ifindex** (so a tap deleted and recreated under
the same name inherits nothing). The netdev ingress chain's device list is
the one per-tap thing that is not an element: it is a list of hooks, one per
device, so it costs nothing per packet either.

Per packet, from a managed tap:

* netdev ingress, first of all: every frame from a managed tap gets the
  high mark byte :data:`GUEST_MARK_TAG` (low bits kept). skb->mark survives
  a bridge, so this is how the inet chains recognise a guest's packet that
  entered the IP layer on the tap's bridge (iif = the bridge, not the tap).
  The policy routing rules match ``MARK_TAG`` only, so routed (forwarded)
  guest traffic is unaffected; the steering rule overwrites the mark.
* netdev ingress (before the IP stack and before any bridge, on the tap
  itself): ARP request for the metadata address on a *steered* tap (on any
  managed tap with ``arp_when_refused``) is rewritten into a reply (fixed
  locally administered MAC) and sent straight back out the tap (``fwd to
  iif``); on any other managed tap it is dropped, so no host ``proxy_arp``
  answers it either. IP to the metadata address from a steered tap is marked
  ``pkttype host`` (the guest addressed the fake MAC) and readdressed so that
  a bridge, if the tap is a bridge port, hands it back to the tap (see
  bridge.py); TCP from any other managed tap is answered with a RST right
  here, which reaches the guest even when its address is unrouted or
  overlaps another guest's (a RST sent from the inet hook is *routed*, and is
  lost then).
* inet prerouting: per-tap SYN rate limit and connection limit (meters keyed
  by ifindex), then ``meta mark set iif map @vm_mark tproxy ip to
  169.254.169.254:80``: the listener lookup takes the ingress device into
  account, so the packet lands on the tap's own ``SO_BINDTODEVICE`` listener
  (see listeners.py). The address must be explicit: ``to :80`` means "the
  tap's first IPv4 address" when it has one (a routed tap carrying the
  guests' gateway address), and then no listener matches. Anything
  else to the metadata address is dropped: fail closed (this also covers a
  tap that matches the name patterns but was not synced yet). A steered tap
  whose daemon is gone (no ``alive`` heartbeat for ``ALIVE_TIMEOUT_S``) is
  answered with a RST at the netdev ingress instead: the guest fails at once
  rather than waiting on a listener that no longer exists.
* inet input: from a managed tap (by ``iif``, by name pattern, or by the
  guest mark when a bridge is in between) only the steered metadata
  connection, ICMP, replies to connections the host opened, and configured
  UDP/TCP ports reach local sockets; everything else (other ports on
  169.254.169.254, the host's addresses on the tap or its bridge, IPv4 and
  IPv6, any other local address) is dropped.
* Conntrack zones per tap keep two guests with the same address and port
  apart in conntrack (and so in ``ct count``).

Guests with a default gateway send to the gateway's MAC; answering ARP for
the gateway is the routed network's job (an address on the tap, or
``proxy_arp``), as it is for all their other traffic. This datapath answers
ARP for the metadata address only, and never for anything else: answering
every address would also answer the guests' duplicate address probes.

Bridged taps (a tap enslaved to a Linux bridge, as libvirt does) take the
same path: their steered frames are handed back to the tap by the bridge
(bridge.py explains how and why), so identity is still the tap the frame
came in on, two guests on one bridge with the same address and port still
get separate sockets, and replies leave through the tap, not through the
bridge's forwarding database. ``br_netfilter`` (``bridge-nf-call-iptables``
0 or 1) makes no difference, since those frames never enter the bridge's
hooks. Everything else a bridged guest sends to the host (the bridge's own
addresses, link-local and global IPv6, DHCP broadcasts) enters the IP stack
on the bridge and meets the host-input filter through the guest mark; it is
counted by one rule counter, not per tap (the ifindex is not in the mark, so
an operator's low mark bits stay as they were). A tap whose MAC is its bridge's MAC, or whose bridge
port forwards the readdressed frames, is not steered (fail closed, one
warning per tap): see :meth:`bridge.PortFacts.unsteerable`. That check runs
at every ``sync``; a bridge that adopts a tap's MAC later (its own port with
a lower MAC removed) is noticed at the next one.

Reverse-path filtering applies to bridged taps as to routed ones (routing.py):
strict ``rp_filter`` on a bridged tap drops its guests' packets, since the
route to them goes through the bridge; loose (2) or off works.

Not thread-safe: call all methods from one thread (the daemon's executor).

Policy routing (routing.py) makes the marked packets local. The ruleset text
is produced by :func:`render_ruleset`; ``deploy/nftables/interceptor.nft`` is
its output for the default configuration, for operators to review.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from types import MappingProxyType

from interceptor.common.errors import DatapathError
from interceptor.node.datapath.base import (
    MARK_MASK,
    MARK_TAG,
    METADATA_ADDRESS,
    METADATA_PORT,
    TapCounters,
    TapState,
    mark_for,
)
from interceptor.node.datapath.bridge import BYPASS_MAC, PortFacts, port_facts
from interceptor.node.datapath.routing import DEFAULT_PREF, DEFAULT_TABLE, PolicyRouting
from interceptor.node.datapath.zones import ZonePool

log = logging.getLogger(__name__)

NFT_TIMEOUT_S = 30.0
DEFAULT_PATTERNS = ("tap*", "vnet*", "mdtap*")
# 169.254.169.254 spelled into a locally administered unicast MAC.
DEFAULT_ARP_MAC = "02:a9:fe:a9:fe:00"
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
# Seconds the ``alive`` element outlives the daemon's last heartbeat (renewed
# every second): longer than a restart's gap between two processes, short
# enough that a killed daemon's guests get RSTs instead of hanging.
ALIVE_TIMEOUT_S = 3

# Counter sets: name -> (family, TapCounters field or extra key).
COUNTER_SETS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "cnt_arp_reply": ("netdev", "arp_replies"),
    "cnt_refused": ("netdev", "refused_packets"),
    "cnt_steered": ("inet", "steered_packets"),
    "cnt_syn_limited": ("inet", "syn_rate_limited"),
    "cnt_conn_limited": ("inet", "conn_limited"),
    "cnt_unsteered_drop": ("inet", "unsteered_dropped"),
    "cnt_input_drop": ("inet", "host_input_dropped"),
})

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\*?$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class NftConfig:
    """Knobs of the nft datapath (the node config maps onto these)."""

    table: str = "interceptor"
    metadata_address: str = METADATA_ADDRESS
    metadata_port: int = METADATA_PORT
    listen_port: int = METADATA_PORT  # the per-tap listeners' port (tproxy target)
    patterns: tuple[str, ...] = DEFAULT_PATTERNS  # fnmatch-style, only a trailing '*'
    syn_rate_per_s: int = 20
    syn_burst: int = 40
    max_connections: int = 64  # per tap, concurrent
    arp_reply_mac: str = DEFAULT_ARP_MAC
    # Answer ARP for the metadata address on refused (unbound, disabled) taps
    # too: an on-link guest then gets the RST at once instead of waiting ~3 s
    # for ARP to fail. The answer tells the guest nothing.
    arp_when_refused: bool = False
    input_allow_udp: tuple[int, ...] = ()  # e.g. (67,) when the host runs DHCP for guests
    input_allow_tcp: tuple[int, ...] = ()
    ingress_priority: int = -300
    route_table: int = DEFAULT_TABLE
    rule_pref: int = DEFAULT_PREF
    nft_binary: str = "nft"
    # Kernels built without CONFIG_NFT_REJECT_NETDEV (Debian 12's 6.1 among
    # them) cannot send the netdev chain's RSTs: install() probes and, there,
    # drops instead (guests then wait for their own timeout, still fail closed).
    netdev_reject: bool = True

    def __post_init__(self) -> None:
        if not _NAME.match(self.table):
            raise DatapathError(f"nft: invalid table name {self.table!r}")
        if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", self.metadata_address):
            raise DatapathError(f"nft: invalid metadata address {self.metadata_address!r}")
        for p in self.patterns:
            if not _PATTERN.match(p):
                raise DatapathError(
                    f"nft: interface pattern {p!r} unsupported (a name, optionally ending in *)")
        if not _MAC.match(self.arp_reply_mac):
            raise DatapathError(f"nft: invalid ARP reply MAC {self.arp_reply_mac!r}")
        for port in (self.metadata_port, self.listen_port, *self.input_allow_udp,
                     *self.input_allow_tcp):
            if not 0 < port < 65536:
                raise DatapathError(f"nft: port {port} out of range")
        if min(self.syn_rate_per_s, self.syn_burst, self.max_connections) < 1:
            raise DatapathError("nft: rate and connection limits must be positive")


def _set_of(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _quoted(names: Iterable[str]) -> str:
    return _set_of(f'"{n}"' for n in sorted(names))


def render_ruleset(cfg: NftConfig) -> str:
    """The tables, sets and constant chains; elements and the netdev ingress
    chain (which needs a device list) are added by ``sync``."""
    t, md, port = cfg.table, cfg.metadata_address, cfg.metadata_port
    names = _quoted(cfg.patterns)
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
    return f"""\
# interceptor: nftables datapath (generated by interceptor.node.datapath.nft)
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
    ip daddr {md} tcp dport {port} ct zone set iif map @vm_zone
  }}

  chain raw_out {{
    type filter hook output priority raw; policy accept;
    ip saddr {md} tcp sport {cfg.listen_port} ct zone set oif map @vm_zone
  }}

  chain steer {{
    type filter hook prerouting priority mangle; policy accept;
    {not_ours} return
    ip daddr {md} tcp dport {port} tcp flags & (syn | ack) == syn \
add @syn_rl {{ iif limit rate over {cfg.syn_rate_per_s}/second burst {cfg.syn_burst} packets }} \
update @cnt_syn_limited {{ iif }} drop
    ip daddr {md} tcp dport {port} ct state new \
add @conn_ct {{ iif ct count over {cfg.max_connections} }} update @cnt_conn_limited {{ iif }} drop
    ip daddr {md} tcp dport {port} meta mark set iif map @vm_mark \
update @cnt_steered {{ iif }} tproxy ip to {md}:{cfg.listen_port} accept
    ip daddr {md} update @cnt_unsteered_drop {{ iif }} drop comment "fail closed"
  }}

  chain host_input {{
    type filter hook input priority filter; policy accept;
    meta mark & 0x{MARK_MASK:08x} != 0x{GUEST_MARK_TAG:08x} {not_ours} return
    meta mark & 0x{MARK_MASK:08x} == 0x{MARK_TAG:08x} ip daddr {md} tcp dport {cfg.listen_port} \
accept
    ct state established,related accept
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
    devs = _quoted(devices)
    arp_on = "" if cfg.arp_when_refused else "iif @steered "
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
    ip daddr {md} iif @steered tcp dport {cfg.metadata_port} tcp dport != @alive \
update @cnt_refused {{ iif }} {refuse} comment "no daemon alive: fail fast"
    ip daddr {md} iif @steered meta pkttype set host ether daddr set {BYPASS_MAC} accept
    ip daddr {md} meta l4proto tcp update @cnt_refused {{ iif }} {refuse}
    ip daddr {md} drop
  }}
}}
"""  # noqa: S608 (nft syntax, not SQL)


def reference_ruleset(cfg: NftConfig | None = None) -> str:
    """What ``deploy/nftables/interceptor.nft`` contains: the ruleset plus the
    ingress chain as it looks with two example taps."""
    cfg = cfg or NftConfig()
    example = render_ingress_chain(cfg, 0, ["tap0", "tap1"])
    return (render_ruleset(cfg)
            + "\n# The daemon adds chains like this one with the managed taps as devices:\n"
            + example)


@dataclass
class _Applied:
    """What the last successful sync put into the kernel."""

    taps: dict[str, TapState] = field(default_factory=dict)
    shards: list[set[str]] = field(default_factory=list)  # devices per ingress shard
    blocked: dict[str, str] = field(default_factory=dict)  # steer wanted, refused: why


class NftDatapath:
    """The ``Datapath`` protocol over nftables (routed taps)."""

    name = "nft"

    def __init__(self, cfg: NftConfig | None = None) -> None:
        self.cfg = cfg or NftConfig()
        self.routing = PolicyRouting(self.cfg.route_table, self.cfg.rule_pref)
        self._applied: _Applied | None = None  # None: kernel state not adopted yet
        self._zones = ZonePool()

    # -- nft plumbing ----------------------------------------------------------

    def _nft(self, args: Sequence[str], stdin: str | None = None) -> str:
        binary = shutil.which(self.cfg.nft_binary)
        if binary is None:
            raise DatapathError(
                f"nft: the {self.cfg.nft_binary!r} command is missing (install Debian 'nftables')")
        try:
            proc = subprocess.run([binary, *args], input=stdin, capture_output=True,
                                  text=True, timeout=NFT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise DatapathError(f"nft: {' '.join(args)} timed out") from None
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if ln.strip()), "failed")
            raise DatapathError(f"nft: {first.strip()}")
        return proc.stdout

    def _apply(self, batch: str) -> None:
        self._nft(["-f", "-"], stdin=batch)

    def _tables_exist(self) -> bool:
        out = self._nft(["list", "tables"])
        have = {tuple(line.split()[1:3]) for line in out.splitlines() if line.startswith("table")}
        return {("inet", self.cfg.table), ("netdev", self.cfg.table)} <= have

    # -- Datapath protocol -----------------------------------------------------

    def install(self) -> None:
        """(Re)create both tables atomically and the policy routing.

        Existing tables of the same name are replaced in the same transaction
        (so an upgrade gets the current rules), and their per-tap elements and
        ingress hooks are carried into the new tables in that transaction too:
        a restarted daemon keeps steering its predecessor's taps (to the
        listeners it inherits, see listeners.py) until its first ``sync``
        replaces them, so guests see no gap. ``alive`` starts without a
        timeout until the first :meth:`heartbeat`.
        """
        if self.cfg.netdev_reject and not self._netdev_reject_works():
            log.warning("nft: this kernel cannot reject in netdev chains "
                        "(CONFIG_NFT_REJECT_NETDEV): refused guests are dropped, not reset")
            self.cfg = dataclasses.replace(self.cfg, netdev_reject=False)
        t = self.cfg.table
        replace = (f"add table inet {t}\ndelete table inet {t}\n"
                   f"add table netdev {t}\ndelete table netdev {t}\n" + render_ruleset(self.cfg))
        carried = self._carry_over() if self._tables_exist() else ""
        try:
            self._apply(replace + carried + self._alive_until_heartbeat())
        except DatapathError as exc:
            if not carried:
                raise
            log.warning("nft: could not carry the previous taps over (%s); starting empty", exc)
            carried = ""
            self._apply(replace + self._alive_until_heartbeat())
        self.routing.install()
        # Carried-over state is not what this process synced: the first sync
        # rewrites all of it (flush and re-add in one transaction).
        self._applied = None if carried else _Applied()

    def _netdev_reject_works(self) -> bool:
        """A dry run (``nft --check``, checked by the kernel, nothing applied)
        of a netdev chain with a reject rule."""
        probe = f"{self.cfg.table}_probe"
        try:
            self._nft(["-c", "-f", "-"], stdin=(
                f"add table netdev {probe}\n"
                f"add chain netdev {probe} c {{ type filter hook ingress device lo priority 0; }}\n"
                f"add rule netdev {probe} c meta l4proto tcp reject with tcp reset\n"))
        except DatapathError:
            return False
        return True

    def heartbeat(self, lasting: float | None = None) -> None:
        """Renew the ``alive`` element. While it lives, steered taps go to their
        listeners; once the daemon is gone for ALIVE_TIMEOUT_S (killed, hung)
        the ingress chain answers their SYNs with a RST instead of steering
        them to sockets that no longer exist. nftables cannot ask whether the
        tproxy target has a socket before the packet is routed, and a RST sent
        after routing is lost to guests with unrouted or overlapping
        addresses; the ingress chain's RST goes straight back out the tap."""
        self._apply(self._alive_batch(lasting))

    def _alive_until_heartbeat(self) -> str:
        """``alive`` without a timeout: steering works for any user of the
        datapath; the daemon's first heartbeat (right after install) makes it
        lapse without one."""
        return f"add element netdev {self.cfg.table} alive {{ {self.cfg.metadata_port} }}\n"

    def _alive_batch(self, lasting: float | None = None) -> str:
        t, port = self.cfg.table, self.cfg.metadata_port
        return (f"add element netdev {t} alive {{ {port} }}\n"
                f"delete element netdev {t} alive {{ {port} }}\n"
                f"add element netdev {t} alive {{ {port} timeout "
                f"{max(1, round(lasting or ALIVE_TIMEOUT_S))}s }}\n")

    def _carry_over(self) -> str:
        """Batch lines re-adding the per-tap elements and ingress hooks now in
        the kernel (hooks only for devices that still exist)."""
        t = self.cfg.table
        lines: list[str] = []
        for fam in ("inet", "netdev"):
            data = json.loads(self._nft(["-j", "list", "table", fam, t]))
            for item in data.get("nftables", []):
                s = item.get("set") or item.get("map")
                if not s or s.get("name") not in ("managed", "vm_mark", "vm_zone", "steered"):
                    continue
                elems = []
                for e in s.get("elem", []):
                    key, value = (e[0], e[1]) if isinstance(e, list) and len(e) == 2 else (e, None)
                    index = _ifindex_of(key)
                    if index is None:  # the tap is gone: nothing to carry
                        continue
                    elems.append(str(index) if value is None else f"{index} : {int(value)}")
                if elems:
                    lines.append(f"add element {fam} {t} {s['name']} {{ {', '.join(elems)} }}")
        devices = sorted(d for d in self.ingress_devices() if _link_exists(d))
        for i, chunk in enumerate(_chunks(devices, SHARD_SIZE)):
            lines.append(render_ingress_chain(self.cfg, i, list(chunk)))
        return "\n".join(lines) + ("\n" if lines else "")

    def installed(self) -> bool:
        return self._tables_exist() and self.routing.present()

    def remove(self) -> None:
        t = self.cfg.table
        self._apply(f"add table inet {t}\ndelete table inet {t}\n"
                    f"add table netdev {t}\ndelete table netdev {t}\n")
        self.routing.remove()
        self._applied = None

    def sync(self, taps: Mapping[str, TapState]) -> None:
        """Make the elements (and the ingress device list) equal ``taps``.

        One atomic batch. Only elements change; a changed value is a delete
        plus an add. Removing an element that may not exist is written as
        add-then-delete, so the batch never fails on state it cannot see.
        """
        for name, tap in taps.items():
            if name != tap.ifname or not _IFNAME.match(name):
                raise DatapathError(f"nft: bad tap entry {name!r}")
        blocked = self._unsteerable(taps)
        warned = self._applied.blocked if self._applied else {}
        for name, why in sorted(blocked.items()):
            if warned.get(name) != why:  # once per tap and reason, not on every sync
                log.warning("nft: tap %s is not steered (fail closed): %s", name, why)
        if self._applied is None:
            if not self._tables_exist():
                raise DatapathError("nft: tables missing; install() the datapath first")
            self._applied = _Applied()
            full = True
        else:
            full = False
        batch, shards = self._sync_batch(taps, self._applied, full, set(blocked))
        try:
            if batch:
                self._apply(batch)
        except DatapathError:
            self._applied = None  # unknown kernel state: next sync rewrites everything
            raise
        self._applied = _Applied(taps=dict(taps), shards=shards, blocked=blocked)

    def unsteerable(self) -> dict[str, str]:
        """Taps the last sync was asked to steer but left fail-closed, with why
        (see bridge.py); for operators' status output and tests."""
        return dict(self._applied.blocked) if self._applied else {}

    def _unsteerable(self, taps: Mapping[str, TapState]) -> dict[str, str]:
        """Taps meant to be steered whose frames cannot reach their listener
        (bridge.py), by name, with the reason; from one netlink dump."""
        wanted = {tap.ifindex: name for name, tap in taps.items() if tap.steer}
        facts: dict[int, PortFacts] = port_facts(wanted) if wanted else {}
        out = {}
        for idx, name in wanted.items():
            why = facts[idx].unsteerable() if idx in facts else None
            if why is not None:
                out[name] = why
        return out

    def _sync_batch(self, taps: Mapping[str, TapState], old: _Applied,
                    full: bool, blocked: Set[str] = frozenset()
                    ) -> tuple[str, list[set[str]]]:
        t = self.cfg.table
        want = {tap.ifindex: tap for tap in taps.values()}
        steer = {i for i, tap in want.items() if tap.steer and tap.ifname not in blocked}
        had = {tap.ifindex: tap for tap in old.taps.values()}
        had_steer = {i for i, tap in had.items() if tap.steer and tap.ifname not in old.blocked}
        old_zones = dict(self._zones.zones)  # deletions name the zone they were given
        self._zones.assign(steer)
        zones = {**old_zones, **self._zones.zones}
        lines: list[str] = []
        if full:
            for fam, obj in (("inet", "managed"), ("inet", "vm_mark"), ("inet", "vm_zone"),
                             ("netdev", "steered")):
                lines.append(f"flush {'map' if obj.startswith('vm_') else 'set'} {fam} {t} {obj}")
            add_managed, add_steer = set(want), steer
            del_managed: set[int] = set()
            del_steer: set[int] = set()
        else:
            add_managed, del_managed = set(want) - set(had), set(had) - set(want)
            add_steer, del_steer = steer - had_steer, had_steer - steer

        def elems(fam: str, obj: str, keys: Iterable[int], kind: str = "") -> str:
            body = ", ".join(_element(kind, i, zones) for i in sorted(keys))
            return f"element {fam} {t} {obj} {{ {body} }}"

        for fam, obj, kind, keys in (
                ("inet", "vm_mark", "mark", del_steer),
                # A zone this process never gave is not in the kernel (a full
                # sync flushed the map), and adding it with a guessed zone fails.
                ("inet", "vm_zone", "zone", del_steer & set(old_zones)),
                ("netdev", "steered", "", del_steer), ("inet", "managed", "", del_managed)):
            if keys:
                lines += [f"add {elems(fam, obj, keys, kind)}",
                          f"delete {elems(fam, obj, keys, kind)}"]
        # Counters of taps that are gone for good (their ifindex never returns).
        if del_managed:
            for cset, (fam, _) in COUNTER_SETS.items():
                lines += [f"add {elems(fam, cset, del_managed)}",
                          f"delete {elems(fam, cset, del_managed)}"]
        for fam, obj, kind, keys in (
                ("inet", "managed", "", add_managed), ("inet", "vm_mark", "mark", add_steer),
                ("inet", "vm_zone", "zone", add_steer), ("netdev", "steered", "", add_steer)):
            if keys:
                lines.append(f"add {elems(fam, obj, keys, kind)}")
        # A tap recreated under the same name: re-hook its shard, because
        # kernels before 6.16 drop the hook with the old device.
        renewed = {n for n, tap in taps.items()
                   if n in old.taps and old.taps[n].ifindex != tap.ifindex}
        shard_lines, shards = self._ingress_batch(
            set(taps), None if full else old.shards, renewed)
        lines += shard_lines
        return "\n".join(lines) + ("\n" if lines else ""), shards

    def _ingress_batch(self, devices: set[str], current: list[set[str]] | None,
                       renewed: Set[str] = frozenset()
                       ) -> tuple[list[str], list[set[str]]]:
        """Hooks for ``devices`` spread over shards. A new device joins a shard
        with room (``add chain`` merges device lists: no rule changes); a shard
        that lost a device is re-created in the same transaction, since nft
        1.0.6 cannot unhook one device. ``current=None`` (state unknown):
        every shard in the kernel is dropped and re-created."""
        t, prio = self.cfg.table, self.cfg.ingress_priority
        lines: list[str] = []
        if current is None:
            for name in self._existing_shards():
                lines.append(f"delete chain netdev {t} {name}")
            current = []
            new = [set(chunk) for chunk in _chunks(sorted(devices), SHARD_SIZE)]
            for i, devs in enumerate(new):
                lines.append(render_ingress_chain(self.cfg, i, sorted(devs)))
            return lines, new
        shards = [set(s) & devices for s in current]
        placed = set().union(*shards) if shards else set()
        rebuild = {i for i, (old, now) in enumerate(zip(current, shards, strict=True))
                   if old != now or now & renewed}
        additions: dict[int, set[str]] = {}
        for dev in sorted(devices - placed):
            i = next((k for k, s in enumerate(shards) if len(s) < SHARD_SIZE), len(shards))
            if i == len(shards):
                shards.append(set())
            shards[i].add(dev)
            additions.setdefault(i, set()).add(dev)
        for i, devs in enumerate(shards):
            existed = i < len(current) and bool(current[i])
            if i in rebuild:
                lines.append(f"delete chain netdev {t} {shard_name(i)}")
                if devs:
                    lines.append(render_ingress_chain(self.cfg, i, sorted(devs)))
            elif i in additions and existed:
                hook = (f"type filter hook ingress devices = {_quoted(additions[i])} "
                        f"priority {prio};")
                lines.append(f"add chain netdev {t} {shard_name(i)} {{ {hook} }}")
            elif i in additions:
                lines.append(render_ingress_chain(self.cfg, i, sorted(devs)))
        while shards and not shards[-1]:
            shards.pop()
        return lines, shards

    def _existing_shards(self) -> list[str]:
        data = json.loads(self._nft(["-j", "list", "table", "netdev", self.cfg.table]))
        return [item["chain"]["name"] for item in data.get("nftables", [])
                if "chain" in item and item["chain"]["name"].startswith(INGRESS_CHAIN)]

    def counters(self) -> dict[str, TapCounters]:
        """Per-tap counters from the dynamic counter sets (read at scrape time)."""
        if self._applied is None:
            return {}
        by_index = {tap.ifindex: name for name, tap in self._applied.taps.items()}
        by_name = {name: name for name in self._applied.taps}
        out = {name: TapCounters() for name in self._applied.taps}
        for fam in ("inet", "netdev"):
            data = json.loads(self._nft(["-j", "list", "table", fam, self.cfg.table]))
            for item in data.get("nftables", []):
                s = item.get("set")
                if not s or s.get("name") not in COUNTER_SETS:
                    continue
                attr = COUNTER_SETS[s["name"]][1]
                for elem in s.get("elem", []):
                    e = elem.get("elem", {}) if isinstance(elem, dict) else {}
                    key = e.get("val")
                    name = (by_index.get(int(str(key))) if str(key).isdigit()
                            else by_name.get(str(key)))
                    packets = int(e.get("counter", {}).get("packets", 0))
                    if name is None:
                        continue
                    c = out[name]
                    if hasattr(c, attr):
                        setattr(c, attr, getattr(c, attr) + packets)
                    else:
                        c.extra[attr] = c.extra.get(attr, 0) + packets
        return out

    def rule_counts(self) -> dict[str, int]:
        """Rules per chain ("family/chain"). Constant per chain whatever the
        number of taps; only the number of ingress shards grows, one per
        SHARD_SIZE taps, and a packet traverses exactly one of them."""
        counts: dict[str, int] = {}
        for fam in ("inet", "netdev"):
            data = json.loads(self._nft(["-j", "list", "table", fam, self.cfg.table]))
            for item in data.get("nftables", []):
                if "chain" in item:
                    counts.setdefault(f"{fam}/{item['chain']['name']}", 0)
                if "rule" in item:
                    key = f"{fam}/{item['rule']['chain']}"
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def ingress_devices(self) -> set[str]:
        """Devices the ingress shards are hooked on (parsed from the text
        listing: nft 1.0.6's JSON omits multi-device lists)."""
        out = self._nft(["list", "table", "netdev", self.cfg.table])
        found: set[str] = set()
        for many, one in re.findall(r"devices = \{([^}]*)\}|device \"?([^\" ;]+)\"?", out):
            for d in (many.split(",") if many else [one]):
                if d.strip():
                    found.add(d.strip().strip('"'))
        return found


def _link_exists(ifname: str) -> bool:
    return _ifindex_of(ifname) is not None


def _ifindex_of(key: object) -> int | None:
    """The ifindex of a set key as nft's JSON lists it (a name while the
    device exists, else the number); None when the device is gone."""
    if isinstance(key, int):
        try:
            socket.if_indextoname(key)
        except OSError:
            return None
        return key
    try:
        return socket.if_nametoindex(str(key))
    except OSError:
        return None


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _element(kind: str, ifindex: int, zones: Mapping[int, int]) -> str:
    if kind == "mark":
        return f"{ifindex} : 0x{mark_for(ifindex):08x}"
    if kind == "zone":
        return f"{ifindex} : {zones[ifindex]}"
    return str(ifindex)


if __name__ == "__main__":  # regenerate deploy/nftables/interceptor.nft
    print(reference_ruleset(), end="")
