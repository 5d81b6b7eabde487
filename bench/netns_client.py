"""An asyncio HTTP/1.1 client whose sockets live in other network namespaces.

A socket belongs to the namespace it was created in, whatever the creating
thread does afterwards. So one bench process can be a thousand guests at
once: switch the thread into a guest's namespace (``setns``), create the
socket, switch back. No ``ip netns exec`` per request, no helper processes,
and every connection still enters the node through that guest's own tap.

Only what the bench needs: GET/PUT/PATCH with a small body, a
``Content-Length`` response, keep-alive or ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.lab import metric_sum, setns_fd


class HttpError(RuntimeError):
    pass


class Namespaces:
    """Creates sockets inside named network namespaces (``/run/netns/NAME``)."""

    def __init__(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, netns: str) -> int:
        fd = self._fds.get(netns)
        if fd is None:
            fd = self._fds[netns] = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        return fd

    def socket(self, netns: str) -> socket.socket:
        """A non-blocking TCP socket in ``netns``."""
        with self._lock:
            setns_fd(self._fd(netns), netns)
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                setns_fd(self._home, "back home")
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def forget(self, netns: str) -> None:
        fd = self._fds.pop(netns, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self._home)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One TCP connection from ``netns`` to ``host:port``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.closed = False

    @classmethod
    async def open(cls, ns: Namespaces, netns: str, host: str, port: int = 80,
                   timeout: float = 3.0) -> Connection:
        sock = ns.socket(netns)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer, f"{host}:{port}" if port != 80 else host)

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, *, close: bool = False,
                      timeout: float = 5.0) -> Reply:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        if close:
            lines.append("Connection: close")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *raw_headers = head.decode("latin-1").split("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise HttpError(f"bad status line {status_line!r}")
            hdrs: dict[str, str] = {}
            for raw in raw_headers:
                if raw:
                    k, _, v = raw.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
            length = int(hdrs.get("content-length", "0"))
            data = await self.reader.readexactly(length) if length else b""
        if close or hdrs.get("connection", "").lower() == "close":
            self.close()
        return Reply(int(parts[1]), data, hdrs)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


async def fetch(ns: Namespaces, netns: str, path: str, *, host: str = "169.254.169.254",
                port: int = 80, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 3.0) -> Reply:
    """One request on a new connection (``Connection: close``)."""
    conn = await Connection.open(ns, netns, host, port, timeout)
    try:
        return await conn.request(method, path, body, headers, close=True, timeout=timeout)
    finally:
        conn.close()


class AdminApi:
    """The backend's owner API, spoken from inside the node namespace."""

    def __init__(self, ns: Namespaces, netns: str, port: int, token: str) -> None:
        self._ns = ns
        self._netns = netns
        self._port = port
        self._token = token

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> Reply:
        hdrs = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        return await fetch(self._ns, self._netns, path, host="127.0.0.1", port=self._port,
                           method=method, body=data, headers=hdrs, timeout=15.0)

    async def ok(self, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> Reply:
        reply = await self.call(method, path, body, headers)
        if not 200 <= reply.status < 300:
            raise HttpError(f"{method} {path} -> {reply.status}: {reply.body[:300]!r}")
        return reply


async def metric_value(ns: Namespaces, netns: str, port: int, name: str,
                       labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (a counter's ``_total`` too) matching ``labels``."""
    reply = await fetch(ns, netns, "/metrics", host="127.0.0.1", port=port, timeout=10.0)
    return metric_sum(reply.body.decode(), name, labels)


class LeanClient:
    """The cheapest request the bench can make, for the load generator: raw
    non-blocking sockets and the loop's ``sock_*`` calls (no streams, no
    transports), a fixed request, and only the status line and
    ``Content-Length`` read from the answer."""

    def __init__(self, ns: Namespaces, path: str, host: str = "169.254.169.254",
                 port: int = 80) -> None:
        self._ns = ns
        self._addr = (host, port)
        self._keep = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self._close = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                       "Connection: close\r\n\r\n").encode()

    async def connect(self, netns: str) -> socket.socket:
        sock = self._ns.socket(netns)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self._addr)
        except BaseException:
            sock.close()
            raise
        return sock

    async def request(self, sock: socket.socket, *, close: bool) -> tuple[int, bytes]:
        """Send the request on ``sock``; (status, body). Leaves the socket open."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, self._close if close else self._keep)
        buf = b""
        while True:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise HttpError("connection closed before a full response")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            while len(buf) < end + 4 + length:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    raise HttpError("connection closed inside the body")
                buf += chunk
            return int(head[9:12]), buf[end + 4:end + 4 + length]


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[index]


def now() -> float:
    return time.perf_counter()
