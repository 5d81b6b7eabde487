"""End to end through the eBPF datapath: guests in namespaces, the datapath
and the transparent listeners in a "node" namespace (one loader process per
``EbpfNode``), and a tiny HTTP server on the listeners that answers with the
device it accepted on, the peer and the socket's mark."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from interceptor.node.datapath.base import mark_for
from interceptor.node.datapath.ebpf import DEFAULT_ARP_MAC, EbpfConfig
from tests.e2e.netns import Guest, NetnsRpc, Topology, ifindex, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

MD = "http://169.254.169.254/latest/meta-data/"
FAST_S = 0.5
AGENT = "tests.e2e.test_datapath_ebpf:EbpfNode"


# -- runs inside the node namespace (via NetnsRpc) ------------------------------


class _Answer(asyncio.Protocol):
    """Answers any request with "<device> <peer ip>:<port> <mark>" and closes."""

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


class EbpfNode:
    """The loader: datapath, listeners and a test server, driven from the test.
    ``close`` (stdin closed) drops listeners and fds but keeps the datapath,
    as a daemon that stops without ``--cleanup`` would."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        from interceptor.node.datapath.ebpf import EbpfConfig, EbpfDatapath
        self.dp = EbpfDatapath(EbpfConfig(**overrides))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: dict[str, asyncio.Server] = {}

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def install(self) -> None:
        self.dp.install()

    def installed(self) -> bool:
        return self.dp.installed()

    def remove(self) -> None:
        self.dp.remove()

    def sync(self, taps: dict[str, dict[str, Any]]) -> None:
        """``{ifname: {"steer": bool, "bridge": str | None}}``."""
        from interceptor.node.datapath.base import TapState
        state = {}
        for name, spec in taps.items():
            idx = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
            steer = bool(spec.get("steer", True))
            state[name] = TapState(name, idx, f"i-{name}" if steer else None, steer,
                                   spec.get("bridge"))
        self.dp.sync(state)

    def counters(self) -> dict[str, dict[str, Any]]:
        return {k: dataclasses.asdict(v) for k, v in self.dp.counters().items()}

    def attached(self) -> list[int]:
        return sorted(self.dp.attached_ifindexes())

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

    def fwmark_accept(self, value: int) -> None:
        Path("/proc/sys/net/ipv4/tcp_fwmark_accept").write_text(str(value))

    def close(self) -> None:
        for name in list(self.servers):
            self.unlisten(name)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.dp.close()


# -- helpers for the test side ---------------------------------------------------


def body_and_time(proc: subprocess.CompletedProcess[str]) -> tuple[int, str, float]:
    body, _, tail = proc.stdout.rpartition("\n")
    code, _, seconds = tail.partition(" ")
    return int(code or 0), body, float(seconds or 0)


def fetch(guest: Guest, *extra: str, max_time: float = 3.0) -> tuple[int, str, float]:
    return body_and_time(guest.curl(MD, *extra, max_time=max_time))


# `ip netns exec` gives the loader a private mount namespace with its own /sys:
# reach the host's bpffs through this (the test) process's root, so pins
# outlive the loader as they do in production.
HOST_BPFFS = f"/proc/{os.getpid()}/root/sys/fs/bpf"


def agent_config(topology: Topology, **overrides: Any) -> dict[str, Any]:
    return {"instance": topology.prefix, "bpffs": HOST_BPFFS, **overrides}


def start_node(topology: Topology, **overrides: Any) -> NetnsRpc:
    agent = topology.rpc(AGENT, agent_config(topology, **overrides))
    agent.call("install")
    return agent


def unpin(instance: str) -> None:
    """Last resort for the bpffs pins (global, unlike everything in the node
    namespace, which goes with it): unlink them from the test process."""
    pin_dir = EbpfConfig(instance=instance).pin_dir
    if pin_dir.is_dir():
        for entry in pin_dir.iterdir():
            entry.unlink(missing_ok=True)
        pin_dir.rmdir()


