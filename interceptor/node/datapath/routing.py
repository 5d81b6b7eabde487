"""Policy routing that delivers marked metadata packets locally.

Shared by the nft and eBPF datapaths. After the datapath has marked a packet
from a tap (``mark & 0xff000000 == 0x4d000000``) and assigned it to a
transparent listener, the IP layer still has to decide that 169.254.169.254
is *local*; a catch-all local route in a table of our own does that:

    ip route add local 0.0.0.0/0 dev lo table T
    pref P    iif lo fwmark 0x4d000000/0xff000000 goto P+2
    pref P+1  fwmark 0x4d000000/0xff000000 lookup T
    pref P+2  nop

Why three rules and not one (or one per tap):

* Per-tap ``iif <tap>`` rules would make the rule list grow with the taps;
  per-tap state lives in nft sets / BPF maps instead, so the rule count is
  constant.
* A bare ``fwmark … lookup T`` also matches packets the host *sends* with the
  mark: with ``net.ipv4.tcp_fwmark_accept=1`` an accepted socket inherits the
  SYN's mark, so its replies would be routed to ``lo``.
  For locally generated packets the routing ``iif`` is ``lo``, so the first
  rule sends them past the tproxy table to ``nop`` (a target of our own, so
  the ``goto`` never depends on someone else's rule) and on to the usual
  rules. Verified: replies from the per-tap listeners leave through the tap
  with ``tcp_fwmark_accept`` 0 and 1. (Sockets bound to the tap happen to
  survive the bare rule too, because the ``lo`` route does not match their
  output interface; the exclusion keeps every other socket correct as well.)

IPv6 (when the datapath serves IPv6 metadata addresses) gets the same three
``ip -6 rule``s and ``local ::/0 dev lo`` in the same table. A link-local
destination (fe80::a9fe:a9fe) is looked up strictly by the input device, so
``dev lo`` never matches it: each steered tap gets ``local <address> dev
<tap>`` in the table too (:meth:`PolicyRouting.sync_scoped`), reached only by
marked packets; it goes with the tap. Replies to a guest's global address
need a route through the tap the listener is bound to (IPv6, unlike IPv4,
has no "assume on link" for a socket bound to a device, and a bridged
guest's prefix is routed via the bridge): ``pref P+2 from <address> iif lo
lookup T+1`` (locally generated only, so no guest can use it to reach other
taps) and, per steered tap, ``::/0 dev <tap> metric <ifindex> table T+1``,
which only a lookup bound to that tap matches.

``net.ipv4.tcp_fwmark_accept`` is left as the operator set it: the rules are
correct either way, and identity comes from the listener's device, not from
the mark (with 1, ``SO_MARK`` on an accepted socket is a useful cross-check).

Reverse-path filtering: the kernel validates the guest's source address on
the tap before local delivery. With ``rp_filter`` 1 (strict) the host needs a
route to the guest's address through that tap, and with 2 (loose) any route
to it; an on-link guest whose address the host does not route is dropped.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from interceptor.common.errors import DatapathError
from interceptor.node.datapath.base import DEFAULT_PREF, DEFAULT_TABLE, MARK_MASK, MARK_TAG

FR_ACT_TO_TBL = 1
FR_ACT_GOTO = 2
FR_ACT_NOP = 3
RTN_UNICAST = 1
RTN_LOCAL = 2
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RTPROT_STATIC = 4


@dataclass(frozen=True)
class PolicyRouting:
    """The constant set of ip rules and the one route; idempotent install/remove.

    Works in the network namespace of the calling thread. Table and
    preference are validated with the rest of the options (contract.py).
    """

    table: int = DEFAULT_TABLE
    pref: int = DEFAULT_PREF
    mark: int = MARK_TAG
    mask: int = MARK_MASK
    ipv6: bool = False  # also for IPv6 (the datapath serves IPv6 addresses)
    sources6: tuple[str, ...] = ()  # IPv6 metadata addresses that get reply routes

    @property
    def families(self) -> tuple[int, ...]:
        return (2, 10) if self.ipv6 else (2,)

    def _rules(self, family: int) -> list[dict[str, Any]]:
        base = {"family": family, "fwmark": self.mark, "fwmask": self.mask}
        return [
            {**base, "priority": self.pref, "iifname": "lo",
             "action": FR_ACT_GOTO, "goto": self.pref + 2},
            {**base, "priority": self.pref + 1, "table": self.table, "action": FR_ACT_TO_TBL},
            {"family": family, "priority": self.pref + 2, "action": FR_ACT_NOP},
            *({"family": 10, "priority": self.pref + 2, "src": a, "src_len": 128,
               "iifname": "lo", "table": self.table + 1, "action": FR_ACT_TO_TBL}
              for a in (self.sources6 if family == 10 else ())),
        ]

    def _route(self, lo: int, family: int) -> dict[str, Any]:
        # A local route must have host scope, or the kernel answers EINVAL.
        return {"dst": "0.0.0.0/0" if family == 2 else "::/0", "type": RTN_LOCAL,
                "scope": RT_SCOPE_HOST, "oif": lo, "table": self.table, "family": family,
                "proto": RTPROT_STATIC}

    def install(self) -> None:
        """Add the rules and the route unless present (apply twice = apply once)."""
        try:
            with IPRoute() as ipr:
                lo = _lo_index(ipr)
                for family in self.families:
                    # Route first: the moment the lookup rule exists it must resolve.
                    ipr.route("replace", **self._route(lo, family))
                    present = _dump_rules(ipr, family)
                    # The nop target before the goto that points at it.
                    for rule in reversed(self._rules(family)):
                        if not any(_same_rule(rule, have) for have in present):
                            ipr.rule("add", **rule)
        except NetlinkError as exc:
            raise DatapathError(f"routing: cannot install policy routing: {exc}") from None

    def remove(self) -> None:
        """Delete our rules and routes (both families, whatever ``ipv6`` says:
        a daemon with IPv6 turned off removes what an earlier one made); a
        no-op for what is already gone."""
        try:
            with IPRoute() as ipr:
                lo = _lo_index(ipr)
                for family in (2, 10):
                    for rule in self._rules(family):
                        for have in _dump_rules(ipr, family):
                            if _same_rule(rule, have):
                                _ignore_missing(ipr.rule, "del", **rule)
                    _ignore_missing(ipr.route, "del", **self._route(lo, family))
            self.sync_scoped((), set())
        except NetlinkError as exc:
            raise DatapathError(f"routing: cannot remove policy routing: {exc}") from None

    def sync_scoped(self, addresses: Iterable[str], ifindexes: Set[int]) -> None:
        """Make the per-tap routes exactly those of ``ifindexes``: ``local
        <address> dev <tap>`` for the link-local ``addresses`` (table T), and
        the reply route ``::/0 dev <tap>`` (table T+1) when there are
        ``sources6``."""
        want = {(self.table, f"{a}/128", i) for a in addresses for i in ifindexes}
        if self.sources6:
            want |= {(self.table + 1, "::/0", i) for i in ifindexes}
        try:
            with IPRoute() as ipr:
                lo = _lo_index(ipr)
                have: set[tuple[int, str, int]] = set()
                for table in (self.table, self.table + 1):
                    for r in ipr.route("dump", table=table, family=10):
                        oif = r.get("oif")
                        if oif in (None, lo) or r.get("proto") != RTPROT_STATIC:
                            continue
                        have.add((table, f"{r.get('dst') or '::'}/{r['dst_len']}", int(oif)))
                for key in sorted(have - want):
                    _ignore_missing(ipr.route, "del", **self._scoped(*key))
                for key in sorted(want - have):
                    try:
                        ipr.route("replace", **self._scoped(*key))
                    except NetlinkError as exc:
                        # Gone meanwhile, or down (the kernel refuses IPv6 routes
                        # on a down link and drops them when it goes down; the
                        # link watcher re-syncs when it comes up).
                        if exc.code not in (errno.ENODEV, errno.ENETDOWN):
                            raise
        except NetlinkError as exc:
            raise DatapathError(f"routing: cannot route IPv6 metadata per tap: {exc}") from None

    def _scoped(self, table: int, dst: str, ifindex: int) -> dict[str, Any]:
        # One route per tap for the same destination: the metric (the
        # ifindex) keeps them apart, or each "replace" would take the last's.
        local = table == self.table
        return {"dst": dst, "type": RTN_LOCAL if local else RTN_UNICAST,
                "scope": RT_SCOPE_HOST if local else RT_SCOPE_LINK, "oif": ifindex,
                "priority": ifindex, "table": table, "family": 10, "proto": RTPROT_STATIC}

    def present(self) -> bool:
        """True when every rule and the local route are in place."""
        with IPRoute() as ipr:
            for family in self.families:
                rules = _dump_rules(ipr, family)
                if not all(any(_same_rule(r, have) for have in rules)
                           for r in self._rules(family)):
                    return False
                routes = ipr.route("dump", table=self.table, family=family)
                if not any(r.get("type") == RTN_LOCAL and r.get("dst_len") == 0
                           for r in routes):
                    return False
            return True


def _lo_index(ipr: Any) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise DatapathError("routing: no loopback interface in this network namespace")
    return int(found[0])


def _dump_rules(ipr: Any, family: int) -> list[dict[str, Any]]:
    out = []
    for msg in ipr.get_rules(family=family):
        out.append({
            "priority": msg.get("priority", 0),
            "action": msg["action"],
            "fwmark": msg.get("fwmark"),
            "fwmask": msg.get("fwmask"),
            "iifname": msg.get("iifname"),
            "goto": msg.get("goto"),
            "src": msg.get("src"),
            "table": msg.get("table") if msg["action"] == FR_ACT_TO_TBL else None,
        })
    return out


def _same_rule(want: dict[str, Any], have: dict[str, Any]) -> bool:
    keys = ("priority", "action", "fwmark", "fwmask", "iifname", "goto", "src", "table")
    return all(want.get(k) == have.get(k) for k in keys)


def _ignore_missing(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH, errno.EAFNOSUPPORT):
            raise
