"""Load generators: a fixed-rate (open-loop) generator and a boot crawler.

The fixed-rate generator issues request *i* at ``start + i / rate`` whatever
happened to earlier requests, and measures each latency from that scheduled
instant (so a stall is not hidden by the generator waiting for it, the
"coordinated omission" trap of closed-loop tools). Requests are spread
round-robin over guest namespaces; with ``keepalive`` each guest keeps a
small pool of connections, otherwise every request opens a new connection
(as most metadata clients do).

Everything is bounded: a request times out after ``timeout`` seconds, at
most ``max_outstanding`` are in flight (later ones are counted as
``dropped``), and a run lasts ``duration`` seconds plus the timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.netns_client import HttpError, LeanClient, Namespaces, fetch, percentile

METADATA = "169.254.169.254"


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, from the scheduled time
    service: list[float] = field(default_factory=list)  # seconds, from the actual start
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def summary(self) -> dict[str, float]:
        lat = self.latencies
        return {"p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
                "max_ms": max(lat) * 1e3 if lat else float("nan"),
                "service_p50_ms": percentile(self.service, 50) * 1e3,
                "service_p99_ms": percentile(self.service, 99) * 1e3, "ok": self.ok,
                "errors": sum(self.errors.values()), "dropped": self.dropped,
                "achieved_rps": self.rate}


class _Pools:
    """Keep-alive sockets per guest, at most ``per_guest`` open per guest (below
    the datapath's per-tap connection limit of 64, so a stall of the server
    shows as latency, not as connections the limit drops)."""

    def __init__(self, client: LeanClient, per_guest: int = 32) -> None:
        self._client = client
        self._idle: dict[str, list[socket.socket]] = collections.defaultdict(list)
        self._slots: dict[str, asyncio.Semaphore] = collections.defaultdict(
            lambda: asyncio.Semaphore(per_guest))

    async def take(self, netns: str) -> socket.socket:
        await self._slots[netns].acquire()
        idle = self._idle[netns]
        if idle:
            return idle.pop()
        try:
            return await self._client.connect(netns)
        except BaseException:
            self._slots[netns].release()
            raise

    def give(self, netns: str, sock: socket.socket) -> None:
        self._idle[netns].append(sock)
        self._slots[netns].release()

    def discard(self, netns: str, sock: socket.socket) -> None:
        sock.close()
        self._slots[netns].release()

    def close(self) -> None:
        for socks in self._idle.values():
            for sock in socks:
                sock.close()
        self._idle.clear()


async def fixed_rate(ns: Namespaces, guests: Sequence[str], path: str, *, rate: float,
                     duration: float, keepalive: bool, timeout: float = 2.0,
                     max_outstanding: int = 512, expect: bytes | None = None) -> LoadResult:
    loop = asyncio.get_running_loop()
    result = LoadResult()
    client = LeanClient(ns, path)
    pools = _Pools(client)
    total = int(rate * duration)
    outstanding: set[asyncio.Task[None]] = set()

    async def one(index: int, scheduled: float) -> None:
        netns = guests[index % len(guests)]
        began = loop.time()
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(timeout):
                sock = await (pools.take(netns) if keepalive else client.connect(netns))
                status, body = await client.request(sock, close=not keepalive)
        except (TimeoutError, OSError, HttpError, ValueError) as exc:
            result.errors["timeout" if isinstance(exc, TimeoutError)
                          else type(exc).__name__] += 1
            if sock is not None:
                if keepalive:
                    pools.discard(netns, sock)
                else:
                    sock.close()
            return
        done = loop.time()
        if keepalive:
            pools.give(netns, sock)
        else:
            sock.close()
        if status != 200 or (expect is not None and body != expect):
            result.errors[f"status_{status}"] += 1
            return
        result.ok += 1
        result.latencies.append(done - scheduled)
        result.service.append(done - began)

    start = loop.time() + 0.05
    try:
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(outstanding) >= max_outstanding:
                result.dropped += 1
                continue
            result.sent += 1
            task = loop.create_task(one(i, scheduled))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.wait(list(outstanding), timeout=timeout + 1.0)
        result.elapsed = loop.time() - start
    finally:
        for task in list(outstanding):
            task.cancel()
        pools.close()
    return result


SEED_PATHS = (
    "/", "/latest/meta-data/", "/latest/user-data",
    "/latest/dynamic/instance-identity/document",
    "/openstack", "/openstack/latest/meta_data.json", "/openstack/latest/network_data.json",
    "/openstack/latest/vendor_data.json", "/openstack/latest/vendor_data2.json",
    "/openstack/latest/user_data", "/2009-04-04/meta-data/instance-id",
)


@dataclass
class CrawlResult:
    requests: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    guest_seconds: list[float] = field(default_factory=list)
    elapsed: float = 0.0


async def crawl(ns: Namespaces, guests: Sequence[str], *, max_paths: int = 40,
                concurrency: int = 64, timeout: float = 5.0,
                deadline: float = 600.0) -> CrawlResult:
    """Every guest walks its metadata like a booting cloud-init would: the
    version list, the EC2 ``meta-data/`` tree (breadth first, following the
    listings), user-data, the identity document and the OpenStack files, one
    new connection per request, sequentially per guest, up to ``max_paths``
    requests each. At most ``concurrency`` requests are in flight in total."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    result = CrawlResult()

    async def guest(netns: str) -> None:
        began = loop.time()
        queue = collections.deque(SEED_PATHS)
        seen: set[str] = set()
        while queue and len(seen) < max_paths:
            path = queue.popleft()
            if path in seen:
                continue
            seen.add(path)
            async with sem:
                try:
                    reply = await fetch(ns, netns, path, timeout=timeout)
                except TimeoutError:
                    result.errors["timeout"] += 1
                    continue
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
            result.requests += 1
            result.statuses[reply.status] += 1
            if (reply.status == 200 and path.startswith("/latest/meta-data")
                    and path.endswith("/")):
                for entry in reply.body.decode(errors="replace").splitlines():
                    name = entry.split("=", 1)[0] + ("/" if "=" in entry else "")
                    if name and name not in (".", ".."):
                        queue.append(path + name)
        result.guest_seconds.append(loop.time() - began)

    start = loop.time()
    tasks = [loop.create_task(guest(g)) for g in guests]
    try:
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
            result.errors["crawl_deadline"] += 1
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    result.elapsed = loop.time() - start
    return result