@pytest.fixture
def node(topology: Topology) -> Any:
    """A loader in the node namespace; afterwards a fresh one removes the
    datapath (the first may have been killed), and the pins go in any case."""
    try:
        yield start_node(topology)
    finally:
        try:
            cleaner = topology.rpc(AGENT, agent_config(topology))
            cleaner.call("remove")
        finally:
            unpin(topology.prefix)


def steer(node: Any, *guests: Guest, refused: tuple[Guest, ...] = ()) -> None:
    taps: dict[str, dict[str, Any]] = {g.tap: {"steer": True} for g in guests}
    taps.update({g.tap: {"steer": False} for g in refused})
    node.call("sync", taps)
    for g in guests:
        node.call("listen", g.tap)


def filter_lines(topology: Topology, dev: str) -> list[str]:
    out = sh(["tc", "filter", "show", "dev", dev, "ingress"], netns=topology.node).stdout
    return [ln for ln in out.splitlines() if " bpf " in ln and "handle" in ln]


def guest_neigh(guest: Guest) -> str:
    return guest.run(["ip", "neigh", "show", "169.254.169.254"]).stdout


# -- tests -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "route"), [("veth", "onlink"), ("veth", "gateway"),
                                             ("tap", "onlink")])
def test_guest_reads_through_its_tap(topology: Topology, node: Any, kind: str,
                                     route: str) -> None:
    guest = topology.add_guest(route=route, kind=kind)
    steer(node, guest)
    code, body, seconds = fetch(guest)
    assert code == 200, body
    device, peer, _mark = body.split()
    assert device == guest.tap
    assert peer.startswith("10.0.0.2:")
    assert seconds < FAST_S
    counters = node.call("counters")[guest.tap]
    assert counters["steered_packets"] >= 3
    if route == "onlink":
        assert counters["arp_replies"] >= 1
        assert DEFAULT_ARP_MAC in guest_neigh(guest)
    assert len(filter_lines(topology, guest.tap)) == 1


