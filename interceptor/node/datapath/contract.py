"""The datapath contract: what the nft and eBPF datapaths must agree on.

``base.py`` says *what* the daemon asks of a datapath (the ``Datapath``
protocol, ``TapState``); this module says *how it must behave*, once for
both, so that ``nft.py`` and ``ebpf.py`` hold only what is kernel specific:

* **Configuration** (:class:`DatapathConfig`): every option the node config
  maps onto a datapath, with one meaning and one validation (a bad value is a
  :class:`ConfigError`, exit 2, on either datapath). :func:`options_from` is
  the one mapping from ``NodeConfig``. ``syn_rate_per_s = 0`` and
  ``max_connections = 0`` mean "no limit" on both.
* **Tap entries** (:func:`check_taps`): what ``sync`` accepts.
* **Managed names** (:func:`check_patterns`, :data:`DEFAULT_TAP_PATTERNS`):
  a tap whose name matches a pattern fails closed from the moment it exists,
  before its first ``sync`` (nft: by ``iifname`` in the rules; eBPF: by the
  guard table, see ``ebpf_guard.py``).
* **Steering policy** (:class:`SteeringPolicy`): which of the taps the daemon
  wants steered really are (a bridge port that cannot be, ``bridge.py``
  explains why, stays fail closed with one warning per tap and reason).
* **Counters** (:data:`COUNTERS`): fixed names, the same on both datapaths,
  exported as ``interceptor_node_datapath_<metric>_total`` (operator.py);
  each datapath lists the ones its kernel side counts (``Datapath.counted``).

Address families: ``metadata_address`` is IPv4, ``metadata_address6`` the
IPv6 addresses (default :data:`base.METADATA_ADDRESSES6`, empty = no IPv6).
Both families are checked in one place (:meth:`DatapathConfig.__post_init__`)
and mean the same per tap: steered to the tap's listener of that address
(one per metadata address and tap, ``listeners.py``), refused with a RST,
neighbour answers (ARP; NDP neighbour advertisements with
:data:`ARP_REPLY_MAC`) only on steered taps (or on any managed tap with
``arp_when_refused``), the same limits (one SYN meter and one connection
count per tap across both families).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from interceptor.common.errors import ConfigError, DatapathError
from interceptor.node.datapath.base import (
    DEFAULT_PREF,
    DEFAULT_TABLE,
    METADATA_ADDRESS,
    METADATA_ADDRESSES6,
    METADATA_PORT,
    TapState,
)
from interceptor.node.datapath.bridge import PortFacts
from interceptor.node.datapath.netlink import NetLink

if TYPE_CHECKING:
    from interceptor.node.config import NodeConfig

log = logging.getLogger(__name__)

ARP_REPLY_MAC = "02:a9:fe:a9:fe:00"
"""169.254.169.254 spelled into a locally administered unicast MAC: what
both datapaths answer ARP for the metadata address with."""

DEFAULT_TAP_PATTERNS = ("tap*", "vnet*")
"""The managed interface names when the configuration names none."""

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
# A name, optionally ending in '*': what nft's iifname sets can express.
PATTERN_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\*?$")

COUNTERS: Mapping[str, tuple[str, str]] = {
    "steered_packets": ("steered_packets",
                        "Packets to the metadata address steered to the tap's listener"),
    "refused_packets": ("refused_packets",
                        "TCP to the metadata address refused with a RST (unbound, disabled)"),
    "arp_replies": ("arp_replies", "ARP replies for the metadata address"),
    "syn_rate_limited": ("syn_rate_limited_packets", "SYNs dropped by the per-tap rate limit"),
    "conn_limited": ("conn_limited_packets",
                     "SYNs dropped by the per-tap connection limit in the kernel"),
    "unsteered_dropped": ("unsteered_dropped_packets",
                          "Other packets to the metadata address dropped (ports, UDP, ICMP)"),
    "host_input_dropped": ("host_input_dropped_packets",
                           "Packets from a guest to the node itself dropped"),
    "malformed": ("malformed_packets",
                  "Truncated or fragmented packets to the metadata address dropped"),
    "no_listener": ("no_listener_packets",
                    "Packets of a steered tap dropped because its listener is gone"),
    "arp_refused": ("arp_refused_requests",
                    "ARP requests for the metadata address on a refused tap dropped"),
}
"""``TapCounters`` field -> (metric name after ``interceptor_node_datapath_``,
help). The node exports the ones its datapath counts (``Datapath.counted``)."""


def matches(ifname: str, patterns: Iterable[str]) -> bool:
    """True when ``ifname`` is a managed name."""
    return any(fnmatch.fnmatchcase(ifname, p) for p in patterns)


def check_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """The patterns as a tuple, or a ConfigError naming the bad one."""
    out = tuple(patterns)
    if not out:
        raise ConfigError("config: tap_patterns must name at least one pattern")
    for p in out:
        if not PATTERN_RE.match(p):
            raise ConfigError(
                f"config: tap pattern {p!r} unsupported (an interface name, optionally "
                "ending in *)")
    return out


def _check_port(name: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"config: {name}: port {port} out of range 1..65535")


@dataclass(frozen=True)
class DatapathConfig:
    """The options both datapaths honour, with the same meaning.

    The datapaths' own configs (``NftConfig``, ``EbpfConfig``) extend this
    with kernel-specific knobs (table name, pin directory) only.
    """

    metadata_address: str = METADATA_ADDRESS
    metadata_address6: tuple[str, ...] = METADATA_ADDRESSES6  # () = no IPv6
    metadata_port: int = METADATA_PORT  # also the per-tap listeners' port
    patterns: tuple[str, ...] = DEFAULT_TAP_PATTERNS
    syn_rate_per_s: int = 20  # per tap; 0 = no limit
    syn_burst: int = 40
    max_connections: int = 64  # per tap, concurrent; 0 = no limit
    arp_reply_mac: str = ARP_REPLY_MAC
    # Answer ARP for the metadata address on refused (unbound, disabled) taps
    # too: an on-link guest then gets the RST at once instead of waiting ~3 s
    # for ARP to fail. The answer tells the guest nothing.
    arp_when_refused: bool = False
    # Ports on the node itself guests may reach (any of its addresses), e.g.
    # (67,) when the host runs their DHCP.
    input_allow_udp: tuple[int, ...] = ()
    input_allow_tcp: tuple[int, ...] = ()
    route_table: int = DEFAULT_TABLE
    rule_pref: int = DEFAULT_PREF

    def __post_init__(self) -> None:
        try:
            addr = ipaddress.ip_address(self.metadata_address)
        except ValueError:
            raise ConfigError(
                f"config: invalid metadata address {self.metadata_address!r}") from None
        if addr.version != 4:
            raise ConfigError("config: the metadata address must be IPv4 "
                              "(IPv6 ones go in metadata_address6)")
        object.__setattr__(self, "metadata_address6", check_address6(self.metadata_address6))
        _check_port("metadata_port", self.metadata_port)
        for p in self.input_allow_udp:
            _check_port("host_allow_udp", p)
        for p in self.input_allow_tcp:
            _check_port("host_allow_tcp", p)
        object.__setattr__(self, "patterns", check_patterns(self.patterns))
        if not MAC_RE.match(self.arp_reply_mac) or int(self.arp_reply_mac[:2], 16) & 1:
            raise ConfigError(f"config: invalid ARP reply MAC {self.arp_reply_mac!r} "
                              "(lower-case unicast, like 02:a9:fe:a9:fe:00)")
        # route_table + 1 holds the IPv6 reply routes (routing.py).
        if not 0 < self.route_table < 0xFFFFFFFE or self.route_table in (252, 253, 254, 255):
            raise ConfigError(f"config: route_table {self.route_table} is reserved or out of range")
        if not 0 < self.rule_pref < 32764:
            raise ConfigError(f"config: rule_priority {self.rule_pref} must be in 1..32763")
        if self.syn_rate_per_s < 0 or self.max_connections < 0 or self.syn_burst < 1:
            raise ConfigError("config: syn_rate and max_connections must be >= 0 "
                              "(0: no limit), syn_burst >= 1")

    @property
    def metadata_address_int(self) -> int:
        return int(ipaddress.IPv4Address(self.metadata_address))

    @property
    def link_local6(self) -> tuple[str, ...]:
        """The link-local IPv6 metadata addresses (routed per tap, routing.py)."""
        return tuple(a for a in self.metadata_address6
                     if ipaddress.IPv6Address(a).is_link_local)

    @property
    def global6(self) -> tuple[str, ...]:
        """The other IPv6 metadata addresses (their replies are routed per tap)."""
        return tuple(a for a in self.metadata_address6 if a not in self.link_local6)


def check_address6(addresses: Iterable[str]) -> tuple[str, ...]:
    """The IPv6 metadata addresses in compressed form, or a ConfigError:
    unicast (global/ULA or link-local), no duplicates, at most two."""
    out: list[str] = []
    for a in addresses:
        try:
            addr = ipaddress.IPv6Address(a)
        except ValueError:
            raise ConfigError(f"config: invalid IPv6 metadata address {a!r}") from None
        if addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.ipv4_mapped:
            raise ConfigError(f"config: IPv6 metadata address {a} must be unicast")
        if addr.compressed in out:
            raise ConfigError(f"config: IPv6 metadata address {a} given twice")
        out.append(addr.compressed)
    if len(out) > 2:  # the eBPF program compares against two
        raise ConfigError("config: metadata_address6 takes at most two addresses")
    return tuple(out)


def options_from(node: NodeConfig) -> dict[str, Any]:
    """The one mapping from the node config to :class:`DatapathConfig` fields."""
    return {
        "metadata_address": node.metadata_address, "metadata_port": node.metadata_port,
        "metadata_address6": tuple(node.metadata_address6),
        "patterns": tuple(node.tap_patterns), "arp_when_refused": True,
        "syn_rate_per_s": node.syn_rate, "syn_burst": node.syn_burst,
        "max_connections": node.max_connections,
        "input_allow_udp": tuple(int(p) for p in node.host_allow_udp),
        "input_allow_tcp": tuple(int(p) for p in node.host_allow_tcp),
        "route_table": node.route_table, "rule_pref": node.rule_priority,
    }


def check_taps(taps: Mapping[str, TapState], who: str) -> None:
    """What ``sync`` accepts: entries keyed by their own valid name, with a
    valid ifindex (the mark and the map keys are derived from it)."""
    for name, tap in taps.items():
        if name != tap.ifname or not IFNAME_RE.match(name) or not 0 < tap.ifindex < (1 << 31):
            raise DatapathError(f"{who}: bad tap entry {name!r}")


@dataclass
class SteeringPlan:
    """One sync's steering decision."""

    steered: dict[int, TapState]  # ifindex -> tap, the taps really steered
    blocked: dict[str, str]  # tap name -> why it stays fail closed
    ports: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    """tap ifindex -> (bridge ifindex, bridge MAC) for every tap the kernel
    shows enslaved to a bridge (its word wins over ``TapState.bridge``, which
    may be a sync old)."""


