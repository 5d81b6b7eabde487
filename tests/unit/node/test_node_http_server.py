"""The guest HTTP server over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from interceptor.node.http_server import (
    GuestHttpServer,
    HandlerResult,
    Request,
    Response,
    TapIdentity,
)
from interceptor.node.limits import HttpLimits

TAP = TapIdentity("tapa1b2c", 7, "i-one")
IO_TIMEOUT = 5.0


@dataclass
class Recorder:
    """The test handler: answers sync, or async for /slow (held by ``gate``)."""

    seen: list[tuple[TapIdentity, Request]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    sockets: list[socket.socket] = field(default_factory=list)

    def __call__(self, identity: TapIdentity, request: Request) -> HandlerResult:
        self.seen.append((identity, request))
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path.startswith("/slow"):
            return self._slow(request)
        if request.path == "/ttl":
            return Response(200, b"token", ip_ttl=1)
        if request.path == "/reset":
            return Response(403, b"never sent", reset=True)
        body = f"{identity.instance_id} {request.method} {request.path} {request.query} " \
               f"{len(request.body)}".encode()
        return Response(200, body, headers=(("ETag", '"e1"'),))

    async def _slow(self, request: Request) -> Response:
        await self.gate.wait()
        return Response(200, b"slow " + request.path.encode())


@dataclass
class Served:
    server: GuestHttpServer
    handler: Recorder
    port: int


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def serve(limits: HttpLimits | None = None) -> Served:
    handler = Recorder()
    server = GuestHttpServer(handler, limits=limits)
    sock = listening_socket()
    port = sock.getsockname()[1]
    await server.add_listener(sock, TAP)
    return Served(server, handler, port)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = await serve()
    yield s
    await s.server.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, head: bool = False) -> Reply:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        body = b"" if head or status in (204, 304) else await asyncio.wait_for(
            self.reader.readexactly(length), IO_TIMEOUT)
        return Reply(status, headers, body)

    async def closed(self) -> bool:
        """True when the server closed (EOF or reset) with nothing more to read."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), IO_TIMEOUT)
        except ConnectionResetError:
            return True
        return data == b""

    def close(self) -> None:
        self.writer.close()


async def request(port: int, data: bytes) -> tuple[Reply, Client]:
    c = await Client.connect(port)
    await c.send(data)
    return await c.reply(), c


