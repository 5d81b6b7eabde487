"""End to end, on both datapaths: guests are kept away from the node's own
services (nft's ``host_input`` chain, the host input filter of
``interceptor/node/datapath/bpf/tap_ingress.c``), on routed and bridged
taps, while forwarded and guest-to-guest traffic (broadcast included) and
the host's own connections to guests keep working. Same node agent as
test_datapath.py (datapath_support.py)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.e2e.datapath_support import Nodes, fetch, steer
from tests.lab import Guest, NetnsRpc, Topology, sh, unique

pytestmark = [pytest.mark.root, pytest.mark.e2e]

SERVICE = "tests.e2e.test_datapath_host_input:CountingService"
PORT = 7070  # TCP and UDP, on every address (IPv4 and IPv6) of its namespace
UPLINK = "192.0.2.1"  # the node's address on another interface
GW6 = "2001:db8:1::1"  # the node's global IPv6 address on the tap
LL = "fe80::1"  # the node's link-local address on the tap


class CountingService:
    """TCP and UDP on ``port`` of every address (dual stack), counting what
    arrives and from where; runs in a namespace via NetnsRpc."""

    def __init__(self, port: int) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._tcp = socket.create_server(("::", port), family=socket.AF_INET6,
                                         dualstack_ipv6=True)
        self._udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self._udp.bind(("::", port))
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._receive, daemon=True).start()

    def _note(self, what: str) -> None:
        with self._lock:
            self.seen.append(what.replace("::ffff:", ""))  # IPv4-mapped: plain IPv4

    def _accept(self) -> None:
        while True:
            conn, peer = self._tcp.accept()
            conn.sendall(b"hello\n")
            self._note(f"tcp {peer[0]}")
            conn.close()

    def _receive(self) -> None:
        while True:
            data, peer = self._udp.recvfrom(2048)
            self._note(f"udp {peer[0]} {data.decode(errors='replace')}")

    def received(self) -> list[str]:
        with self._lock:
            return list(self.seen)

    def talk(self, addr: str, port: int) -> str:
        """From this namespace: connect to a guest's service and read."""
        with socket.create_connection((addr, port), timeout=2) as s:
            return s.recv(64).decode()

    def close(self) -> None:
        self._tcp.close()
        self._udp.close()


# Guest side: try TCP (connect, bounded) and UDP (one datagram) to each target.
PROBE = """
import json, socket, sys
out = {}
port = int(sys.argv[2])
for addr in json.loads(sys.argv[1]):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    dst = (addr, port, 0, socket.if_nametoindex("eth0")) if addr.startswith("fe80") \\
        else (addr, port)
    t = socket.socket(fam, socket.SOCK_STREAM); t.settimeout(0.7)
    try:
        t.connect(dst); out[addr] = t.recv(16).decode()
    except OSError as e:
        out[addr] = type(e).__name__
    finally:
        t.close()
    u = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        u.sendto(addr.encode(), dst)
    except OSError:
        pass
    u.close()
print(json.dumps(out))
"""


# Guest side: one ICMP echo, True if answered within 2 s (no ping binary here).
ECHO = """
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
body = struct.pack("!BBHHH", 8, 0, 0, 0x1d, 1) + b"interceptor!"  # even length
words = sum(struct.unpack("!%dH" % (len(body) // 2), body))
words = (words & 0xFFFF) + (words >> 16)
body = body[:2] + struct.pack("!H", ~(words + (words >> 16)) & 0xFFFF) + body[4:]
s.sendto(body, (sys.argv[1], 0))
end = time.monotonic() + 2
while time.monotonic() < end:
    data, peer = s.recvfrom(2048)
    ihl = (data[0] & 15) * 4
    if peer[0] == sys.argv[1] and data[ihl] == 0:
        print("reply")
        break
"""


def echo(guest: Guest, addr: str) -> bool:
    r = guest.run(["python3", "-c", ECHO, addr], timeout=10)
    assert r.returncode == 0 or "timed out" in r.stderr, r.stderr
    return r.stdout.strip() == "reply"