class SteeringPolicy:
    """Decides, at every sync, which taps are steered: those the daemon wants
    steered except bridge ports that cannot be (``PortFacts.unsteerable``),
    which stay fail closed; warns once per tap and reason."""

    def __init__(self, who: str) -> None:
        self._who = who
        self._warned: dict[str, str] = {}

    @property
    def blocked(self) -> dict[str, str]:
        """Taps the last plan left fail closed, with why (operators, tests)."""
        return dict(self._warned)

    def plan(self, taps: Mapping[str, TapState], links: Mapping[int, NetLink]) -> SteeringPlan:
        blocked: dict[str, str] = {}
        ports: dict[int, tuple[int, bytes]] = {}
        for name, tap in taps.items():
            link = links.get(tap.ifindex)
            if link is None:
                continue  # gone: the link watcher will tell the daemon
            master = links.get(link.master) if link.master else None
            facts = PortFacts(link.mac)
            if master is not None and master.kind == "bridge":
                facts = PortFacts(link.mac, master.name, master.mac, link.group_fwd_mask)
                mac = bytes.fromhex(master.mac.replace(":", "")) if master.mac else bytes(6)
                ports[tap.ifindex] = (link.master, mac)
            why = facts.unsteerable() if tap.steer else None
            if why is not None:
                blocked[name] = why
        for name, why in sorted(blocked.items()):
            if self._warned.get(name) != why:
                log.warning("%s: tap %s is not steered (fail closed): %s", self._who, name, why)
        self._warned = blocked
        steered = {tap.ifindex: tap for name, tap in taps.items()
                   if tap.steer and name not in blocked}
        return SteeringPlan(steered, blocked, ports)

    def forget(self) -> None:
        self._warned = {}
