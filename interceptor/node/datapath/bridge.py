"""Bridged taps in the nft datapath: how their frames reach the tap's listener.

A tap enslaved to a Linux bridge hands every received frame to the bridge
(its ``rx_handler``), and the IP layer then sees the *bridge* as the input
device, so neither the per-tap listener (``SO_BINDTODEVICE=<tap>``) nor any
``iif``-keyed rule would match. The bridge leaves one kind of frame to the
port's own protocol stack: an IEEE 802.1D link-local group address
(01:80:c2:00:00:0X) that it does not forward is passed up *as received on
the port* (``br_handle_frame`` returns ``RX_HANDLER_PASS``). So the netdev ingress chain of
a steered tap, which runs before the bridge, readdresses the frames we want
on the tap to :data:`BYPASS_MAC` (and sets ``pkttype host``); the bridge
hands them back, and from there a bridged tap is a routed tap: same inet
rules, same per-tap listener, identity = the tap the frame entered on,
replies leave through the tap itself and never through the bridge's
forwarding database. ``br_netfilter`` never sees these frames (its hooks are
past the link-local test), so ``bridge-nf-call-iptables=1`` does not matter.

Two kinds of frame are readdressed, both only from steered taps:

* IPv4 to the metadata address (the guest's TCP to the proxy);
* ARP replies addressed to the tap's own MAC (``pkttype host`` on the tap):
  answers to the neighbour resolution the host does *on the tap* for its
  replies. Without this the answer would reach the bridge, the tap's
  neighbour entry would stay incomplete and the SYN-ACK would never leave.

Why 01:80:c2:00:00:02 (IEEE "slow protocols"): the bridge forwards a group
address only when its ``group_fwd_mask`` says so, and the kernel refuses that
bit on the bridge (bits 0-2 are restricted); only a port's own mask can set
it, which :func:`port_facts` reports. (00 is forwarded when STP is off; 0e,
LLDP, when the bridge forwards LLDP, as some setups do.) Frames to it pass
the bridge family's *input* hook, so a bridge-family input chain with a drop
policy must accept them.

A tap whose MAC is also its bridge's MAC (a bridge without an address of its
own adopts its lowest port's) cannot be steered: the bridge's own ARP
answers would be taken for the tap's and the host would lose the guest on
the bridge. Such a tap fails closed, with a warning; give the bridge its own
address (``ip link set <bridge> address <mac>``; libvirt does).

Frames that are not readdressed go through the bridge as usual; those the
bridge passes up to the host are still filtered like a routed tap's (the
netdev ingress chain marks every frame from a managed tap: see nft.py).

Only untagged IPv4 is readdressed: a guest that sends 802.1Q-tagged frames
on a trunk port reaches the bridge's VLANs as before (neither steered nor
refused), as with any other traffic it tags.

Considered and not used: the bridge family's ``meta broute set 1`` does the
same in a bridge prerouting chain, but needs ``CONFIG_NFT_BRIDGE_META`` (not
built on kernels of this kind) and an nft newer than Debian 12's; per-tap listener *ports* on
the bridge (identity by mark) would share established-socket lookup between
the bridge's guests and send replies through the bridge's FDB.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from interceptor.common.errors import DatapathError

BYPASS_MAC = "01:80:c2:00:00:02"
BYPASS_BIT = 1 << 2  # its bit in a bridge port's group_fwd_mask

# rtnetlink, by hand: pyroute2 spends ~1 ms parsing each link of a dump,
# which is a second per sync on a node with a thousand taps; this is ~50x less.
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_EXT_MASK = 1, 3, 10, 18, 29
IFLA_INFO_KIND, IFLA_INFO_SLAVE_DATA = 1, 5
IFLA_BRPORT_GROUP_FWD_MASK = 31
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_TYPE_MASK = 0x3FFF
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")


@dataclass(frozen=True)
class PortFacts:
    """What the kernel says about one tap right now."""

    mac: str  # lower case, colon separated
    bridge: str | None = None  # the master's name when it is a Linux bridge
    bridge_mac: str | None = None
    group_fwd_mask: int = 0  # the port's own mask (bridge ports only)

    def unsteerable(self) -> str | None:
        """Why frames from this port cannot be brought to its listener, or None."""
        if self.bridge is None:
            return None
        if self.bridge_mac and self.mac == self.bridge_mac:
            return (f"it has the MAC of its bridge {self.bridge} ({self.mac}); give the "
                    f"bridge an address of its own (ip link set {self.bridge} address ...)")
        if self.group_fwd_mask & BYPASS_BIT:
            return (f"its bridge port forwards {BYPASS_MAC} (group_fwd_mask "
                    f"{self.group_fwd_mask:#x}); clear bit 2 (ip link set <tap> type "
                    "bridge_slave group_fwd_mask 0)")
        return None


@dataclass(frozen=True)
class Link:
    """The few attributes of an RTM_NEWLINK message that matter here."""

    name: str
    mac: str
    master: int = 0
    kind: str | None = None
    group_fwd_mask: int = 0


def port_facts(ifindexes: Iterable[int]) -> dict[int, PortFacts]:
    """Facts about the given links from one link dump, in the calling
    thread's network namespace. Links that are gone are absent."""
    wanted = set(ifindexes)
    return facts_from(dump_links(), wanted) if wanted else {}


def facts_from(links: Mapping[int, Link], wanted: set[int]) -> dict[int, PortFacts]:
    out: dict[int, PortFacts] = {}
    for idx in wanted & links.keys():
        link = links[idx]
        master = links.get(link.master) if link.master else None
        if master is None or master.kind != "bridge":
            out[idx] = PortFacts(link.mac)
        else:
            out[idx] = PortFacts(link.mac, master.name, master.mac, link.group_fwd_mask)
    return out


def dump_links() -> dict[int, Link]:
    """Every link by ifindex (RTM_GETLINK dump without statistics)."""
    request = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
               + _NLA.pack(8, IFLA_EXT_MASK) + struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
    links: dict[int, Link] = {}
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
                raise DatapathError("nft: no answer to a link dump") from None
            done = parse_links(data, links)
    return links


def parse_links(data: bytes, into: dict[int, Link]) -> bool:
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
            raise DatapathError(f"nft: link dump failed: errno {-code}")
        if kind == RTM_NEWLINK:
            body = offset + _NLMSG.size
            _family, _type, index, _flags2, _change = _IFINFO.unpack_from(data, body)
            into[index] = _link(data, body + _IFINFO.size, end)
        offset += (length + 3) & ~3
    return False


def _link(data: bytes, start: int, end: int) -> Link:
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
    return Link(name, mac, master, kind, fwd_mask)


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end]."""
    offset = start
    while offset + _NLA.size <= end:
        length, attr = _NLA.unpack_from(data, offset)
        if length < _NLA.size:
            return
        yield attr & NLA_TYPE_MASK, offset + _NLA.size, offset + length
        offset += (length + 3) & ~3
