"""Bridged taps, in both datapaths: how their frames reach the tap's listener.

A tap enslaved to a Linux bridge hands every received frame to the bridge
(its ``rx_handler``), and the IP layer then sees the *bridge* as the input
device, so neither the per-tap listener (``SO_BINDTODEVICE=<tap>``) nor any
``iif``-keyed rule would match. The bridge leaves one kind of frame to the
port's own protocol stack: an IEEE 802.1D link-local group address
(01:80:c2:00:00:0X) that it does not forward is passed up *as received on
the port* (``br_handle_frame`` returns ``RX_HANDLER_PASS``). So the datapath's hook on
a steered tap, which runs before the bridge (nft: the netdev ingress chain;
eBPF: the tc ingress program), readdresses the frames we want on the tap to
:data:`BYPASS_MAC` (and sets ``pkttype host``); the bridge
hands them back, and from there a bridged tap is a routed tap: same inet
rules, same per-tap listener, identity = the tap the frame entered on,
replies leave through the tap itself and never through the bridge's
forwarding database. ``br_netfilter`` never sees these frames (its hooks are
past the link-local test), so ``bridge-nf-call-iptables=1`` does not matter.

Two kinds of frame are readdressed, both only from steered taps:

* IPv4 or IPv6 to a metadata address (the guest's TCP to the proxy);
* ARP replies and IPv6 neighbour advertisements addressed to the tap's own
  MAC (``pkttype host`` on the tap):
  answers to the neighbour resolution the host does *on the tap* for its
  replies. Without this the answer would reach the bridge, the tap's
  neighbour entry would stay incomplete and the SYN-ACK would never leave.

Why 01:80:c2:00:00:02 (IEEE "slow protocols"): the bridge forwards a group
address only when its ``group_fwd_mask`` says so, and the kernel refuses that
bit on the bridge (bits 0-2 are restricted); only a port's own mask can set
it, which the link dump (``netlink.dump_links``) reports. (00 is forwarded when STP is off; 0e,
LLDP, when the bridge forwards LLDP, as some setups do.) Frames to it pass
the bridge family's *input* hook, so a bridge-family input chain with a drop
policy must accept them.

A tap whose MAC is also its bridge's MAC (a bridge without an address of its
own adopts its lowest port's) cannot be steered: the bridge's own ARP
answers would be taken for the tap's and the host would lose the guest on
the bridge. Such a tap fails closed, with a warning; give the bridge its own
address (``ip link set <bridge> address <mac>``; libvirt does).

Frames that are not readdressed go through the bridge as usual; those the
bridge passes up to the host are still filtered like a routed tap's (nft
marks every frame from a managed tap at its ingress, see nft.py; the eBPF
program judges them as if they entered on the bridge, see ebpf.py).

The eBPF program readdresses on every steered tap, bridge port or not (it
changes nothing on a routed tap, where the stack goes by ``pkt_type``), so a
tap enslaved between two syncs is served at once; nft's ingress rules do the
same.

Only untagged frames are readdressed: a guest that sends 802.1Q-tagged frames
on a trunk port reaches the bridge's VLANs as before (neither steered nor
refused), as with any other traffic it tags.

Considered and not used: the bridge family's ``meta broute set 1`` does the
same in a bridge prerouting chain, but needs ``CONFIG_NFT_BRIDGE_META`` (not
built on kernels of this kind) and an nft newer than Debian 12's; per-tap listener *ports* on
the bridge (identity by mark) would share established-socket lookup between
the bridge's guests and send replies through the bridge's FDB.
"""

from __future__ import annotations

from dataclasses import dataclass

BYPASS_MAC = "01:80:c2:00:00:02"
BYPASS_BIT = 1 << 2  # its bit in a bridge port's group_fwd_mask


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