def probe(guest: Guest, targets: list[str]) -> dict[str, str]:
    r = guest.run(["python3", "-c", PROBE, json.dumps(targets), str(PORT)],
                  timeout=30)
    assert r.returncode == 0, r.stderr
    result: dict[str, str] = json.loads(r.stdout)
    return result


def routed_node(topology: Topology) -> None:
    """The node namespace as a router: forwarding on, an uplink address."""
    node = topology.node
    for cmd in ("sysctl -qw net.ipv4.conf.all.forwarding=1",
                "sysctl -qw net.ipv6.conf.all.forwarding=1",
                "ip link add hup0 type veth peer name hup1",
                "ip link set hup0 up", "ip link set hup1 up",
                f"ip addr add {UPLINK}/24 dev hup0"):
        sh(cmd.split(), netns=node)


def route_back(topology: Topology, *guests: Guest) -> None:
    """The node's route to each guest's address through its tap, so that a
    connection a guest opens to the node could complete if it were let in."""
    for g in guests:
        sh(["ip", "route", "add", g.ip.split("/")[0], "dev", g.tap], netns=topology.node)


def dual_stack(topology: Topology, guest: Guest, host6: str, guest6: str) -> None:
    """IPv6 on a gateway-routed guest: the node's addresses on the tap."""
    for addr in (f"{host6}/64", f"{LL}/64"):
        sh(["ip", "-6", "addr", "add", addr, "dev", guest.tap, "nodad"], netns=topology.node)
    guest.run(["ip", "-6", "addr", "add", f"{guest6}/64", "dev", "eth0", "nodad"], check=True)
    guest.run(["ip", "-6", "route", "add", "default", "via", LL, "dev", "eth0"], check=True)


@pytest.fixture
def node(nodes: Nodes) -> NetnsRpc:
    return nodes.start()


@pytest.fixture
def allowing_node(nodes: Nodes) -> NetnsRpc:
    return nodes.start(input_allow_tcp=[PORT], input_allow_udp=[PORT])


def drops(node: NetnsRpc, tap: str) -> int:
    """Host-input drops of the tap's guest (with nft, through a bridge: all
    bridged guests', one rule counter)."""
    return int(node.call("input_drops", tap))


def tap_drops(node: NetnsRpc, tap: str) -> int:
    """Host-input drops counted on the tap itself."""
    return int(node.call("counters")[tap]["host_input_dropped"])


def service(topology: Topology, netns: str | None = None) -> NetnsRpc:
    return topology.rpc(SERVICE, PORT, netns=netns)


def test_guests_reach_no_host_service(topology: Topology, node: NetnsRpc) -> None:
    """A steered and a refused guest, each trying TCP and UDP to the tap's
    addresses (IPv4, IPv6 global and link-local), another interface's address
    and 169.254.169.254 on another port: nothing arrives. An unmanaged guest
    on the same node does reach the service: the probe would see a leak."""
    routed_node(topology)
    on = topology.add_guest(route="gateway")
    off = topology.add_guest(ip="10.0.1.2/24", route="gateway", gateway="10.0.1.1")
    # Not a managed name: no datapath touches it.
    control = topology.add_guest(ip="10.0.2.2/24", route="gateway", gateway="10.0.2.1",
                                 tap=unique("ctl"))
    dual_stack(topology, on, GW6, "2001:db8:1::2")
    route_back(topology, on, off, control)
    steer(node, on, refused=(off,))
    svc = service(topology)
    for guest in (on, off):
        targets = [str(guest.gateway), UPLINK, "169.254.169.254"]
        if guest is on:
            targets += [GW6, LL]
        result = probe(guest, targets)
        assert all(v in ("TimeoutError", "ConnectionRefusedError") for v in result.values()), \
            result
    assert svc.call("received") == []
    assert drops(node, on.tap) >= 8  # TCP and UDP, 4 addresses
    assert drops(node, off.tap) >= 4
    # The metadata service itself still answers the steered guest.
    assert fetch(on)[0] == 200
    # Control: on a tap that is not managed, a guest reaches the service.
    assert probe(control, [str(control.gateway)]) == {str(control.gateway): "hello\n"}
    assert sorted(svc.call("received")) == ["tcp 10.0.2.2", "udp 10.0.2.2 10.0.2.1"]


