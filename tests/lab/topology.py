"""A "compute node" network namespace with guests attached by veth pairs,
real tap devices or bridge ports: the topology every datapath test and the
bench build on. ``Topology.close()`` (the ``topology`` fixture calls it)
removes every namespace and helper process, also when the test fails;
traffic only ever goes between namespaces made here.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.lab.netns import PYTHON, REPO, ifindex, sh, suffix
from tests.lab.rpc import NetnsRpc, readline, stderr_tail, stop


@dataclass
class Guest:
    """A guest: its own namespace, ``ifname`` inside it, ``tap`` in the node."""

    netns: str
    tap: str
    ifname: str
    ip: str  # with prefix length, e.g. 10.0.0.2/24
    route: str  # "onlink" (ip route add 169.254.169.254 dev eth0) or "gateway"
    gateway: str | None
    kind: str  # "veth" or "tap"
    bridge: str | None = None  # the node's Linux bridge the tap is a port of

    def run(self, args: Sequence[str], *, timeout: float = 15.0,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        return sh(args, netns=self.netns, timeout=timeout, check=check)

    def curl(self, url: str, *extra: str, max_time: float = 3.0
             ) -> subprocess.CompletedProcess[str]:
        """curl with ``-w`` printing ``\\n<code> <seconds>`` after the body."""
        return self.run(["curl", "-sS", "--max-time", str(max_time), "-w",
                         "\n%{http_code} %{time_total}", *extra, url],
                        timeout=max_time + 5)


@dataclass
class Topology:
    """A node namespace and its guests; ``close()`` removes everything."""

    prefix: str = field(default_factory=lambda: "t" + suffix())
    node: str = ""
    guests: list[Guest] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _count: int = 0

    def __post_init__(self) -> None:
        self.node = self.add_netns("n")

    def add_netns(self, role: str) -> str:
        name = f"{self.prefix}{role}{len(self._namespaces)}"
        sh(["ip", "netns", "add", name])
        self._namespaces.append(name)
        sh(["ip", "link", "set", "lo", "up"], netns=name)
        return name

    def tap_name(self) -> str:
        self._count += 1
        return f"mdtap{self.prefix[1:]}{self._count}"[:15]

    def add_bridge(self, mac: str | None = "02:b0:00:00:00:01") -> str:
        """A Linux bridge in the node namespace (gone with the namespace).
        ``mac`` gives it an address of its own, as libvirt does; None lets it
        adopt its lowest port's MAC, as a bare ``ip link add type bridge`` does."""
        self._count += 1
        name = f"br{self.prefix[1:]}{self._count}"[:15]
        sh(["ip", "link", "add", name, "type", "bridge"], netns=self.node)
        if mac:
            sh(["ip", "link", "set", name, "address", mac], netns=self.node)
        sh(["ip", "link", "set", name, "up"], netns=self.node)
        return name

    def add_guest(self, *, ip: str = "10.0.0.2/24", mac: str | None = None,
                  route: str = "onlink", gateway: str = "10.0.0.1",
                  kind: str = "veth", tap: str | None = None,
                  bridge: str | None = None, index: int | None = None) -> Guest:
        """A guest namespace wired to the node by a veth pair (host end = the
        "tap") or by a real tap device whose frames a pump process carries to
        a tap inside the guest namespace. ``route="gateway"`` gives the guest
        a default route via ``gateway`` and puts ``gateway/32`` on the host
        end, so the host answers ARP for it (as a routed-tap setup does).
        ``bridge`` (from ``add_bridge``) makes the tap a port of that bridge
        instead; the gateway address then goes on the bridge, with the
        guest's prefix length. ``index`` picks the host end's ifindex (veth)."""
        if route not in ("onlink", "gateway"):
            raise ValueError(route)
        netns = self.add_netns("g")
        tap = tap or self.tap_name()
        ifname = "eth0"
        if kind == "veth":
            at = ["index", str(index)] if index is not None else []
            sh(["ip", "link", "add", tap, *at, "type", "veth", "peer", "name", ifname,
                "netns", netns], netns=self.node)
        elif kind == "tap":
            self._start_pump(tap, netns, ifname)
        else:
            raise ValueError(kind)
        if mac:
            sh(["ip", "link", "set", ifname, "address", mac], netns=netns)
        if bridge:
            sh(["ip", "link", "set", tap, "master", bridge], netns=self.node)
        sh(["ip", "link", "set", tap, "up"], netns=self.node)
        sh(["ip", "link", "set", ifname, "up"], netns=netns)
        sh(["ip", "addr", "add", ip, "dev", ifname], netns=netns)
        if route == "onlink":
            sh(["ip", "route", "add", "169.254.169.254", "dev", ifname], netns=netns)
        else:
            self._add_gateway(tap, bridge, gateway, ip)
            sh(["ip", "route", "add", "default", "via", gateway, "dev", ifname, "onlink"],
               netns=netns)
        guest = Guest(netns, tap, ifname, ip, route, gateway if route == "gateway" else None,
                      kind, bridge)
        self.guests.append(guest)
        return guest

    def _add_gateway(self, tap: str, bridge: str | None, gateway: str, ip: str) -> None:
        if bridge:  # shared by the bridge's guests: add once
            prefix = ip.partition("/")[2] or "32"
            sh(["ip", "addr", "replace", f"{gateway}/{prefix}", "dev", bridge],
               netns=self.node)
        else:
            sh(["ip", "addr", "add", f"{gateway}/32", "dev", tap], netns=self.node)

    def _start_pump(self, tap: str, netns: str, ifname: str) -> None:
        proc = subprocess.Popen(
            [PYTHON, "-m", "tests.lab", "pump", self.node, tap, netns, ifname],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._procs.append(proc)
        line = readline(proc, 10.0)
        if line.strip() != "ready":
            raise RuntimeError(f"tap pump failed: {line} {stderr_tail(proc)}")

    def delete_link(self, ifname: str) -> None:
        sh(["ip", "link", "del", ifname], netns=self.node)

    def recreate_veth(self, guest: Guest) -> int:
        """Delete the guest's host end and make a new one with the same name
        (a new ifindex); returns the new ifindex."""
        sh(["ip", "link", "del", guest.tap], netns=self.node)
        sh(["ip", "link", "add", guest.tap, "type", "veth", "peer", "name", guest.ifname,
            "netns", guest.netns], netns=self.node)
        if guest.bridge:
            sh(["ip", "link", "set", guest.tap, "master", guest.bridge], netns=self.node)
        sh(["ip", "link", "set", guest.tap, "up"], netns=self.node)
        sh(["ip", "link", "set", guest.ifname, "up"], netns=guest.netns)
        sh(["ip", "addr", "add", guest.ip, "dev", guest.ifname], netns=guest.netns)
        if guest.route == "onlink":
            sh(["ip", "route", "add", "169.254.169.254", "dev", guest.ifname], netns=guest.netns)
        else:
            self._add_gateway(guest.tap, guest.bridge, str(guest.gateway), guest.ip)
            sh(["ip", "route", "add", "default", "via", str(guest.gateway), "dev",
                guest.ifname, "onlink"], netns=guest.netns)
        return ifindex(self.node, guest.tap)

    def rpc(self, target: str, *args: Any, netns: str | None = None) -> NetnsRpc:
        """A Python object made by ``target`` ("module:factory") in ``netns``
        (the node by default); closed with the topology."""
        r = NetnsRpc(netns or self.node, target, *args)
        self._procs.append(r.proc)
        return r

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop(proc)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            sh(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()