async def test_get_and_keep_alive(served: Served) -> None:
    c = await Client.connect(served.port)
    for i in range(3):
        await c.send(f"GET /latest/x{i}?a=b HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        r = await c.reply()
        assert r.status == 200 and r.body == f"i-one GET /latest/x{i} a=b 0".encode()
        assert r.headers["content-length"] == str(len(r.body))
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["etag"] == '"e1"' and "date" in r.headers
        assert "connection" not in r.headers
    assert all(ident == TAP for ident, _ in served.handler.seen)
    c.close()


async def test_http10_always_closes(served: Served) -> None:
    """HTTP/1.0 keep-alive is not offered: h11 has none, so a second request on
    such a connection is one the parsers would not agree on (http_parser.py)."""
    r, c = await request(served.port, b"GET / HTTP/1.0\r\n\r\n")
    assert r.status == 200 and r.headers["connection"] == "close"
    assert await c.closed()
    r, c = await request(served.port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                         b"GET /smuggled HTTP/1.0\r\n\r\n")
    assert r.headers["connection"] == "close"
    assert await c.closed()
    assert [req.path for _, req in served.handler.seen] == ["/", "/"]


async def test_connection_close_http11(served: Served) -> None:
    r, c = await request(served.port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert r.status == 200 and r.headers["connection"] == "close"
    assert await c.closed()


async def test_pipelined_requests_answered_in_order_across_async(served: Served) -> None:
    c = await Client.connect(served.port)
    await c.send(b"GET /a HTTP/1.1\r\n\r\nGET /slow/b HTTP/1.1\r\n\r\n"
                 b"GET /c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\n\r\n")
    first = await c.reply()
    assert first.body.startswith(b"i-one GET /a ")
    # /c must not be answered before /slow/b: one request at a time per connection.
    assert [r.path for _, r in served.handler.seen] == ["/a", "/slow/b"]
    served.handler.gate.set()
    bodies = [(await c.reply()).body for _ in range(3)]
    assert bodies[0] == b"slow /slow/b"
    assert bodies[1].startswith(b"i-one GET /c ") and bodies[2].startswith(b"i-one GET /d ")
    c.close()


async def test_partial_reads_byte_by_byte(served: Served) -> None:
    c = await Client.connect(served.port)
    data = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    for i in range(len(data)):
        await c.send(data[i:i + 1])
    r = await c.reply()
    assert r.body == b"i-one POST /p  5"
    assert served.handler.seen[-1][1].body == b"hello"
    c.close()


async def test_head_has_length_but_no_body(served: Served) -> None:
    c = await Client.connect(served.port)
    await c.send(b"HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n")
    r = await c.reply(head=True)
    assert r.status == 200 and int(r.headers["content-length"]) == len(b"i-one HEAD /h  0")
    g = await c.reply()  # the next response starts right after the HEAD head
    assert g.body.startswith(b"i-one GET /g ")
    c.close()


async def test_absolute_form_and_percent(served: Served) -> None:
    r, c = await request(served.port, b"GET /x%20y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r.body.startswith(b"i-one GET /x y ")
    c.close()
    r, c = await request(served.port,
                         b"GET http://169.254.169.254/latest?q=1 HTTP/1.1\r\n\r\n")
    assert r.body.startswith(b"i-one GET /latest q=1 ")
    c.close()


async def test_expect_100_continue(served: Served) -> None:
    c = await Client.connect(served.port)
    await c.send(b"PUT /k HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await c.send(b"abc")
    assert (await c.reply()).body == b"i-one PUT /k  3"
    c.close()


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(65)) + b"\r\n",
     431),
    (b"POST / HTTP/1.1\r\nContent-Length: 16385\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 411),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"GET /  HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"GET / FOO\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    # Bare LF line ends: llhttp refuses them, so the node does too (http_parser.py).
    (b"GET /x HTTP/1.1\nHost: a\n\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\n\r\n", 400),
    (b"BREW /pot HTTP/1.1\r\n\r\n", 405),
    # Empty lines before the request line: h11 refuses them, llhttp skips them.
    (b"\r\nGET / HTTP/1.1\r\n\r\n", 400),
])
async def test_malformed_gets_4xx_and_close(served: Served, data: bytes, status: int) -> None:
    c = await Client.connect(served.port)
    await c.send(data)
    r = await c.reply()
    assert r.status == status and r.headers["connection"] == "close"
    assert await c.closed()


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                                  b"\x00\x00\x00\x00", b"{json}\r\n\r\n", b"\xff" * 100])
async def test_garbage_closes_silently(served: Served, data: bytes) -> None:
    c = await Client.connect(served.port)
    await c.send(data)
    assert await c.closed()
    assert served.handler.seen == []


