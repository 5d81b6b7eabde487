"""The node side of the datapath suite (test_datapath.py), run inside the
node namespace through ``Topology.rpc``: either datapath built from the
shared options (contract.py), the per-tap listeners the product opens, a tiny
HTTP server on them that answers with the device it accepted on, the peer
and the socket's mark, and plain host services to prove guests never reach.

One class for both datapaths: what differs between them is asked through
the few methods that say what the kernel holds (``hooked``, ``leftovers``,
``input_drops``), so every test case is written once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import subprocess
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from interceptor.node.datapath.base import Datapath, TapState
from interceptor.node.datapath.links import Links, LinkWatcher
from interceptor.node.datapath.listeners import (
    listener_device,
    open_tap_listener,
    socket_mark,
)

T = TypeVar("T")


class _Answer(asyncio.Protocol):
    """Answers any request with "<device> <peer ip>:<port> <mark>" and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.body = f"{listener_device(sock)} {peer[0]}:{peer[1]} {socket_mark(sock):#x}"

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data:
            return
        body = self.body.encode()
        self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close"
                             b"\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def make_datapath(kind: str, options: dict[str, Any]) -> Datapath:
    knobs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                             for k, v in options.items()}
    if kind == "nft":
        from interceptor.node.datapath.nft import NftConfig, NftDatapath
        return NftDatapath(NftConfig(**knobs))
    from interceptor.node.datapath.ebpf import EbpfConfig, EbpfDatapath
    return EbpfDatapath(EbpfConfig(**knobs))


