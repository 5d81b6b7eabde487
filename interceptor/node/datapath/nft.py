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
  by ifindex; left out when configured 0, "no limit"), then ``meta mark set
  iif map @vm_mark tproxy ip to 169.254.169.254:80``: the listener lookup
  takes the ingress device into account, so the packet lands on the tap's
  own ``SO_BINDTODEVICE`` listener (see listeners.py). The address must be
  explicit: ``to :80`` means "the tap's first IPv4 address" when it has one
  (a routed tap carrying the guests' gateway address), and then no listener
  matches. Anything else to the metadata address is dropped: fail closed
  (this also covers a tap that matches the name patterns but was not synced
  yet). A steered tap whose daemon is gone (no ``alive`` heartbeat for
  ``ALIVE_TIMEOUT_S``) is answered with a RST at the netdev ingress instead:
  the guest fails at once rather than waiting on a listener that no longer
  exists.
* inet input: from a managed tap (by ``iif``, by name pattern, or by the
  guest mark when a bridge is in between) only the steered metadata
  connection, ICMP, replies to connections the host opened, and configured
  UDP/TCP ports reach local sockets; everything else (other ports on
  169.254.169.254, the host's addresses on the tap or its bridge, IPv4 and
  IPv6, any other local address) is dropped.
* Conntrack zones per tap keep two guests with the same address and port
  apart in conntrack (and so in ``ct count``).

IPv6 (``metadata_address6``) mirrors all of this per address: at the
ingress a neighbour solicitation for a metadata address is rewritten into
the advertisement and sent back out the tap (``nft_ruleset._ndp_rules``:
nft 1.0.6 updates the ICMPv6 checksum for some of the writes only, so the
rule carries a precomputed filler that makes the result right), IPv6 to it
from a steered tap is readdressed as above, TCP from any other managed tap
gets a RST; prerouting sends ``[address]:80`` to the tap's listener of that
address (``tproxy ip6 to [address]:80``), with the same meters; the host
input filter is family-independent already.

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
an operator's low mark bits stay as they were). A tap whose MAC is its
bridge's MAC, or whose bridge port forwards the readdressed frames, is not
steered (fail closed, one
warning per tap): see ``contract.SteeringPolicy``. That check runs
at every ``sync``; a bridge that adopts a tap's MAC later (its own port with
a lower MAC removed) is noticed at the next one.

Reverse-path filtering applies to bridged taps as to routed ones (routing.py):
strict ``rp_filter`` on a bridged tap drops its guests' packets, since the
route to them goes through the bridge; loose (2) or off works.