async def test_reset_response_sends_no_byte(served: Served) -> None:
    c = await Client.connect(served.port)
    await c.send(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(c.reader.read(65536), IO_TIMEOUT)
    c.close()
    reply, other = await request(served.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 200
    other.close()


async def test_garbage_does_not_affect_other_connections(served: Served) -> None:
    good = await Client.connect(served.port)
    bad = await Client.connect(served.port)
    await good.send(b"GET /a HTTP/1.1\r\n\r\n")
    await bad.send(b"\x16\x03garbage")
    await good.send(b"")
    assert (await good.reply()).status == 200
    assert await bad.closed()
    await good.send(b"GET /b HTTP/1.1\r\n\r\n")
    assert (await good.reply()).status == 200
    good.close()


async def test_handler_exception_is_500_and_server_survives(served: Served) -> None:
    r, c = await request(served.port, b"GET /boom HTTP/1.1\r\n\r\n")
    assert r.status == 500
    assert await c.closed()
    r, c = await request(served.port, b"GET /fine HTTP/1.1\r\n\r\n")
    assert r.status == 200
    c.close()


async def test_header_and_idle_timeouts() -> None:
    s = await serve(HttpLimits(header_timeout=0.2, idle_timeout=0.2))
    try:
        slow = await Client.connect(s.port)
        await slow.send(b"GET / HTTP/1.1\r\nHost:")  # never finishes its head
        idle = await Client.connect(s.port)
        await idle.send(b"GET / HTTP/1.1\r\n\r\n")
        assert (await idle.reply()).status == 200
        # The once-a-second sweep closes both, well within IO_TIMEOUT.
        assert await slow.closed()
        assert await idle.closed()
    finally:
        await s.server.close()


async def test_connection_limit_per_tap() -> None:
    s = await serve(HttpLimits(max_connections_per_tap=2))
    try:
        a = await Client.connect(s.port)
        b = await Client.connect(s.port)
        for c in (a, b):
            await c.send(b"GET / HTTP/1.1\r\n\r\n")
            assert (await c.reply()).status == 200
        third = await Client.connect(s.port)
        r = await third.reply()
        assert r.status == 503 and await third.closed()
        a.close()
        # A freed slot is usable again (wait for the server to see the close).
        for _ in range(100):
            if s.server.open_connections < 2:
                break
            await asyncio.sleep(0.01)
        r, d = await request(s.port, b"GET / HTTP/1.1\r\n\r\n")
        assert r.status == 200
        b.close()
        d.close()
    finally:
        await s.server.close()


async def test_two_listeners_two_identities() -> None:
    handler = Recorder()
    server = GuestHttpServer(handler)
    socks = [listening_socket(), listening_socket()]
    ids = [TapIdentity("tapa", 3, "i-a"), TapIdentity("tapb", 4, "i-b")]
    try:
        for sock, ident in zip(socks, ids, strict=True):
            await server.add_listener(sock, ident)
        for sock, ident in zip(socks, ids, strict=True):
            # Headers claiming another identity change nothing.
            r, c = await request(sock.getsockname()[1],
                                 b"GET / HTTP/1.1\r\nX-Instance-ID: i-evil\r\n"
                                 b"X-Forwarded-For: 10.0.0.9\r\n\r\n")
            assert r.body.startswith(ident.instance_id.encode() + b" ")
            c.close()
    finally:
        await server.close()


async def test_remove_listener_aborts_in_flight() -> None:
    handler = Recorder()
    server = GuestHttpServer(handler)
    sock = listening_socket()
    port = sock.getsockname()[1]
    listener = await server.add_listener(sock, TAP)
    c = await Client.connect(port)
    await c.send(b"GET /slow HTTP/1.1\r\n\r\n")
    while not handler.seen:
        await asyncio.sleep(0.01)
    await server.remove_listener(listener)
    assert await c.closed()
    with pytest.raises(OSError):
        await Client.connect(port)
    await server.close()


async def test_shutdown_lets_in_flight_finish() -> None:
    s = await serve()
    c = await Client.connect(s.port)
    await c.send(b"GET /slow HTTP/1.1\r\n\r\n")
    while not s.handler.seen:
        await asyncio.sleep(0.01)
    shutdown = asyncio.create_task(s.server.shutdown(grace=IO_TIMEOUT))
    await asyncio.sleep(0.05)
    s.handler.gate.set()
    r = await c.reply()
    assert r.status == 200 and r.headers["connection"] == "close"
    await shutdown
    assert await c.closed()


def _server_socket_ttl(server: GuestHttpServer) -> int:
    (conn,) = server._connections
    return int(conn.sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL))


async def test_ip_ttl_for_one_response_then_restored(served: Served) -> None:
    c = await Client.connect(served.port)
    await c.send(b"GET /plain HTTP/1.1\r\n\r\n")
    await c.reply()
    default = _server_socket_ttl(served.server)
    assert default > 1
    await c.send(b"PUT /ttl HTTP/1.1\r\n\r\n")
    assert (await c.reply()).body == b"token"
    assert _server_socket_ttl(served.server) == 1
    # The token bytes have been received and (on loopback, at once) acknowledged.
    for _ in range(100):
        await c.send(b"GET /after HTTP/1.1\r\n\r\n")
        await c.reply()
        if _server_socket_ttl(served.server) == default:
            break
        await asyncio.sleep(0.01)
    assert _server_socket_ttl(served.server) == default
    c.close()


async def test_peer_not_reading_pauses_processing() -> None:
    big = b"x" * (8 << 20)  # larger than any loopback socket buffer

    def handler(identity: TapIdentity, req: Request) -> HandlerResult:
        seen.append(req.path)
        return Response(200, big)

    seen: list[str] = []
    server = GuestHttpServer(handler)
    sock = listening_socket()
    await server.add_listener(sock, TAP)
    try:
        c = await Client.connect(sock.getsockname()[1])
        await c.send(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(6)))
        for _ in range(20):
            await asyncio.sleep(0.02)
        # Socket buffers hold a few MiB at most: the server stopped answering.
        assert 1 <= len(seen) < 6
        for _ in range(6):
            r = await c.reply()
            assert r.status == 200 and len(r.body) == len(big)
        assert len(seen) == 6
        c.close()
    finally:
        await server.close()


