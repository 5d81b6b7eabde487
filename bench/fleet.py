"""Many guests at once: namespaces and veth pairs made with ``ip -batch``.

``Topology.add_guest`` costs a dozen ``ip`` processes per guest; for 200 or
1,000 guests that alone takes minutes on two cores. A ``Fleet`` makes the
same wiring (host end = the "tap" in the node namespace, ``eth0`` inside the
guest with its own /32 address, an on-link route to 169.254.169.254) with one batch for
the namespaces, one for the links and one small batch per guest.

Names come from the topology's unique prefix; ``close()`` deletes every
namespace it made (which deletes both ends of each veth), also after a
failure half way.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.lab import Topology, sh

ARP_MAC = "02:a9:fe:a9:fe:00"  # the datapath's fake MAC for 169.254.169.254


@dataclass(frozen=True)
class FleetGuest:
    netns: str
    tap: str
    ip: str
    mac: str


def guest_mac(index: int) -> str:
    n = index + 1
    return f"02:42:00:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}"


def guest_ip(index: int) -> str:
    """A distinct address per guest (the product does not need it, the
    baseline's routed replies do)."""
    n = index + 1
    return f"10.{64 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def _batch(lines: Iterable[str], netns: str | None = None, timeout: float = 300.0) -> None:
    text = "\n".join(lines) + "\n"
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr[-2000:]}")


class Fleet:
    """``count`` guests attached to ``topo.node``; ``tap_prefix`` + index names the taps."""

    def __init__(self, topo: Topology, tag: str) -> None:
        self.topo = topo
        self.tag = tag
        self.guests: list[FleetGuest] = []
        self._namespaces: list[str] = []

    def tap_name(self, index: int) -> str:
        name = f"mdtap{self.topo.prefix[1:]}{self.tag}{index}"
        assert len(name) <= 15, name
        return name

    def netns_name(self, index: int) -> str:
        return f"{self.topo.prefix}{self.tag}g{index}"

    def add(self, count: int, *, static_neighbour: bool = False, link: bool = True,
            local_address: bool = False) -> list[FleetGuest]:
        """Make ``count`` more guests. ``link=False`` makes only the guest
        namespaces (wire them later with ``wire``).

        ``static_neighbour`` gives both ends permanent neighbour entries (the
        guest's for 169.254.169.254, the node's for the guest address on its
        tap). Needed from a few hundred guests on: the kernel's ARP table is
        one table for all namespaces, and past ``gc_thresh3`` (1,024 by
        default) dynamic entries fail ("neighbor table overflow") and
        packets are dropped; permanent entries are not counted."""
        start = len(self.guests)
        new = [FleetGuest(self.netns_name(i), self.tap_name(i), guest_ip(i), guest_mac(i))
               for i in range(start, start + count)]
        _batch(f"netns add {g.netns}" for g in new)
        self._namespaces += [g.netns for g in new]
        self.guests += new
        for g in new:
            _batch(["link set lo up"], g.netns)
        if link:
            self.wire(new, static_neighbour=static_neighbour, local_address=local_address)
        return new

    def wire(self, guests: Sequence[FleetGuest], *, static_neighbour: bool = False,
             local_address: bool = False) -> None:
        """Create each guest's veth pair and configure the guest side.
        ``local_address`` puts 169.254.169.254/32 on each host end (the
        baseline: a plain server on the node answers there, no interception)."""
        lines = []
        for g in guests:
            lines.append(f"link add {g.tap} type veth peer name eth0 netns {g.netns} "
                         f"address {g.mac}")
            lines.append(f"link set {g.tap} up")
            if static_neighbour:
                lines.append(f"neigh replace {g.ip} lladdr {g.mac} dev {g.tap} nud permanent")
            if local_address:
                lines.append(f"addr add 169.254.169.254/32 dev {g.tap}")
                lines.append(f"route add {g.ip}/32 dev {g.tap}")
        _batch(lines, self.topo.node)
        for g in guests:
            _batch(guest_side(g.ip, static_neighbour), g.netns)

    def close(self) -> None:
        if self._namespaces:
            subprocess.run(["ip", "-force", "-batch", "-"], check=False, timeout=600,
                           input="\n".join(f"netns del {n}" for n in self._namespaces) + "\n",
                           capture_output=True, text=True)
        # Whatever the batch missed (it stops at nothing with -force, but be sure).
        for netns in self._namespaces:
            sh(["ip", "netns", "del", netns], check=False)
        self._namespaces.clear()
        self.guests.clear()


def guest_side(ip: str, static_neighbour: bool) -> list[str]:
    """``ip -batch`` lines that configure eth0 inside a guest namespace."""
    lines = ["link set eth0 up", f"addr add {ip}/32 dev eth0",
             "route add 169.254.169.254 dev eth0"]
    if static_neighbour:
        # Skips ARP: measures the daemon, not the guest's ARP retry timer.
        lines.append(f"neigh replace 169.254.169.254 lladdr {ARP_MAC} dev eth0 nud permanent")
    return lines
