"""One rtnetlink link dump, parsed by hand: what both datapaths and the link
watcher (links.py) learn about interfaces.

pyroute2 spends ~1 ms parsing each link of a dump, which is a second per
sync on a node with a thousand taps; this reader is ~50x faster.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from interceptor.common.errors import DatapathError

RTM_NEWLINK, RTM_GETLINK = 16, 18
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_EXT_MASK = 1, 3, 10, 18, 29
IFLA_INFO_KIND, IFLA_INFO_SLAVE_DATA = 1, 5
IFLA_BRPORT_GROUP_FWD_MASK = 31
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_TYPE_MASK = 0x3FFF
IFF_UP = 1
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")


@dataclass(frozen=True)
class NetLink:
    """The few attributes of an RTM_NEWLINK message the datapaths need."""

    name: str
    mac: str
    master: int = 0
    kind: str | None = None
    group_fwd_mask: int = 0
    up: bool = True  # IFF_UP: the kernel drops a down link's IPv6 routes


def dump_links() -> dict[int, NetLink]:
    """Every link by ifindex (RTM_GETLINK dump without statistics)."""
    request = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
               + _NLA.pack(8, IFLA_EXT_MASK) + struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
    links: dict[int, NetLink] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(_NLMSG.pack(_NLMSG.size + len(request), RTM_GETLINK,
                              NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
        done = False
        while not done:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                raise DatapathError("links: no answer to a link dump") from None
            done = parse_links(data, links)
    return links


def parse_links(data: bytes, into: dict[int, NetLink]) -> bool:
    """Add the links in one datagram of a dump to ``into``; True at the end."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        end = offset + length
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _NLMSG.size)
            raise DatapathError(f"links: link dump failed: errno {-code}")
        if kind == RTM_NEWLINK:
            body = offset + _NLMSG.size
            _family, _type, index, if_flags, _change = _IFINFO.unpack_from(data, body)
            into[index] = _link(data, body + _IFINFO.size, end, up=bool(if_flags & IFF_UP))
        offset += (length + 3) & ~3
    return False


def _link(data: bytes, start: int, end: int, *, up: bool) -> NetLink:
    name = mac = ""
    master = fwd_mask = 0
    kind: str | None = None
    for attr, lo, hi in _attrs(data, start, end):
        if attr == IFLA_IFNAME:
            name = data[lo:hi].split(b"\0", 1)[0].decode(errors="replace")
        elif attr == IFLA_ADDRESS:
            mac = ":".join(f"{b:02x}" for b in data[lo:hi])
        elif attr == IFLA_MASTER:
            (master,) = struct.unpack_from("=I", data, lo)
        elif attr == IFLA_LINKINFO:
            for sub, slo, shi in _attrs(data, lo, hi):
                if sub == IFLA_INFO_KIND:
                    kind = data[slo:shi].split(b"\0", 1)[0].decode(errors="replace")
                elif sub == IFLA_INFO_SLAVE_DATA:
                    for port, plo, _phi in _attrs(data, slo, shi):
                        if port == IFLA_BRPORT_GROUP_FWD_MASK:
                            (fwd_mask,) = struct.unpack_from("=H", data, plo)
    return NetLink(name, mac, master, kind, fwd_mask, up)


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end]."""
    offset = start
    while offset + _NLA.size <= end:
        length, attr = _NLA.unpack_from(data, offset)
        if length < _NLA.size:
            return
        yield attr & NLA_TYPE_MASK, offset + _NLA.size, offset + length
        offset += (length + 3) & ~3