def _sniff_ttls(sniffer: socket.socket, port: int, marker: bytes, deadline: float
                ) -> list[int]:
    """IP TTLs of TCP segments from 127.0.0.1:port on lo whose payload has ``marker``."""
    import select
    import time
    ttls: list[int] = []
    while time.monotonic() < deadline and not ttls:
        ready, _, _ = select.select([sniffer], [], [], 0.1)
        if not ready:
            continue
        frame = sniffer.recv(65535)
        ip = frame[14:]
        if len(ip) < 40 or ip[9] != socket.IPPROTO_TCP:
            continue
        ihl = (ip[0] & 0x0F) * 4
        sport = int.from_bytes(ip[ihl:ihl + 2], "big")
        if sport == port and marker in ip[ihl:]:
            ttls.append(ip[8])
    return ttls


@pytest.mark.root
async def test_token_segment_leaves_with_ttl_1_on_the_wire(served: Served) -> None:
    import time
    eth_p_all = 0x0003
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
    try:
        sniffer.bind(("lo", 0))
        sniffer.setblocking(False)
        c = await Client.connect(served.port)
        await c.send(b"PUT /ttl HTTP/1.1\r\n\r\n")
        assert (await c.reply()).body == b"token"
        loop = asyncio.get_running_loop()
        ttls = await loop.run_in_executor(None, _sniff_ttls, sniffer, served.port, b"token",
                                          time.monotonic() + IO_TIMEOUT)
        assert ttls and set(ttls) == {1}
        # A later ordinary response leaves with the default TTL again.
        await c.send(b"GET /plain-marker HTTP/1.1\r\n\r\n")
        await c.reply()
        ttls = await loop.run_in_executor(None, _sniff_ttls, sniffer, served.port,
                                          b"plain-marker", time.monotonic() + IO_TIMEOUT)
        assert ttls and ttls[0] > 1
        c.close()
    finally:
        sniffer.close()


async def test_expected_mark_cross_check() -> None:
    handler = Recorder()
    server = GuestHttpServer(handler)
    wrong, right = listening_socket(), listening_socket()
    try:
        # Loopback connections carry mark 0 (nothing marks them).
        await server.add_listener(wrong, TAP, expected_mark=0x4D000007)
        await server.add_listener(right, TapIdentity("tapz", 8, "i-z"), expected_mark=0)
        c = await Client.connect(wrong.getsockname()[1])
        await c.send(b"GET / HTTP/1.1\r\n\r\n")
        assert await c.closed()
        r, c2 = await request(right.getsockname()[1], b"GET / HTTP/1.1\r\n\r\n")
        assert r.status == 200 and r.body.startswith(b"i-z ")
        c2.close()
        assert [i.instance_id for i, _ in handler.seen] == ["i-z"]
    finally:
        await server.close()
