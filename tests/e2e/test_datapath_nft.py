"""End to end through the nftables datapath: guests in namespaces, the
datapath and per-tap transparent listeners in a "node" namespace, and a tiny
HTTP server on the listeners that answers with the tap it accepted on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.netns import Guest, Topology, ifindex, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

MD = "http://169.254.169.254/latest/meta-data/"
FAST_S = 0.5


# -- runs inside the node namespace (via NetnsRpc) ------------------------------


class _Answer(asyncio.Protocol):
    """Answers any request with "<tap> <peer ip>:<port> <mark>" and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from interceptor.node.datapath.listeners import listener_device, socket_mark
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        self.transport = transport
        self.body = f"{listener_device(sock)} {peer[0]}:{peer[1]} {socket_mark(sock):#x}"

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data:
            return
        body = self.body.encode()
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close"
                             b"\r\n\r\n%s" % (len(body), body))
        self.transport.close()


class NftNode:
    """The datapath, listeners and a test server, driven from the test."""

    def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        from interceptor.node.datapath.nft import NftConfig, NftDatapath
        knobs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                 for k, v in (overrides or {}).items()}
        self.dp = NftDatapath(NftConfig(**knobs))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: dict[str, asyncio.Server] = {}
        self.accepted: dict[str, int] = {}
        self.datagrams: list[asyncio.DatagramTransport] = []

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def install(self) -> None:
        self.dp.install()

    def installed(self) -> bool:
        return self.dp.installed()

    def remove(self) -> None:
        self.dp.remove()

    def rule_counts(self) -> dict[str, int]:
        return self.dp.rule_counts()

    def ingress_devices(self) -> list[str]:
        return sorted(self.dp.ingress_devices())

    def sync(self, taps: dict[str, dict[str, Any]]) -> None:
        """``{ifname: {"steer": bool, "ifindex": int (default: current)}}``."""
        from interceptor.node.datapath.base import TapState
        state = {}
        for name, spec in taps.items():
            idx = spec.get("ifindex") or int(
                Path(f"/sys/class/net/{name}/ifindex").read_text())
            steer = bool(spec.get("steer", True))
            state[name] = TapState(name, idx, f"i-{name}" if steer else None, steer,
                                   bridge=spec.get("bridge"))
        self.dp.sync(state)

    def unsteerable(self) -> dict[str, str]:
        return self.dp.unsteerable()

    def counters(self) -> dict[str, dict[str, Any]]:
        return {k: dataclasses.asdict(v) for k, v in self.dp.counters().items()}

    def listen(self, ifname: str) -> None:
        from interceptor.node.datapath.listeners import open_tap_listener
        self.unlisten(ifname)
        sock = open_tap_listener(ifname)

        async def start() -> asyncio.Server:
            return await self.loop.create_server(_Answer, sock=sock)
        self.servers[ifname] = self._run(start())

    def unlisten(self, ifname: str) -> None:
        server = self.servers.pop(ifname, None)
        if server is not None:
            server.close()
            self._run(server.wait_closed())

    def host_service(self, address: str, port: int) -> None:
        """A plain TCP server on the node (a "host service") counting accepts."""
        key = f"{address}:{port}"
        self.accepted[key] = 0

        def handler(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted[key] += 1
            w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost")
            w.close()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(handler, address, port)
        self.servers[key] = self._run(start())

    def host_accepts(self, key: str) -> int:
        return self.accepted[key]

    def udp_service(self, address: str, port: int) -> None:
        """A UDP socket on the node counting datagrams (key "udp <addr>:<port>")."""
        key = f"udp {address}:{port}"
        self.accepted[key] = 0
        accepted = self.accepted

        class Count(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                accepted[key] += 1

        import socket
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:  # as asyncio's TCP servers: "::" is IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))

        async def start() -> asyncio.DatagramTransport:
            transport, _ = await self.loop.create_datagram_endpoint(Count, sock=sock)
            return transport
        self.datagrams.append(self._run(start()))

    def watch(self) -> dict[str, int]:
        """Start a LinkWatcher; returns its first state {ifname: ifindex}."""
        from interceptor.node.datapath.links import LinkWatcher
        self.changed = asyncio.Event()
        self.history: list[dict[str, int]] = []

        def on_change(links: dict[str, Any]) -> None:
            self.history.append({n: li.ifindex for n, li in links.items()})
            self.changed.set()

        async def start() -> dict[str, int]:
            self.changed = asyncio.Event()
            self.watcher = LinkWatcher(on_change, resync_interval=60)
            first = await self.watcher.start()
            return {n: li.ifindex for n, li in first.items()}
        return dict(self._run(start()))

    def wait_links(self, want: dict[str, int | None], timeout: float) -> list[dict[str, int]]:
        """Wait until the watcher's latest state has ``want`` (None = absent)."""
        async def wait() -> list[dict[str, int]]:
            async def until() -> None:
                while True:
                    last = self.history[-1] if self.history else {}
                    if all(last.get(n) == i for n, i in want.items()):
                        return
                    self.changed.clear()
                    await self.changed.wait()
            await asyncio.wait_for(until(), timeout)
            return self.history
        return list(self._run(wait()))

    def unwatch(self) -> int:
        self._run(self.watcher.stop())
        return self.watcher.rounds

    def listen_error(self, ifname: str) -> str:
        from interceptor.node.datapath.listeners import open_tap_listener
        try:
            open_tap_listener(ifname).close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    def fwmark_accept(self, value: int) -> None:
        with open("/proc/sys/net/ipv4/tcp_fwmark_accept", "w") as f:
            f.write(str(value))

    def close(self) -> None:
        if getattr(self, "watcher", None) is not None:
            self._run(self.watcher.stop())
        for name in list(self.servers):
            self.unlisten(name)
        for transport in self.datagrams:
            self.loop.call_soon_threadsafe(transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- helpers for the test side ---------------------------------------------------


def body_and_time(proc: subprocess.CompletedProcess[str]) -> tuple[int, str, float]:
    body, _, tail = proc.stdout.rpartition("\n")
    code, _, seconds = tail.partition(" ")
    return int(code or 0), body, float(seconds or 0)


def fetch(guest: Guest, *extra: str, max_time: float = 3.0) -> tuple[int, str, float]:
    return body_and_time(guest.curl(MD, *extra, max_time=max_time))


def element_count(topology: Topology, family: str, kind: str, name: str) -> int:
    out = sh(["nft", "-j", "list", kind, family, "interceptor", name], netns=topology.node).stdout
    for item in json.loads(out)["nftables"]:
        if kind in item:
            return len(item[kind].get("elem", []))
    raise AssertionError(f"{family} {kind} {name} missing")


def service_in(topology: Topology, guest: Guest, tcp: int, udp: int) -> Any:
    """A TCP and a UDP socket on every address of ``guest``, counting what arrives."""
    return topology.rpc("tests.e2e.hostservice:HostService", tcp, udp, netns=guest.netns)


def wait_count(read: Any, want: int, timeout: float = 5.0) -> int:
    """Poll ``read()`` until it reaches ``want`` or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while value < want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return int(value)


def send_udp(guest: Guest, address: str, port: int) -> None:
    family = "AF_INET6" if ":" in address else "AF_INET"
    r = guest.run(["python3", "-c", f"import socket; s=socket.socket(socket.{family}, "
                   f"socket.SOCK_DGRAM); s.sendto(b'x', ({address!r}, {port}))"])
    assert r.returncode == 0, r.stderr


def wait_no_tentative(topology: Topology, *guests: Guest) -> None:
    """Wait (bounded) for IPv6 duplicate address detection on both ends."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            sh(["ip", "-6", "addr", "show", "tentative"], netns=topology.node).stdout
            or any(g.run(["ip", "-6", "addr", "show", "tentative"]).stdout for g in guests)):
        time.sleep(0.1)


@pytest.fixture
def node(topology: Topology) -> Any:
    agent = topology.rpc("tests.e2e.test_datapath_nft:NftNode")
    agent.call("install")
    return agent


def steer(node: Any, *guests: Guest, unbound: tuple[Guest, ...] = ()) -> None:
    taps = {g.tap: {"steer": True} for g in guests}
    taps.update({g.tap: {"steer": False} for g in unbound})
    node.call("sync", taps)
    for g in guests:
        node.call("listen", g.tap)


# -- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("route", ["onlink", "gateway"])
@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_guest_reads_through_its_tap(topology: Topology, node: Any, route: str,
                                     kind: str) -> None:
    guest = topology.add_guest(route=route, kind=kind)
    steer(node, guest)
    code, body, seconds = fetch(guest)
    assert code == 200, body
    tap, peer, _mark = body.split()
    assert tap == guest.tap
    assert peer.startswith("10.0.0.2:")
    assert seconds < FAST_S
    counters = node.call("counters")[guest.tap]
    assert counters["steered_packets"] >= 3
    if route == "onlink":
        assert counters["arp_replies"] >= 1
    neigh = guest.run(["ip", "neigh", "show", "169.254.169.254"]).stdout
    if route == "onlink":
        assert "02:a9:fe:a9:fe:00" in neigh


def test_same_ip_same_port_concurrently(topology: Topology, node: Any) -> None:
    a = topology.add_guest(ip="10.0.0.2/24")
    b = topology.add_guest(ip="10.0.0.2/24", route="gateway")
    steer(node, a, b)
    procs = [subprocess.Popen(
        ["ip", "netns", "exec", g.netns, "curl", "-sS", "--max-time", "3", "--local-port",
         "40123", "-w", "\n%{http_code} %{time_total}", MD],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in (a, b)]
    start = time.monotonic()
    outs = [p.communicate(timeout=10)[0] for p in procs]
    wall = time.monotonic() - start
    for guest, out in zip((a, b), outs, strict=True):
        code, body, seconds = body_and_time(subprocess.CompletedProcess([], 0, out, ""))
        assert code == 200, out
        assert body.split()[0] == guest.tap
        assert body.split()[1] == "10.0.0.2:40123"
        assert seconds < FAST_S  # no ~1 s SYN retransmit
    assert wall < 1.5


def test_spoofed_source_lands_on_own_tap(topology: Topology, node: Any) -> None:
    victim = topology.add_guest(ip="10.0.0.2/24", mac="02:00:00:00:00:02")
    spoofer = topology.add_guest(ip="10.0.0.2/24", mac="02:00:00:00:00:02", route="gateway")
    steer(node, victim, spoofer)
    for guest in (spoofer, victim):
        code, body, _ = fetch(guest)
        assert code == 200
        assert body.split()[0] == guest.tap


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_unbound_tap_fails_fast_and_gets_no_arp(topology: Topology, node: Any,
                                                kind: str) -> None:
    bound = topology.add_guest()
    gw = topology.add_guest(route="gateway", kind=kind)
    onlink = topology.add_guest()
    steer(node, bound, unbound=(gw, onlink))
    proc = gw.curl(MD, max_time=3)
    assert proc.returncode == 7, proc.stderr  # connection refused
    # curl's own clock: the wall time of `ip netns exec` grows with the
    # number of namespaces on the machine (other tests' too).
    assert body_and_time(proc)[2] < FAST_S
    # On-link guest of an unbound tap: nobody answers ARP for the address.
    proc = onlink.curl(MD, max_time=1)
    assert proc.returncode != 0
    assert "02:a9:fe:a9:fe:00" not in onlink.run(["ip", "neigh"]).stdout
    counters = node.call("counters")
    assert counters[gw.tap]["refused_packets"] >= 1
    assert counters[onlink.tap]["arp_replies"] == 0
    # The bound guest is unaffected.
    assert fetch(bound)[0] == 200


def test_unsynced_tap_fails_closed(topology: Topology, node: Any) -> None:
    known = topology.add_guest()
    stranger = topology.add_guest(route="gateway")  # matches mdtap*, never synced
    steer(node, known)
    node.call("listen", stranger.tap)  # even with a listener it must not be served
    proc = stranger.curl(MD, max_time=1)
    assert proc.returncode != 0
    assert "200" not in proc.stdout


def test_guest_cannot_reach_other_host_services(topology: Topology, node: Any) -> None:
    guest = topology.add_guest(route="gateway")  # 10.0.0.1 on the tap
    steer(node, guest)
    sh(["ip", "addr", "add", "192.0.2.7/32", "dev", "lo"], netns=topology.node)
    for addr, port in (("0.0.0.0", 8080), ("127.0.0.1", 8081), ("0.0.0.0", 81)):
        node.call("host_service", addr, port)
    # Positive control: the services answer on the node itself.
    assert "host" in sh(["curl", "-sS", "--max-time", "2", "http://192.0.2.7:8080/"],
                        netns=topology.node).stdout
    attempts = ["http://169.254.169.254:8080/", "http://169.254.169.254:81/",
                "http://10.0.0.1:8080/", "http://10.0.0.1:80/", "http://10.0.0.1:81/",
                "http://192.0.2.7:8080/", "http://192.0.2.7:81/"]
    for url in attempts:
        proc = guest.curl(url, max_time=1)
        assert proc.returncode != 0, (url, proc.stdout)
    assert node.call("host_accepts", "0.0.0.0:8080") == 1  # only the control
    assert node.call("host_accepts", "0.0.0.0:81") == 0
    assert node.call("host_accepts", "127.0.0.1:8081") == 0
    assert node.call("counters")[guest.tap]["extra"]["host_input_dropped"] >= len(attempts) - 2
    # Metadata still works, and ICMP to the gateway is allowed.
    assert fetch(guest)[0] == 200


def test_recreated_tap_is_not_served_until_synced(topology: Topology, node: Any) -> None:
    guest = topology.add_guest(route="gateway")
    steer(node, guest)
    assert fetch(guest)[0] == 200
    old = ifindex(topology.node, guest.tap)
    new = topology.recreate_veth(guest)
    assert new != old
    node.call("listen", guest.tap)  # a listener on the new device, not yet synced
    proc = guest.curl(MD, max_time=1)
    assert proc.returncode != 0 and "200" not in proc.stdout, proc.stdout
    node.call("sync", {guest.tap: {"steer": True, "ifindex": new}})
    code, body, _ = fetch(guest)
    assert code == 200 and body.split()[0] == guest.tap


def test_replies_do_not_loop_with_fwmark_accept(topology: Topology, node: Any) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    node.call("fwmark_accept", 1)
    code, body, seconds = fetch(guest)
    assert code == 200 and seconds < FAST_S
    mark = 0x4D000000 | ifindex(topology.node, guest.tap)
    assert body.split()[2] == f"{mark:#x}"  # the accepted socket inherited the mark


def test_remove_leaves_nothing(topology: Topology, node: Any) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    assert node.call("installed")
    node.call("remove")
    node.call("remove")  # twice is fine
    assert not node.call("installed")
    assert sh(["nft", "list", "ruleset"], netns=topology.node).stdout.strip() == ""
    rules = sh(["ip", "rule"], netns=topology.node).stdout.splitlines()
    assert len(rules) == 3, rules  # local, main, default
    assert sh(["ip", "route", "show", "table", "4711"], netns=topology.node).stdout == ""
    # And install after remove comes back to a working datapath.
    node.call("install")
    node.call("sync", {guest.tap: {"steer": True}})
    assert fetch(guest)[0] == 200


@pytest.mark.slow
def test_sync_1000_taps_changes_elements_only(topology: Topology, node: Any) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    base = node.call("rule_counts")
    per_shard = base.pop("netdev/tap_ingress_0")

    def assert_rules_per_chain_constant(n_taps: int) -> None:
        counts = node.call("rule_counts")
        shards = {k: v for k, v in counts.items() if k.startswith("netdev/tap_ingress_")}
        assert {k: v for k, v in counts.items() if k not in shards} == base
        assert set(shards.values()) == {per_shard}
        assert len(shards) == -(-n_taps // 200)  # one shard per 200 taps (not compacted)

    names = [f"tap{topology.prefix[1:]}k{i}" for i in range(1000)]
    batch = "".join(f"tuntap add mode tap name {n}\n" for n in names)
    sh(["ip", "-batch", "-"], netns=topology.node, input=batch, timeout=120)
    taps = {n: {"steer": i % 2 == 0} for i, n in enumerate(names)}
    taps[guest.tap] = {"steer": True}
    start = time.monotonic()
    node.call("sync", taps)
    first = time.monotonic() - start
    assert_rules_per_chain_constant(1001)
    assert len(node.call("ingress_devices")) == 1001
    assert element_count(topology, "inet", "map", "vm_mark") == 501
    assert element_count(topology, "inet", "set", "managed") == 1001
    assert element_count(topology, "netdev", "set", "steered") == 501
    # A small change is a small batch: drop 10 taps, flip 10 others.
    for n in names[:10]:
        del taps[n]
    for n in names[10:20]:
        taps[n] = {"steer": not taps[n]["steer"]}
    start = time.monotonic()
    node.call("sync", taps)
    second = time.monotonic() - start
    assert_rules_per_chain_constant(1001)  # the shards keep their places
    assert len(node.call("ingress_devices")) == 991
    assert element_count(topology, "inet", "set", "managed") == 991
    assert element_count(topology, "inet", "map", "vm_mark") == 501 - 5  # 5 removed, +/-5 flipped
    assert fetch(guest)[0] == 200
    print(f"sync 1000 taps: {first:.3f}s, incremental: {second:.3f}s")


def test_link_watcher_follows_tap_churn(topology: Topology, node: Any) -> None:
    first = node.call("watch")
    assert first == {}
    tap = topology.tap_name()
    sh(["ip", "tuntap", "add", "mode", "tap", "name", tap], netns=topology.node)
    old = ifindex(topology.node, tap)
    node.call("wait_links", {tap: old}, 5)
    sh(["ip", "link", "del", tap], netns=topology.node)
    sh(["ip", "tuntap", "add", "mode", "tap", "name", tap], netns=topology.node)
    new = ifindex(topology.node, tap)
    assert new != old
    history = node.call("wait_links", {tap: new}, 5)
    assert history[-1][tap] == new  # the consumer sees the new ifindex
    sh(["ip", "link", "add", "other0x", "type", "veth", "peer", "name", "other0y"],
       netns=topology.node)  # not a managed name: no change reported for it
    sh(["ip", "link", "del", tap], netns=topology.node)
    history = node.call("wait_links", {tap: None}, 5)
    assert all("other0x" not in h for h in history)
    assert node.call("unwatch") >= 3


def test_listener_on_missing_device_is_a_clear_error(topology: Topology, node: Any) -> None:
    assert node.call("listen_error", "nosuch0").startswith(
        "TapGoneError: listener: interface nosuch0 does not exist")
    guest = topology.add_guest()
    node.call("listen", guest.tap)
    err = node.call("listen_error", guest.tap)  # same address, port and device
    assert err.startswith("TapListenerError:") and "already bound" in err


GUEST_CONNECT = """
import socket, sys, time
n, hold = int(sys.argv[1]), sys.argv[2] == "hold"
ok = 0
socks = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(0.3)
    try:
        s.connect(("169.254.169.254", 80))
        ok += 1
        socks.append(s)
    except OSError:
        s.close()
    if not hold:
        for s in socks:
            s.close()
        socks = []
print(ok)
"""


def guest_connects(guest: Guest, n: int, hold: bool) -> int:
    out = guest.run(["python3", "-c", GUEST_CONNECT, str(n), "hold" if hold else "close"],
                    timeout=30, check=True).stdout
    return int(out)


def test_per_tap_connection_limit(topology: Topology) -> None:
    node = topology.rpc("tests.e2e.test_datapath_nft:NftNode", {"max_connections": 3})
    node.call("install")
    a, b = topology.add_guest(), topology.add_guest()
    steer(node, a, b)
    assert guest_connects(a, 5, hold=True) == 3  # the 4th and 5th SYN are dropped
    assert node.call("counters")[a.tap]["extra"]["conn_limited"] >= 2
    assert guest_connects(b, 3, hold=True) == 3  # another tap has its own budget


def test_per_tap_syn_rate_limit(topology: Topology) -> None:
    node = topology.rpc("tests.e2e.test_datapath_nft:NftNode",
                        {"syn_rate_per_s": 1, "syn_burst": 5})
    node.call("install")
    a, b = topology.add_guest(), topology.add_guest()
    steer(node, a, b)
    assert guest_connects(a, 10, hold=False) <= 6  # burst 5 (+1 refilled at most)
    assert node.call("counters")[a.tap]["syn_rate_limited"] >= 4
    assert guest_connects(b, 3, hold=False) == 3  # the flood on a did not hurt b


def br_netfilter(topology: Topology, value: int) -> None:
    """Set ``bridge-nf-call-iptables`` in the node (per network namespace)."""
    sh(["sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={value}"], netns=topology.node)
    flag = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    assert sh(["cat", flag], netns=topology.node).stdout.strip() == str(value)


def steer_bridged(node: Any, *guests: Guest, unbound: tuple[Guest, ...] = ()) -> None:
    taps = {g.tap: {"steer": True, "bridge": g.bridge} for g in guests}
    taps.update({g.tap: {"steer": False, "bridge": g.bridge} for g in unbound})
    node.call("sync", taps)
    for g in guests:
        node.call("listen", g.tap)


@pytest.mark.parametrize(("kind", "route", "brnf"), [
    ("veth", "onlink", 1), ("veth", "gateway", 0), ("tap", "gateway", 1), ("tap", "onlink", 0)])
def test_bridged_guest_reads_through_its_tap(topology: Topology, node: Any, kind: str,
                                             route: str, brnf: int) -> None:
    br_netfilter(topology, brnf)
    bridge = topology.add_bridge()
    guest = topology.add_guest(kind=kind, route=route, bridge=bridge)
    other = topology.add_guest(route=route, bridge=bridge, ip="10.0.0.3/24")  # same bridge
    steer_bridged(node, guest, other)
    for g in (guest, other, guest):
        code, body, seconds = fetch(g)
        assert code == 200, body
        tap, peer, _ = body.split()
        assert tap == g.tap  # the bridge port it came in on: its own listener
        assert peer.startswith(g.ip.split("/")[0] + ":")
        assert seconds < FAST_S
    counters = node.call("counters")[guest.tap]
    assert counters["steered_packets"] >= 6
    assert counters["arp_replies"] >= (1 if route == "onlink" else 0)
    assert node.call("unsteerable") == {}
    # The host resolved the guest on the tap, and the bridge is untouched.
    neigh = sh(["ip", "neigh", "show", "dev", guest.tap], netns=topology.node).stdout
    assert "10.0.0.2" in neigh and "lladdr" in neigh
    if route == "gateway":  # the bridge still works for the host's own connections
        service = service_in(topology, guest, 7080, 7081)
        sh(["ip", "neigh", "flush", "dev", bridge], netns=topology.node)
        sh(["curl", "-s", "--max-time", "2", "http://10.0.0.2:7080/"], netns=topology.node,
           check=False)
        assert service.call("seen")["tcp"] == 1  # the handshake completed over the bridge
        assert "10.0.0.2" in sh(["ip", "neigh", "show", "dev", bridge],
                                netns=topology.node).stdout


def test_enslaving_a_steered_tap_needs_no_new_state(topology: Topology, node: Any) -> None:
    guest = topology.add_guest()  # on-link, routed
    steer(node, guest)
    assert fetch(guest)[0] == 200
    bridge = topology.add_bridge()
    sh(["ip", "link", "set", guest.tap, "master", bridge], netns=topology.node)
    sh(["ip", "neigh", "flush", "dev", guest.tap], netns=topology.node)
    code, body, _ = fetch(guest)  # no sync in between: nothing per bridge in the kernel
    assert code == 200 and body.split()[0] == guest.tap
    sh(["ip", "link", "set", guest.tap, "nomaster"], netns=topology.node)
    assert fetch(guest)[0] == 200


def test_same_ip_mac_and_port_on_one_bridge(topology: Topology, node: Any) -> None:
    bridge = topology.add_bridge()
    a = topology.add_guest(bridge=bridge, mac="02:00:00:00:00:02", route="gateway")
    b = topology.add_guest(bridge=bridge, mac="02:00:00:00:00:02")
    steer_bridged(node, a, b)
    procs = [subprocess.Popen(
        ["ip", "netns", "exec", g.netns, "curl", "-sS", "--max-time", "3", "--local-port",
         "40123", "-w", "\n%{http_code} %{time_total}", MD],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in (a, b)]
    outs = [p.communicate(timeout=10)[0] for p in procs]
    for guest, out in zip((a, b), outs, strict=True):
        code, body, seconds = body_and_time(subprocess.CompletedProcess([], 0, out, ""))
        assert code == 200, out
        assert body.split()[:2] == [guest.tap, "10.0.0.2:40123"]  # identity: the port
        # Two guests wearing one MAC on one bridge make the bridge's forwarding
        # table flap between their ports, so plain L2 (ARP for the gateway) may
        # cost one retry; identity above is what must hold. Distinct MACs with
        # the same IP and port on a bridge keep the fast bound (test_product).
        assert seconds < 1.5


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_bridged_unbound_tap_fails_fast(topology: Topology, node: Any, kind: str) -> None:
    bridge = topology.add_bridge()
    bound = topology.add_guest(bridge=bridge, route="gateway")
    unbound = topology.add_guest(bridge=bridge, route="gateway", ip="10.0.0.3/24", kind=kind)
    steer_bridged(node, bound, unbound=(unbound,))
    node.call("listen", unbound.tap)  # even with a listener: refused at the tap
    proc = unbound.curl(MD, max_time=2)
    assert proc.returncode == 7, proc.stdout  # connection refused
    assert body_and_time(proc)[2] < FAST_S
    assert node.call("counters")[unbound.tap]["refused_packets"] >= 1
    assert fetch(bound)[0] == 200


def test_bridge_wearing_the_taps_mac_fails_closed(topology: Topology, node: Any) -> None:
    bridge = topology.add_bridge(mac=None)
    guest = topology.add_guest(bridge=bridge, route="gateway")
    tap_mac = sh(["cat", f"/sys/class/net/{guest.tap}/address"], netns=topology.node).stdout
    assert sh(["cat", f"/sys/class/net/{bridge}/address"], netns=topology.node).stdout == tap_mac
    steer_bridged(node, guest)
    assert "has the MAC of its bridge" in node.call("unsteerable")[guest.tap]
    proc = guest.curl(MD, max_time=2)
    assert proc.returncode == 7, proc.stdout  # refused fast rather than hanging
    # What steering it would have broken: the host reaching the guest over the bridge.
    service = service_in(topology, guest, 7080, 7081)
    sh(["ip", "neigh", "flush", "dev", bridge], netns=topology.node)
    sh(["curl", "-s", "--max-time", "2", "http://10.0.0.2:7080/"], netns=topology.node,
       check=False)
    assert service.call("seen")["tcp"] == 1
    # Given an address of its own, the bridge's tap is steered at the next sync.
    sh(["ip", "link", "set", bridge, "address", "02:b0:00:00:00:09"], netns=topology.node)
    steer_bridged(node, guest)
    assert node.call("unsteerable") == {}
    assert fetch(guest)[0] == 200


@pytest.mark.parametrize("bridged", [False, True])
def test_arp_when_refused_makes_unbound_onlink_guests_fail_fast(topology: Topology,
                                                                bridged: bool) -> None:
    node = topology.rpc("tests.e2e.test_datapath_nft:NftNode", {"arp_when_refused": True})
    node.call("install")
    bridge = topology.add_bridge() if bridged else None
    bound = topology.add_guest(bridge=bridge)
    onlink = topology.add_guest(bridge=bridge, ip="10.0.0.3/24")
    steer_bridged(node, bound, unbound=(onlink,))
    proc = onlink.curl(MD, max_time=3)
    assert proc.returncode == 7, proc.stderr  # connection refused, not a timeout
    assert body_and_time(proc)[2] < FAST_S  # curl's clock (without: ~3 s for ARP to fail)
    assert "02:a9:fe:a9:fe:00" in onlink.run(["ip", "neigh"]).stdout
    counters = node.call("counters")[onlink.tap]
    assert counters["arp_replies"] >= 1 and counters["refused_packets"] >= 1
    assert fetch(bound)[0] == 200


def test_guest_cannot_reach_host_over_ipv6_link_local(topology: Topology, node: Any) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    node.call("host_service", "::", 8082)
    host_ll = sh(["ip", "-6", "-o", "addr", "show", "dev", guest.tap, "scope", "link"],
                 netns=topology.node).stdout.split()[3].split("/")[0]
    assert host_ll.startswith("fe80:")
    deadline = time.monotonic() + 10  # duplicate address detection on both ends
    while time.monotonic() < deadline and (
            sh(["ip", "-6", "addr", "show", "tentative"], netns=topology.node).stdout
            or guest.run(["ip", "-6", "addr", "show", "tentative"]).stdout):
        time.sleep(0.1)
    before = node.call("counters")[guest.tap]["extra"].get("host_input_dropped", 0)
    proc = guest.curl(f"http://[{host_ll}%eth0]:8082/", max_time=1)
    assert proc.returncode == 28, proc.stderr  # the SYN left and was dropped
    assert node.call("host_accepts", ":::8082") == 0
    assert node.call("counters")[guest.tap]["extra"]["host_input_dropped"] > before
    # Positive control: the service answers on the node itself.
    assert "host" in sh(["curl", "-sS", "--max-time", "2", "http://[::1]:8082/"],
                        netns=topology.node).stdout


def input_drops_through_bridges(topology: Topology) -> int:
    """Packets the host input filter dropped that came in through a bridge."""
    out = sh(["nft", "-j", "list", "chain", "inet", "interceptor", "host_input"],
             netns=topology.node).stdout
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule and any("counter" in e for e in rule["expr"]) and rule.get("comment", "") \
                .startswith("the same, through a bridge"):
            return int(next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e))
    raise AssertionError("no bridge drop counter in host_input")


@pytest.mark.parametrize("brnf", [0, 1])
def test_bridged_guest_cannot_reach_host_services(topology: Topology, brnf: int) -> None:
    br_netfilter(topology, brnf)
    node = topology.rpc("tests.e2e.test_datapath_nft:NftNode",
                        {"input_allow_tcp": [8443], "input_allow_udp": [6767]})
    node.call("install")
    bridge = topology.add_bridge()
    guest = topology.add_guest(bridge=bridge, route="gateway")  # 10.0.0.1/24 on the bridge
    neighbour = topology.add_guest(bridge=bridge, ip="10.0.0.3/24")
    routed = topology.add_guest(route="gateway", ip="10.1.0.2/24", gateway="10.1.0.1")
    steer_bridged(node, guest, neighbour, routed)
    sh(["ip", "route", "add", "10.1.0.2/32", "dev", routed.tap], netns=topology.node)
    sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=topology.node)
    sh(["ip", "addr", "add", "fd00::1/64", "dev", bridge, "nodad"], netns=topology.node)
    guest.run(["ip", "addr", "add", "fd00::2/64", "dev", "eth0", "nodad"])
    wait_no_tentative(topology, guest)
    host_ll = sh(["ip", "-6", "-o", "addr", "show", "dev", bridge, "scope", "link"],
                 netns=topology.node).stdout.split()[3].split("/")[0]
    for addr, port in (("0.0.0.0", 7070), ("::", 7070), ("0.0.0.0", 8443)):
        node.call("host_service", addr, port)
    for addr, port in (("0.0.0.0", 7071), ("::", 7071), ("0.0.0.0", 6767)):
        node.call("udp_service", addr, port)
    # Positive control: the services answer on the node itself.
    for url in ("http://10.0.0.1:7070/", "http://[fd00::1]:7070/"):
        assert sh(["curl", "-sS", "--max-time", "2", url], netns=topology.node
                  ).stdout == "host"
    before = input_drops_through_bridges(topology)

    # Nothing but the allow-listed ports on any address of the host the guest
    # can name: the bridge's IPv4, global IPv6 and link-local addresses.
    for addr in ("10.0.0.1", "fd00::1", f"{host_ll}%eth0"):
        url = f"http://[{addr}]:7070/" if ":" in addr else f"http://{addr}:7070/"
        dropped = input_drops_through_bridges(topology)
        proc = guest.curl(url, max_time=1)
        assert proc.returncode == 28, (url, proc.returncode, proc.stderr)
        assert input_drops_through_bridges(topology) > dropped, url  # the SYN, by the filter
        send_udp(guest, addr, 7071)
    node.call("fwmark_accept", 1)  # the accepted socket's replies carry the guest mark
    proc = guest.curl("http://10.0.0.1:8443/", max_time=2)
    assert proc.stdout.startswith("host"), proc.stderr  # allow-listed TCP
    send_udp(guest, "10.0.0.1", 6767)  # allow-listed UDP, sent after the refused ones
    assert wait_count(lambda: node.call("host_accepts", "udp 0.0.0.0:6767"), 1) == 1
    assert node.call("host_accepts", "0.0.0.0:7070") == 1  # only the control
    assert node.call("host_accepts", ":::7070") == 1
    assert node.call("host_accepts", "udp 0.0.0.0:7071") == 0
    assert node.call("host_accepts", "udp :::7071") == 0
    assert input_drops_through_bridges(topology) >= before + 6

    # Everything else still works: metadata through the tap, the host's own
    # connections to the guest, guest to guest on the bridge, and traffic the
    # node routes for the guest (the guest mark must not reach the policy rules).
    code, body, _ = fetch(guest)
    assert code == 200 and body.split()[0] == guest.tap
    service = service_in(topology, guest, 7080, 7081)
    sh(["curl", "-s", "--max-time", "2", "http://10.0.0.2:7080/"], netns=topology.node,
       check=False)
    assert service.call("seen")["tcp"] == 1
    neighbour.curl("http://10.0.0.2:7080/", max_time=2)
    send_udp(neighbour, "10.0.0.2", 7081)
    assert wait_count(lambda: service.call("seen")["udp"], 1) == 1
    assert service.call("seen")["tcp"] == 2
    far = service_in(topology, routed, 7090, 7091)
    guest.curl("http://10.1.0.2:7090/", max_time=2)
    send_udp(guest, "10.1.0.2", 7091)
    assert wait_count(lambda: far.call("seen")["udp"], 1) == 1
    assert far.call("seen")["tcp"] == 1
