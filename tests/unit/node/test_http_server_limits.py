"""Slow and greedy guest clients against the HTTP server's documented limits
(``interceptor/node/limits.py``, ``http_connection.py``), over real sockets.

Regressions of issue 15: a stream of empty lines kept a connection open
forever (each one restarted the header deadline); a partial request behind
a keep-alive answer got the idle timeout instead of the header timeout;
pipelined large answers that are never read were copied per connection.
"""

from __future__ import annotations

import asyncio
import resource
import time

from interceptor.node.http_connection import WRITE_HIGH_WATER
from interceptor.node.http_server import GuestHttpServer, HandlerResult, Request, Response
from interceptor.node.http_server import TapIdentity as Identity
from interceptor.node.limits import HttpLimits
from tests.unit.node.test_node_http_server import TAP, Client, listening_socket, serve


async def test_regression_crlf_crlf_crlf_stream_is_refused() -> None:
    s = await serve(HttpLimits(header_timeout=1.0))
    try:
        c = await Client.connect(s.port)
        await c.send(b"\r\n" * 3)
        r = await c.reply()
        assert r.status == 400 and await c.closed()
        assert s.handler.seen == []
    finally:
        await s.server.close()


async def test_regression_one_header_byte_per_200ms_is_cut_at_header_timeout() -> None:
    """Slowloris: the head trickles in; nothing restarts the header deadline."""
    s = await serve(HttpLimits(header_timeout=1.0, idle_timeout=30.0))
    try:
        c = await Client.connect(s.port)
        started = time.monotonic()
        await c.send(b"GET / HTTP/1.1\r\n")
        closed_after = None
        for byte in b"X-Slow: " + b"a" * 100:
            try:
                await c.send(bytes([byte]))
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
            if c.reader.at_eof() or c.writer.is_closing():
                closed_after = time.monotonic() - started
                break
            await asyncio.sleep(0.2)
            if s.server.open_connections == 0:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 3.5, closed_after
        assert s.handler.seen == []
    finally:
        await s.server.close()


async def test_regression_partial_request_behind_keep_alive_answer_gets_header_timeout(
) -> None:
    s = await serve(HttpLimits(header_timeout=0.5, idle_timeout=30.0))
    try:
        c = await Client.connect(s.port)
        await c.send(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\nX-")
        assert (await c.reply()).status == 200
        started = time.monotonic()
        assert await c.closed()  # well before the 30 s idle timeout
        assert time.monotonic() - started < 3.0
    finally:
        await s.server.close()


async def test_maximal_headers_are_served_one_more_is_431() -> None:
    s = await serve()
    try:
        limits = s.server.limits
        value = b"v" * 100
        lines = b"".join(b"X-%02d: %s\r\n" % (i, value) for i in range(limits.max_headers))
        head = b"GET /max HTTP/1.1\r\n" + lines + b"\r\n"
        assert len(head) <= limits.max_head_bytes
        c = await Client.connect(s.port)
        await c.send(head)
        assert (await c.reply()).status == 200
        await c.send(b"GET /more HTTP/1.1\r\n" + lines + b"X-Last: 1\r\n\r\n")
        r = await c.reply()
        assert r.status == 431 and await c.closed()
    finally:
        await s.server.close()


async def test_never_reading_pipeliner_holds_shared_bodies_not_copies() -> None:
    """64 connections x 50 pipelined requests for a 1 MiB answer, never read:
    user-space memory per connection stays at one answer + WRITE_HIGH_WATER,
    and it is the handler's one body, referenced, not copied."""
    body = b"y" * (1 << 20)
    handled: list[str] = []

    def handler(identity: Identity, req: Request) -> HandlerResult:
        handled.append(req.path)
        return Response(200, body)

    server = GuestHttpServer(handler)
    sock = listening_socket()
    await server.add_listener(sock, TAP)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clients = []
    try:
        for _ in range(64):
            c = await Client.connect(sock.getsockname()[1])
            await c.send(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(50)))
            clients.append(c)
        for _ in range(50):
            await asyncio.sleep(0.02)
        conns = list(server._connections)
        assert len(conns) == 64
        for conn in conns:
            assert conn.unsent_bytes <= WRITE_HIGH_WATER + len(body) + 512
        assert len(handled) < 64 * 50 // 2  # processing paused (3,200 were asked)
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        assert grown_kib < 64 * 1024, grown_kib  # not 64 x a copy of a pipeline of bodies
    finally:
        for c in clients:
            c.close()
        await server.close()


async def test_hold_response_defers_the_connections_next_request() -> None:
    """A 429 with ``hold``: the connection's next request waits in the kernel."""
    def handler(identity: Identity, req: Request) -> HandlerResult:
        if req.path == "/throttle":
            return Response(429, b"slow down\n", hold=0.5)
        return Response(200, b"ok")

    server = GuestHttpServer(handler)
    sock = listening_socket()
    await server.add_listener(sock, TAP)
    try:
        c = await Client.connect(sock.getsockname()[1])
        started = time.monotonic()
        await c.send(b"GET /throttle HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        assert (await c.reply()).status == 429
        assert (await c.reply()).status == 200
        assert time.monotonic() - started >= 0.45
        c.close()
    finally:
        await server.close()


async def test_regression_head_latest_me_00t_a_data_400_has_no_body() -> None:
    """Found by the e2e fuzzer (``HEAD /latest/me%00t%a-{data/``): a refused
    HEAD got "400 Bad Request" *with* a body, which a client reading HEAD
    answers takes for the start of the next response."""
    s = await serve()
    try:
        c = await Client.connect(s.port)
        await c.send(b"HEAD /latest/me%00t%a-{data/ HTTP/1.0\r\nUpgrade: 5\r\n\r\n")
        r = await c.reply(head=True)
        assert r.status == 400 and r.headers["connection"] == "close"
        assert await c.closed()  # nothing after the head: no stray body bytes
    finally:
        await s.server.close()