Not thread-safe: call all methods from one thread (the daemon's executor).

Policy routing (routing.py) makes the marked packets local. The ruleset text
is produced by nft_ruleset.py; ``deploy/nftables/interceptor.nft`` is its
output for the default configuration, for operators to review. What both
datapaths must agree on (options, tap entries, steering, counters) is in
contract.py; this module is the nftables half of it only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from interceptor.common.errors import DatapathError
from interceptor.node.datapath.base import TapCounters, TapState, mark_for
from interceptor.node.datapath.contract import SteeringPolicy, check_taps
from interceptor.node.datapath.netlink import dump_links
from interceptor.node.datapath.nft_cli import Nft
from interceptor.node.datapath.nft_ruleset import (
    COUNTER_SETS,
    INGRESS_CHAIN,
    SHARD_SIZE,
    NftConfig,
    quoted,
    render_ingress_chain,
    render_ruleset,
    shard_name,
)
from interceptor.node.datapath.routing import PolicyRouting
from interceptor.node.datapath.zones import ZonePool

__all__ = ["NftConfig", "NftDatapath"]

log = logging.getLogger(__name__)

# Seconds the ``alive`` element outlives the daemon's last heartbeat (renewed
# every second): longer than a restart's gap between two processes, short
# enough that a killed daemon's guests get RSTs instead of hanging.
ALIVE_TIMEOUT_S = 3


@dataclass
class _Applied:
    """What the last successful sync put into the kernel."""

    taps: dict[str, TapState] = field(default_factory=dict)
    shards: list[set[str]] = field(default_factory=list)  # devices per ingress shard
    blocked: dict[str, str] = field(default_factory=dict)  # steer wanted, refused: why


class NftDatapath:
    """The ``Datapath`` protocol over nftables (routed and bridged taps)."""

    name = "nft"
    counted = frozenset(field for _, field in COUNTER_SETS.values())

    def __init__(self, cfg: NftConfig | None = None) -> None:
        self.cfg = cfg or NftConfig()
        self.routing = PolicyRouting(self.cfg.route_table, self.cfg.rule_pref,
                                     ipv6=bool(self.cfg.metadata_address6),
                                     sources6=self.cfg.global6)
        self.nft = Nft(self.cfg.nft_binary)
        self.policy = SteeringPolicy("nft")
        self._applied: _Applied | None = None  # None: kernel state not adopted yet
        self._zones = ZonePool()

    def _apply(self, batch: str) -> None:
        self.nft.apply(batch)

    def _tables(self) -> list[tuple[str, str]]:
        return [("inet", self.cfg.table), ("netdev", self.cfg.table)]

    def _tables_exist(self) -> bool:
        return set(self._tables()) <= self.nft.tables()

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
        replace = Nft.drop_tables(self._tables()) + render_ruleset(self.cfg)
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
            self.nft.run(["-c", "-f", "-"], stdin=(
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
            data = json.loads(self.nft.run(["-j", "list", "table", fam, t]))
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
        self._apply(Nft.drop_tables(self._tables()))
        self.routing.remove()
        self._applied = None
        self.policy.forget()

    def sync(self, taps: Mapping[str, TapState]) -> None:
        """Make the elements (and the ingress device list) equal ``taps``.

        One atomic batch. Only elements change; a changed value is a delete
        plus an add. Removing an element that may not exist is written as
        add-then-delete, so the batch never fails on state it cannot see.
        """
        check_taps(taps, "nft")
        blocked = self.policy.plan(taps, dump_links() if taps else {}).blocked
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
        if self.cfg.metadata_address6:
            self.routing.sync_scoped(self.cfg.link_local6, {
                t.ifindex for n, t in taps.items() if t.steer and n not in blocked})
        self._applied = _Applied(taps=dict(taps), shards=shards, blocked=blocked)

    def unsteerable(self) -> dict[str, str]:
        return self.policy.blocked

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
                hook = (f"type filter hook ingress devices = {quoted(additions[i])} "
                        f"priority {prio};")
                lines.append(f"add chain netdev {t} {shard_name(i)} {{ {hook} }}")
            elif i in additions:
                lines.append(render_ingress_chain(self.cfg, i, sorted(devs)))
        while shards and not shards[-1]:
            shards.pop()
        return lines, shards

    def _existing_shards(self) -> list[str]:
        return [item["chain"]["name"] for item in self.nft.table_json("netdev", self.cfg.table)
                if "chain" in item and item["chain"]["name"].startswith(INGRESS_CHAIN)]

    def counters(self) -> dict[str, TapCounters]:
        """Per-tap counters from the dynamic counter sets (read at scrape time)."""
        if self._applied is None:
            return {}
        by_index = {tap.ifindex: name for name, tap in self._applied.taps.items()}
        by_name = {name: name for name in self._applied.taps}
        out = {name: TapCounters() for name in self._applied.taps}
        for fam in ("inet", "netdev"):
            for item in self.nft.table_json(fam, self.cfg.table):
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
                    if name is not None:
                        out[name].add(attr, packets)
        return out

    def rule_counts(self) -> dict[str, int]:
        """Rules per chain ("family/chain"). Constant per chain whatever the
        number of taps; only the number of ingress shards grows, one per
        SHARD_SIZE taps, and a packet traverses exactly one of them."""
        counts: dict[str, int] = {}
        for fam in ("inet", "netdev"):
            for item in self.nft.table_json(fam, self.cfg.table):
                if "chain" in item:
                    counts.setdefault(f"{fam}/{item['chain']['name']}", 0)
                if "rule" in item:
                    key = f"{fam}/{item['rule']['chain']}"
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def ingress_devices(self) -> set[str]:
        """Devices the ingress shards are hooked on (parsed from the text
        listing: nft 1.0.6's JSON omits multi-device lists)."""
        out = self.nft.run(["list", "table", "netdev", self.cfg.table])
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