class DatapathNode:
    """Driven from the test over JSON. ``close`` (stdin closed) drops the
    listeners and fds but keeps the datapath in the kernel, as a daemon that
    stops with ``keep_datapath_on_exit`` would."""

    def __init__(self, kind: str | None, options: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.dp = make_datapath(kind, options or {}) if kind else None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: dict[str, asyncio.Server] = {}
        self.accepted: dict[str, int] = {}
        self.datagrams: list[asyncio.DatagramTransport] = []
        self.watcher: LinkWatcher | None = None
        self.history: list[dict[str, int]] = []
        self.changed = asyncio.Event()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def datapath(self) -> Datapath:
        assert self.dp is not None, "this node has no datapath"
        return self.dp

    # -- the Datapath protocol ----------------------------------------------------

    def install(self) -> None:
        self.datapath.install()

    def installed(self) -> bool:
        return self.datapath.installed()

    def remove(self) -> None:
        self.datapath.remove()

    def sync(self, taps: dict[str, dict[str, Any]]) -> None:
        """``{ifname: {"steer": bool, "bridge": str | None, "ifindex": int}}``
        (ifindex: the device's current one unless given)."""
        state = {}
        for name, spec in taps.items():
            idx = spec.get("ifindex") or int(Path(f"/sys/class/net/{name}/ifindex").read_text())
            steer = bool(spec.get("steer", True))
            state[name] = TapState(name, idx, f"i-{name}" if steer else None, steer,
                                   spec.get("bridge"))
        self.datapath.sync(state)

    def counters(self) -> dict[str, dict[str, int]]:
        return {k: dataclasses.asdict(v) for k, v in self.datapath.counters().items()}

    def counted(self) -> list[str]:
        return sorted(self.datapath.counted)

    def unsteerable(self) -> dict[str, str]:
        return self.datapath.unsteerable()

    # -- what the kernel holds, per datapath -------------------------------------

    def hooked(self) -> list[str]:
        """Links the datapath's per-tap hook is on (nft: ingress shards; eBPF:
        tc filters), by name."""
        from interceptor.node.datapath.nft import NftDatapath
        if isinstance(self.dp, NftDatapath):
            return sorted(self.dp.ingress_devices())
        from interceptor.node.datapath.ebpf import EbpfDatapath
        assert isinstance(self.dp, EbpfDatapath)
        names = {int(p.read_text()): p.parent.name
                 for p in Path("/sys/class/net").glob("*/ifindex")}
        return sorted(names.get(i, str(i)) for i in self.dp.attached_ifindexes())

    def hook_count(self, ifname: str) -> int:
        """How many of our hooks are on ``ifname`` (1 when synced: never duplicated)."""
        if self.kind == "nft":  # the ingress shards' hook lines (sets name taps too)
            out = _cmd(["nft", "list", "table", "netdev", "interceptor"])
            name = re.compile(rf"(?<![\w.:@-]){re.escape(ifname)}(?![\w.:@-])")
            return sum(len(name.findall(line)) for line in out.splitlines()
                       if "hook ingress" in line)
        out = _cmd(["tc", "filter", "show", "dev", ifname, "ingress"])
        return len([ln for ln in out.splitlines() if " bpf " in ln and "handle" in ln])

    def leftovers(self) -> list[str]:
        """Anything of ours still in the kernel (after ``remove``)."""
        found = []
        if _cmd(["nft", "list", "ruleset"]).strip():
            found.append("nft ruleset")
        rules = _cmd(["ip", "rule"]).splitlines()
        if len(rules) != 3:  # local, main, default
            found.append(f"ip rules {rules}")
        if _cmd(["ip", "route", "show", "table", "4711"]).strip():
            found.append("routes in table 4711")
        rules6 = _cmd(["ip", "-6", "rule"]).splitlines()
        if len(rules6) != 2:  # local, main
            found.append(f"ip -6 rules {rules6}")
        for table in ("4711", "4712"):
            if _cmd(["ip", "-6", "route", "show", "table", table]).strip():
                found.append(f"IPv6 routes in table {table}")
        from interceptor.node.datapath.ebpf import EbpfDatapath
        if isinstance(self.dp, EbpfDatapath):
            if self.dp.cfg.pin_dir.exists():
                found.append(f"pins {self.dp.cfg.pin_dir}")
            if "clsact" in _cmd(["tc", "qdisc", "show"]):
                found.append("clsact qdiscs")
        return found

    def input_drops(self, tap: str) -> int:
        """Host-input drops of ``tap``'s guest, bridged or not: eBPF counts
        them per tap; nft counts what came through a bridge in one rule
        counter (the ifindex does not survive the bridge), added here."""
        count = self.datapath.counters()[tap].host_input_dropped
        if self.kind == "nft":
            data = json.loads(_cmd(["nft", "-j", "list", "chain", "inet", "interceptor",
                                    "host_input"]))
            for item in data["nftables"]:
                rule = item.get("rule")
                if rule and rule.get("comment", "").startswith("the same, through a bridge"):
                    count += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        return count

    # -- listeners and host services ---------------------------------------------

    def listen(self, ifname: str) -> None:
        """The tap's listeners on the configured metadata address and port
        (IPv4, and IPv6 when the datapath serves IPv6 addresses)."""
        self.unlisten(ifname)
        cfg = getattr(self.dp, "cfg", None)
        socks = {ifname: open_tap_listener(ifname) if cfg is None else
                 open_tap_listener(ifname, cfg.metadata_address, cfg.metadata_port)}
        if cfg is not None:
            for i, address in enumerate(cfg.metadata_address6):
                socks[f"{ifname}/6{i}"] = open_tap_listener(ifname, address, cfg.metadata_port)
        for key, sock in socks.items():
            async def start(sock: socket.socket = sock) -> asyncio.Server:
                return await self.loop.create_server(_Answer, sock=sock)
            self.servers[key] = self._run(start())

    def unlisten(self, ifname: str) -> None:
        for key in (ifname, f"{ifname}/60", f"{ifname}/61"):
            server = self.servers.pop(key, None)
            if server is not None:
                server.close()
                self._run(server.wait_closed())

    def listen_error(self, ifname: str) -> str:
        try:
            open_tap_listener(ifname).close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    def host_service(self, address: str, port: int) -> None:
        """A plain TCP server on the node (a "host service") counting accepts;
        it answers and closes first, as a server with ``Connection: close``."""
        key = f"{address}:{port}"
        self.accepted[key] = 0

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted[key] += 1
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.0 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nhost")
            await w.drain()
            w.close()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(handler, address, port)
        self.servers[key] = self._run(start())

    def host_accepts(self, key: str) -> int:
        return self.accepted[key]

    def stop_service(self, key: str) -> None:
        self.unlisten(key)

    def udp_service(self, address: str, port: int) -> None:
        """A UDP socket on the node counting datagrams (key "udp <addr>:<port>")."""
        key = f"udp {address}:{port}"
        self.accepted[key] = 0
        accepted = self.accepted

        class Count(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                accepted[key] += 1

        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:  # as asyncio's TCP servers: "::" is IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))

        async def start() -> asyncio.DatagramTransport:
            transport, _ = await self.loop.create_datagram_endpoint(Count, sock=sock)
            return transport
        self.datagrams.append(self._run(start()))

    def fwmark_accept(self, value: int) -> None:
        Path("/proc/sys/net/ipv4/tcp_fwmark_accept").write_text(str(value))

    # -- the link watcher ----------------------------------------------------------

    def watch(self, patterns: list[str]) -> dict[str, int]:
        """Start a LinkWatcher; returns its first state {ifname: ifindex}."""
        def on_change(links: Links) -> None:
            self.history.append({n: li.ifindex for n, li in links.items()})
            self.changed.set()

        async def start() -> dict[str, int]:
            self.changed = asyncio.Event()
            self.watcher = LinkWatcher(on_change, patterns=patterns, resync_interval=60)
            first = await self.watcher.start()
            return {n: li.ifindex for n, li in first.items()}
        return self._run(start())

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
            return list(self.history)
        return self._run(wait())

    def unwatch(self) -> int:
        watcher, self.watcher = self.watcher, None
        assert watcher is not None
        self._run(watcher.stop())
        return watcher.rounds

    def close(self) -> None:
        if self.watcher is not None:
            self.unwatch()
        for name in list(self.servers):
            self.unlisten(name.split("/")[0])
        for transport in self.datagrams:
            self.loop.call_soon_threadsafe(transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        close = getattr(self.dp, "close", None)
        if close is not None:  # the eBPF loader's fds (programs stay attached)
            close()


def _cmd(args: list[str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, timeout=30,
                          check=True).stdout