def test_bridged_taps_identified_by_mark(topology: Topology, node: Any) -> None:
    """Two guests on one Linux bridge and one refused guest on it: the port
    program answers ARP and refuses on the port, steered frames go up through
    the bridge to the bridge's listener, and the mark names the tap."""
    a = topology.add_guest(ip="10.0.5.2/24")
    b = topology.add_guest(ip="10.0.5.3/24")
    off = topology.add_guest(ip="10.0.5.4/24")
    bridge = f"br{topology.prefix[1:]}"
    sh(["ip", "link", "add", bridge, "type", "bridge"], netns=topology.node)
    for g in (a, b, off):
        sh(["ip", "link", "set", g.tap, "master", bridge], netns=topology.node)
    sh(["ip", "link", "set", bridge, "up"], netns=topology.node)
    node.call("fwmark_accept", 1)
    node.call("sync", {a.tap: {"steer": True, "bridge": bridge},
                       b.tap: {"steer": True, "bridge": bridge},
                       off.tap: {"steer": False, "bridge": bridge}})
    node.call("listen", bridge)
    for g in (a, b):
        code, body, seconds = fetch(g)
        assert code == 200, body
        device, peer, mark = body.split()
        assert device == bridge
        assert peer.startswith(g.ip.split("/")[0] + ":")
        assert int(mark, 16) == mark_for(ifindex(topology.node, g.tap))
        assert seconds < FAST_S
        assert DEFAULT_ARP_MAC in guest_neigh(g)
    # The refused guest on the same bridge: no ARP answer, no data.
    proc = off.curl(MD, max_time=1)
    assert proc.returncode != 0 and "200" not in proc.stdout
    assert DEFAULT_ARP_MAC not in guest_neigh(off)
    # ... and with a cached entry for the address, a RST straight away.
    off.run(["ip", "neigh", "replace", "169.254.169.254", "lladdr", DEFAULT_ARP_MAC,
             "dev", off.ifname, "nud", "permanent"], check=True)
    proc = off.curl(MD, max_time=3)
    assert proc.returncode == 7, proc.stderr  # connection refused
    assert body_and_time(proc)[2] < FAST_S
    assert node.call("attached") == sorted(
        [ifindex(topology.node, g.tap) for g in (a, b, off)]
        + [ifindex(topology.node, bridge)])
    # The bridge's listener gone: steered frames are dropped, never misdelivered.
    node.call("unlisten", bridge)
    proc = a.curl(MD, max_time=1)
    assert proc.returncode != 0 and "200" not in proc.stdout
    assert node.call("counters")[a.tap]["extra"]["no_listener"] >= 1


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
    spoofer = topology.add_guest(ip="10.0.0.3/24", route="gateway")
    steer(node, victim, spoofer)
    # The spoofer sends with the victim's address (and later its MAC too).
    spoofer.run(["ip", "addr", "add", "10.0.0.2/32", "dev", spoofer.ifname], check=True)
    code, body, _ = fetch(spoofer, "--interface", "10.0.0.2")
    assert code == 200
    assert body.split()[0] == spoofer.tap
    assert body.split()[1].startswith("10.0.0.2:")
    spoofer.run(["ip", "link", "set", spoofer.ifname, "address", "02:00:00:00:00:02"],
                check=True)
    code, body, _ = fetch(spoofer, "--interface", "10.0.0.2")
    assert code == 200 and body.split()[0] == spoofer.tap
    code, body, _ = fetch(victim)
    assert code == 200 and body.split()[0] == victim.tap


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_refused_tap_fails_fast(topology: Topology, node: Any, kind: str) -> None:
    bound = topology.add_guest()
    gw = topology.add_guest(route="gateway", kind=kind)
    onlink = topology.add_guest()
    steer(node, bound, refused=(gw, onlink))
    node.call("listen", gw.tap)  # even with a listener a refused tap gets nothing
    start = time.monotonic()
    proc = gw.curl(MD, max_time=3)
    assert proc.returncode == 7, proc.stderr  # connection refused, by the forged RST
    assert time.monotonic() - start < FAST_S + 0.5
    assert body_and_time(proc)[2] < FAST_S
    # On-link guest of a refused tap: nobody answers ARP for the address; the
    # guest's own ARP timeout (about 3 s) ends its connect (EHOSTUNREACH).
    start = time.monotonic()
    proc = onlink.curl(MD, max_time=6)
    took = time.monotonic() - start
    assert proc.returncode == 7, proc.stderr
    assert 2.0 < took < 5.0
    assert DEFAULT_ARP_MAC not in guest_neigh(onlink)
    counters = node.call("counters")
    assert counters[gw.tap]["refused_packets"] >= 1
    assert counters[onlink.tap]["arp_replies"] == 0
    assert counters[onlink.tap]["extra"]["arp_refused"] >= 1
    assert fetch(bound)[0] == 200


def test_arp_when_refused_makes_onlink_guests_fail_fast(topology: Topology) -> None:
    try:
        agent = start_node(topology, arp_when_refused=True)
        onlink = topology.add_guest()
        agent.call("sync", {onlink.tap: {"steer": False}})
        proc = onlink.curl(MD, max_time=3)
        assert proc.returncode == 7, proc.stderr
        assert body_and_time(proc)[2] < FAST_S
        assert DEFAULT_ARP_MAC in guest_neigh(onlink)
    finally:
        try:
            topology.rpc(AGENT, agent_config(topology)).call("remove")
        finally:
            unpin(topology.prefix)