def test_allowed_ports_reach_the_host(topology: Topology, allowing_node: NetnsRpc) -> None:
    routed_node(topology)
    guest = topology.add_guest(route="gateway")
    dual_stack(topology, guest, GW6, "2001:db8:1::2")
    route_back(topology, guest)
    steer(allowing_node, guest)
    svc = service(topology)
    result = probe(guest, [str(guest.gateway), UPLINK, GW6])
    assert result == {str(guest.gateway): "hello\n", UPLINK: "hello\n", GW6: "hello\n"}
    got = sorted(svc.call("received"))
    assert got == sorted(["tcp 10.0.0.2", "udp 10.0.0.2 10.0.0.1", "tcp 10.0.0.2",
                          "udp 10.0.0.2 192.0.2.1", "tcp 2001:db8:1::2",
                          "udp 2001:db8:1::2 2001:db8:1::1"]), got
    assert drops(allowing_node, guest.tap) == 0


def test_forwarded_and_host_initiated_traffic_passes(topology: Topology, node: NetnsRpc) -> None:
    """Guest to guest through the node (IPv4 and IPv6), and the node's own
    connection to a guest (its replies come in on the tap, to a node
    address): all untouched, nothing counted as host input."""
    routed_node(topology)
    a = topology.add_guest(route="gateway")
    b = topology.add_guest(ip="10.0.1.2/24", route="gateway", gateway="10.0.1.1")
    dual_stack(topology, a, "2001:db8:1::1", "2001:db8:1::2")
    dual_stack(topology, b, "2001:db8:2::1", "2001:db8:2::2")
    route_back(topology, a, b)
    steer(node, a, b)
    in_b = service(topology, netns=b.netns)
    assert probe(a, ["10.0.1.2", "2001:db8:2::2"]) == {"10.0.1.2": "hello\n",
                                                        "2001:db8:2::2": "hello\n"}
    assert sorted(in_b.call("received")) == sorted([
        "tcp 10.0.0.2", "udp 10.0.0.2 10.0.1.2", "tcp 2001:db8:1::2",
        "udp 2001:db8:1::2 2001:db8:2::2"])
    assert echo(a, "10.0.1.2") and echo(a, str(a.gateway))  # ICMP: forwarded, and to the node
    # The node opens a connection to guest b (its SYN-ACK and data come back
    # in on b's tap, to the node's address 10.0.1.1).
    in_node = service(topology)
    assert in_node.call("talk", "10.0.1.2", PORT) == "hello\n"
    assert in_node.call("talk", "2001:db8:2::2", PORT) == "hello\n"
    assert drops(node, a.tap) == 0 and drops(node, b.tap) == 0


# -- bridged taps: what the bridge passes up to the node is filtered too ----------------

BRIDGE_GW = "10.0.0.1"  # the bridge's address (the bridged guests' gateway)


# Guest side: one UDP datagram to each broadcast address given (SO_BROADCAST).
BROADCAST = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for addr in sys.argv[2:]:
    u.sendto(("bcast " + addr).encode(), (addr, int(sys.argv[1])))
