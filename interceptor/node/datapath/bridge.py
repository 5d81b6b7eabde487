"""Bridged taps for the nft datapath: the ``meta broute`` rule and bridge facts.

A tap enslaved to a Linux bridge hands every frame to the bridge, and the IP
layer then sees the *bridge* as the input device: the per-tap listener
(``SO_BINDTODEVICE=<tap>``) and every ``iif``-keyed rule stop matching. The
bridge family's ``meta broute set 1`` undoes exactly that for the frames we
choose: the bridge returns them to the receive path as if the tap were not a
bridge port (ebtables' BROUTING, "route instead of bridge"), so the IP layer
sees the tap, and the routed-tap datapath applies unchanged. Identity stays
the tap the frame entered on; replies from the tap's socket leave through the
tap itself, never through the bridge's forwarding database.

nft 1.0.6 (Debian 12) has no ``broute`` keyword, although the kernel does
(NFT_META_BRI_BROUTE, Linux 6.5+): the one constant rule that sets it is sent
here as raw nfnetlink (immediate 1 -> reg 1, meta set broute, accept), into a
chain of its own that the nft-written rules ``goto``. Everything else is plain
nft text.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from interceptor.common.errors import DatapathError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWRULE = 6
NFPROTO_BRIDGE = 7
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_APPEND = 0x800
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NLMSG_ERROR = 0x2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE = 1
NFTA_META_KEY, NFTA_META_SREG = 2, 3
NFT_META_BRI_BROUTE = 35
NFT_REG_VERDICT, NFT_REG_1 = 0, 1
NF_ACCEPT = 1
NFTNL_UDATA_RULE_COMMENT = 0
BROUTE_COMMENT = "route, not bridge: the IP layer sees the tap"
BR_NETFILTER_FLAG = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nested(NFTA_LIST_ELEM, _attr(NFTA_EXPR_NAME, name.encode() + b"\0"),
                   _nested(NFTA_EXPR_DATA, *attrs))


def _message(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    nfgen = struct.pack("=BBH", family, 0, socket.htons(res_id))
    payload = nfgen + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def broute_rule_batch(table: str, chain: str, seq: int = 1) -> bytes:
    """An nfnetlink batch appending ``meta broute set 1 accept`` (with a
    comment) to ``bridge <table> <chain>``; the rule message asks for an ACK."""
    comment = BROUTE_COMMENT.encode() + b"\0"
    udata = struct.pack("=BB", NFTNL_UDATA_RULE_COMMENT, len(comment)) + comment
    rule = b"".join((
        _attr(NFTA_RULE_TABLE, table.encode() + b"\0"),
        _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0"),
        _nested(NFTA_RULE_EXPRESSIONS,
                _expr("immediate",
                      _attr(NFTA_IMMEDIATE_DREG, struct.pack("!I", NFT_REG_1)),
                      _nested(NFTA_IMMEDIATE_DATA, _attr(NFTA_DATA_VALUE, b"\x01"))),
                _expr("meta",
                      _attr(NFTA_META_KEY, struct.pack("!I", NFT_META_BRI_BROUTE)),
                      _attr(NFTA_META_SREG, struct.pack("!I", NFT_REG_1))),
                _expr("immediate",
                      _attr(NFTA_IMMEDIATE_DREG, struct.pack("!I", NFT_REG_VERDICT)),
                      _nested(NFTA_IMMEDIATE_DATA,
                              _nested(NFTA_DATA_VERDICT,
                                      _attr(NFTA_VERDICT_CODE,
                                            struct.pack("!i", NF_ACCEPT)))))),
        _attr(NFTA_RULE_USERDATA, udata),
    ))
    subsys = NFNL_SUBSYS_NFTABLES << 8
    return b"".join((
        _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC,
                 NFNL_SUBSYS_NFTABLES, b""),
        _message(subsys | NFT_MSG_NEWRULE,
                 NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK, seq + 1,
                 NFPROTO_BRIDGE, 0, rule),
        _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, socket.AF_UNSPEC,
                 NFNL_SUBSYS_NFTABLES, b""),
    ))


def add_broute_rule(table: str, chain: str) -> None:
    """Append the broute rule to the (existing, empty) chain; one transaction.

    Raises DatapathError when the kernel refuses it (older than 6.5: no
    NFT_META_BRI_BROUTE), with the errno's text."""
    seq = int.from_bytes(os.urandom(3), "big") + 1
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(broute_rule_batch(table, chain, seq))
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise DatapathError("nft: no answer from the kernel for the broute rule") from None
            code = _ack_for(data, seq + 1)
            if code is None:
                continue
            if code != 0:
                raise DatapathError(
                    f"nft: the kernel refused 'meta broute set 1' ({os.strerror(-code)}; "
                    "bridged taps need Linux 6.5 or later)")
            return


def _ack_for(data: bytes, seq: int) -> int | None:
    """The error code of the NLMSG_ERROR answering ``seq`` in ``data`` (0 = ACK)."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == NLMSG_ERROR and length >= 20:
            (code,) = struct.unpack_from("=i", data, offset + 16)
            if msg_seq == seq or code != 0:
                return int(code) if code else 0
        offset += (length + 3) & ~3
    return None


@dataclass(frozen=True)
class PortFacts:
    """What the kernel says about one managed tap right now."""

    mac: str  # lower-case, colon separated
    bridge: str | None  # master's name when the master is a Linux bridge
    bridge_mac: str | None


def port_facts(ifindexes: set[int]) -> dict[int, PortFacts]:
    """MAC and bridge (with its MAC) of each given link, from one netlink dump
    in the calling thread's network namespace. Links that are gone are absent."""
    if not ifindexes:
        return {}
    with IPRoute() as ipr:
        links: list[Any] = list(ipr.get_links())
    by_index: dict[int, Any] = {int(m["index"]): m for m in links}
    out: dict[int, PortFacts] = {}
    for idx in ifindexes:
        msg = by_index.get(idx)
        if msg is None:
            continue
        mac = str(msg.get_attr("IFLA_ADDRESS") or "").lower()
        master = by_index.get(int(msg.get_attr("IFLA_MASTER") or 0))
        bridge = bridge_mac = None
        if master is not None and _kind(master) == "bridge":
            bridge = str(master.get_attr("IFLA_IFNAME"))
            bridge_mac = str(master.get_attr("IFLA_ADDRESS") or "").lower()
        out[idx] = PortFacts(mac, bridge, bridge_mac)
    return out


def _kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return str(kind) if kind else None


def br_netfilter_calls_iptables(flag: Path = BR_NETFILTER_FLAG) -> bool:
    """True when bridged IPv4 is passed through the ip family hooks
    (``br_netfilter`` loaded and ``bridge-nf-call-iptables=1``)."""
    try:
        return flag.read_text().strip() == "1"
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise


def macs_by_index(facts: Mapping[int, PortFacts]) -> dict[int, str]:
    return {idx: f.mac for idx, f in facts.items() if f.mac}