def test_loader_killed_then_restarted(topology: Topology, node: Any) -> None:
    on = topology.add_guest()
    off = topology.add_guest(route="gateway")
    steer(node, on, refused=(off,))
    assert fetch(on)[0] == 200
    steered_before = node.call("counters")[on.tap]["steered_packets"]

    node.proc.kill()  # kill -9 the loader (and with it the listeners)
    node.proc.wait(5)

    # tc keeps the program, bpffs the maps: ARP still answered on the enabled
    # tap, the refused tap still refused at once, TCP waits for the listener.
    on.run(["ip", "neigh", "flush", "dev", on.ifname], check=True)
    proc = on.curl(MD, max_time=1)
    assert proc.returncode == 28, proc.stderr  # timeout: SYN dropped, retried later
    assert DEFAULT_ARP_MAC in guest_neigh(on)
    proc = off.curl(MD, max_time=3)
    assert proc.returncode == 7 and body_and_time(proc)[2] < FAST_S, proc.stderr

    # A new loader adopts the pins and replaces (not duplicates) the filters.
    again = start_node(topology)
    steer(again, on, refused=(off,))
    for g in (on, off):
        assert len(filter_lines(topology, g.tap)) == 1
    code, body, _ = fetch(on)
    assert code == 200 and body.split()[0] == on.tap
    # Counters survived the restart (pinned per-CPU map).
    assert again.call("counters")[on.tap]["steered_packets"] > steered_before
    assert fetch(off, max_time=3)[0] == 0


def test_toggle_takes_effect_for_new_connections_within_1s(topology: Topology,
                                                           node: Any) -> None:
    guest = topology.add_guest(route="gateway")
    steer(node, guest)
    assert fetch(guest)[0] == 200
    node.call("sync", {guest.tap: {"steer": False}})
    start = time.monotonic()
    proc = guest.curl(MD, max_time=2)
    assert proc.returncode == 7, proc.stderr  # refused on the very next connection
    assert time.monotonic() - start < 1.0
    node.call("sync", {guest.tap: {"steer": True}})
    start = time.monotonic()
    code, body, _ = fetch(guest)
    assert code == 200 and body.split()[0] == guest.tap
    assert time.monotonic() - start < 1.0


def test_remove_leaves_nothing(topology: Topology, node: Any) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    assert node.call("installed")
    pin_dir = EbpfConfig(instance=topology.prefix).pin_dir
    assert pin_dir.is_dir()
    node.call("remove")
    node.call("remove")  # twice is fine
    assert not node.call("installed")
    assert not pin_dir.exists()
    assert filter_lines(topology, guest.tap) == []
    qdiscs = sh(["tc", "qdisc", "show", "dev", guest.tap], netns=topology.node).stdout
    assert "clsact" not in qdiscs
    rules = sh(["ip", "rule"], netns=topology.node).stdout.splitlines()
    assert len(rules) == 3, rules  # local, main, default
    assert sh(["ip", "route", "show", "table", "4711"], netns=topology.node).stdout == ""
    # And install after remove comes back to a working datapath.
    node.call("install")
    node.call("sync", {guest.tap: {"steer": True}})
    assert fetch(guest)[0] == 200


@pytest.mark.slow
def test_sync_1000_taps(topology: Topology, node: Any) -> None:
    guest = topology.add_guest()
    steer(node, guest)
    names = [f"tap{topology.prefix[1:]}k{i}" for i in range(1000)]
    batch = "".join(f"tuntap add mode tap name {n}\n" for n in names)
    sh(["ip", "-batch", "-"], netns=topology.node, input=batch, timeout=120)
    taps: dict[str, dict[str, Any]] = {n: {"steer": i % 2 == 0} for i, n in enumerate(names)}
    taps[guest.tap] = {"steer": True}
    start = time.monotonic()
    node.call("sync", taps, timeout=120)
    first = time.monotonic() - start
    assert len(node.call("attached")) == 1001
    # A small change costs a small sync: drop 10 taps, flip 10 others.
    for n in names[:10]:
        del taps[n]
    for n in names[10:20]:
        taps[n] = {"steer": not taps[n]["steer"]}
    start = time.monotonic()
    node.call("sync", taps, timeout=120)
    second = time.monotonic() - start
    assert len(node.call("attached")) == 991
    assert len(filter_lines(topology, names[500])) == 1
    assert fetch(guest)[0] == 200
    print(f"ebpf sync 1000 taps: {first:.3f}s, incremental: {second:.3f}s")