u.close()
"""


def broadcast(guest: Guest, *addrs: str) -> None:
    r = guest.run(["python3", "-c", BROADCAST, str(PORT), *addrs], timeout=10)
    assert r.returncode == 0, r.stderr


def await_received(svc: NetnsRpc, want: list[str], timeout: float = 5.0) -> list[str]:
    """What ``svc`` has received once ``want`` is all in (or the time is up)."""
    deadline = time.monotonic() + timeout
    got: list[str] = svc.call("received")
    while not all(w in got for w in want) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for an event, not timing one
        got = svc.call("received")
    return got


def bridged_guests(topology: Topology, count: int) -> list[Guest]:
    """Guests 10.0.0.2.. on one bridge (its own MAC, 10.0.0.1/24, GW6/64 and
    LL on it), the first one dual stack."""
    bridge = topology.add_bridge()
    guests = [topology.add_guest(ip=f"10.0.0.{i + 2}/24", route="gateway", gateway=BRIDGE_GW,
                                 bridge=bridge) for i in range(count)]
    for addr in (f"{GW6}/64", f"{LL}/64"):
        sh(["ip", "-6", "addr", "add", addr, "dev", bridge, "nodad"], netns=topology.node)
    guests[0].run(["ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"],
                  check=True)
    return guests


def steer_bridged(node: NetnsRpc, *guests: Guest, refused: tuple[Guest, ...] = ()) -> None:
    node.call("fwmark_accept", 1)
    taps = {g.tap: {"steer": True, "bridge": g.bridge} for g in guests}
    taps.update({g.tap: {"steer": False, "bridge": g.bridge} for g in refused})
    node.call("sync", taps)
    for g in guests:
        node.call("listen", g.tap)


def test_bridged_guests_reach_no_host_service(topology: Topology, node: NetnsRpc) -> None:
    """Guests on a bridge, steered and refused: TCP and UDP to the bridge's
    addresses (IPv4, IPv6 global and link-local), another interface's and
    the metadata address on another port reach nothing; broadcast reaches the
    other guest but not the node. Guest to guest, ICMP to the node, the
    node's own connections to a guest and the metadata service work."""
    routed_node(topology)
    a, b, refused = bridged_guests(topology, 3)
    steer_bridged(node, a, b, refused=(refused,))
    svc = service(topology)
    in_b = service(topology, netns=b.netns)
    for guest in (a, refused):
        targets = [BRIDGE_GW, UPLINK, "169.254.169.254"]
        if guest is a:
            targets += [GW6, LL]
        result = probe(guest, targets)
        assert all(v in ("TimeoutError", "ConnectionRefusedError") for v in result.values()), \
            result
    # Guest to guest over the bridge (TCP and UDP), then broadcast: b hears
    # it, the node does not.
    assert probe(a, ["10.0.0.3"]) == {"10.0.0.3": "hello\n"}
    broadcast(a, "10.0.0.255", "255.255.255.255")
    want_b = ["tcp 10.0.0.2", "udp 10.0.0.2 10.0.0.3", "udp 10.0.0.2 bcast 10.0.0.255",
              "udp 10.0.0.2 bcast 255.255.255.255"]
    assert sorted(await_received(in_b, want_b)) == sorted(want_b)
    assert svc.call("received") == []
    assert drops(node, a.tap) >= 10  # 4 node addresses, 2 broadcasts
    assert drops(node, refused.tap) >= 4
    assert tap_drops(node, b.tap) == 0
    assert echo(a, BRIDGE_GW) and echo(a, "10.0.0.3")
    # The node opens connections to a bridged guest: its replies come in
    # through the bridge, to the bridge's address.
    assert svc.call("talk", "10.0.0.3", PORT) == "hello\n"
    assert fetch(a)[0] == 200 and fetch(b)[0] == 200


def test_bridged_allowed_ports_reach_the_host(topology: Topology,
                                              allowing_node: NetnsRpc) -> None:
    routed_node(topology)
    a, b = bridged_guests(topology, 2)
    steer_bridged(allowing_node, a, b)
    svc = service(topology)
    result = probe(a, [BRIDGE_GW, UPLINK, GW6])
    assert result == {BRIDGE_GW: "hello\n", UPLINK: "hello\n", GW6: "hello\n"}
    broadcast(a, "10.0.0.255")
    want = ["tcp 10.0.0.2", "udp 10.0.0.2 10.0.0.1", "tcp 10.0.0.2",
            "udp 10.0.0.2 192.0.2.1", "tcp 2001:db8:1::2",
            "udp 2001:db8:1::2 2001:db8:1::1", "udp 10.0.0.2 bcast 10.0.0.255"]
    got = await_received(svc, want)
    assert sorted(got) == sorted(want), got
    assert drops(allowing_node, a.tap) == 0
