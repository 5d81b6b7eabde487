"""The guest HTTP/1.1 server's socket loop: per-tap listeners, batched
accept, per-tap connection limits and one deadline sweep per second.

Why not aiohttp here: on this kind of machine aiohttp accepted ~3,300 new
connections/s where a plain ``asyncio.Protocol`` did ~15,000-18,000, and
most metadata clients open one connection per request (DESIGN §4). This
server goes one step further than a Protocol: it registers the listening
socket with the event loop itself, accepts in batches, reads the request
straight after ``accept`` (it has usually arrived already), and answers a
handler's synchronous ``Response`` in the same callback: no transport, no
task, no future per connection. A task is created only when the handler
returns a coroutine (cache miss, long-poll, write), one request at a time
per connection.

The parts, split along their seams:

* ``http_messages.py`` — ``TapIdentity``, ``Request``, ``Response``;
* ``http_parser.py`` — the strict request parser (bytes → Requests);
* ``http_connection.py`` — one connection's state machine (reads, pipelining,
  back-pressure, deadlines, writes);
* this module — listeners, accept, limits, the sweep.

The identity of every request is the ``TapIdentity`` of the listener it
arrived on, fixed when the listener is added; nothing the guest sends
(source address, headers) changes it. A guest's garbage only ever affects
its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import time

from interceptor.node.http_connection import GuestConnection
from interceptor.node.http_messages import (
    TEXT_PLAIN,
    Handler,
    HandlerResult,
    Request,
    Response,
    TapIdentity,
    error_bytes,
)
from interceptor.node.limits import HttpLimits
from interceptor.node.metrics import NodeMetrics

__all__ = ["TEXT_PLAIN", "GuestHttpServer", "GuestListener", "Handler", "HandlerResult",
           "Request", "Response", "TapIdentity"]

log = logging.getLogger(__name__)

_SWEEP_INTERVAL = 1.0
_ACCEPT_BATCH = 64
_ACCEPT_PAUSE = 1.0


class GuestListener:
    """One listening socket served for one tap; see ``GuestHttpServer.add_listener``."""

    def __init__(self, identity: TapIdentity, sock: socket.socket,
                 expected_mark: int | None = None) -> None:
        self.identity = identity
        self.sock = sock
        self.expected_mark = expected_mark
        self.connections: set[GuestConnection] = set()
        self.accepting = False
        self.closed = False


class GuestHttpServer:
    """Serves any number of per-tap listening sockets with one handler.

    Lifecycle: ``add_listener`` per tap (the server takes ownership of the
    socket and closes it), ``remove_listener`` when the tap goes (closes its
    connections too), ``shutdown(grace)`` or ``close()`` at exit.
    """

    def __init__(self, handler: Handler, *, limits: HttpLimits | None = None,
                 metrics: NodeMetrics | None = None, server_name: str = "interceptor") -> None:
        self.handler = handler
        self.limits = limits or HttpLimits()
        self.metrics = metrics
        self._server_name = server_name
        self._listeners: set[GuestListener] = set()
        self._connections: set[GuestConnection] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._draining = False
        self._date_second = -1
        self._date_line = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepted = 0
        self._refused = 0

    def _date_server(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = (f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
                               f"Server: {self._server_name}\r\n").encode("latin-1")
        return self._date_line

    def _count_error(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.http_errors.labels(reason).inc()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def add_listener(self, sock: socket.socket, identity: TapIdentity,
                           backlog: int = 512, *,
                           expected_mark: int | None = None) -> GuestListener:
        """Serve ``sock`` (a bound TCP socket, listening or not); every request
        on it is attributed to ``identity``. The server owns the socket now.

        ``expected_mark``: when set, every accepted connection must carry this
        packet mark (``SO_MARK``, inherited from the SYN with
        ``net.ipv4.tcp_fwmark_accept=1``); others are closed unanswered. A
        cross-check that the datapath steered the connection from this tap.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        sock.setblocking(False)
        sock.listen(backlog)
        listener = GuestListener(identity, sock, expected_mark)
        # One tap, one connection limit: its IPv4 and IPv6 listeners share the set.
        sibling = next((o for o in self._listeners if o.identity == identity), None)
        if sibling is not None:
            listener.connections = sibling.connections
        self._listeners.add(listener)
        self._start_accepting(listener)
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(_SWEEP_INTERVAL, self._sweep)
        if self.metrics is not None:
            self.metrics.managed_taps.set(len({o.identity for o in self._listeners}))
        return listener

    def _start_accepting(self, listener: GuestListener) -> None:
        if not listener.closed and not listener.accepting and self._loop is not None:
            self._loop.add_reader(listener.sock.fileno(), self._on_accept, listener)
            listener.accepting = True

    def _stop_accepting(self, listener: GuestListener) -> None:
        if listener.accepting and self._loop is not None:
            self._loop.remove_reader(listener.sock.fileno())
            listener.accepting = False

    def _on_accept(self, listener: GuestListener) -> None:
        loop = self._loop
        assert loop is not None
        limit = self.limits.max_connections_per_tap
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: the listener stays readable, so stop
                # polling it for a moment instead of spinning.
                log.warning("accept on %s failed: %s", listener.identity.ifname, exc)
                self._count_error("accept_failed")
                self._stop_accepting(listener)
                loop.call_later(_ACCEPT_PAUSE, self._start_accepting, listener)
                return
            sock.setblocking(False)
            if len(listener.connections) >= limit:
                self._refused += 1
                with contextlib.suppress(OSError):
                    sock.send(error_bytes(503))
                sock.close()
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if (listener.expected_mark is not None and sock.getsockopt(
                        socket.SOL_SOCKET, socket.SO_MARK) != listener.expected_mark):
                    self._count_error("mark_mismatch")
                    sock.close()
                    continue
            except OSError:
                sock.close()
                continue
            self._accepted += 1
            GuestConnection(self, listener, sock, loop).start()

    async def remove_listener(self, listener: GuestListener) -> None:
        """Stop accepting on the tap, close its socket and abort its connections
        (long-polls too)."""
        self._listeners.discard(listener)
        self._stop_accepting(listener)
        if not listener.closed:
            listener.closed = True
            listener.sock.close()
        for conn in list(listener.connections):
            conn.abort()
        if self.metrics is not None:
            self.metrics.managed_taps.set(len({o.identity for o in self._listeners}))
        await asyncio.sleep(0)  # let cancelled request tasks unwind

    def listeners(self) -> list[GuestListener]:
        return list(self._listeners)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        expired = [c for c in self._connections if c.expired(now)]
        for conn in expired:
            self._count_error("timeout")
            conn.abort()
        if self.metrics is not None:
            self.metrics.open_connections.set(len(self._connections))
            # Counted here, not per connection: keeps the accept path lean.
            if self._accepted:
                self.metrics.connections.labels("accepted").inc(self._accepted)
            if self._refused:
                self.metrics.connections.labels("refused_limit").inc(self._refused)
        self._accepted = self._refused = 0
        if self._listeners or self._connections:
            self._sweep_handle = self._loop.call_later(_SWEEP_INTERVAL, self._sweep)
        else:
            self._sweep_handle = None

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace``
        seconds (responses then carry ``Connection: close``), then close."""
        self._draining = True
        for listener in list(self._listeners):
            self._stop_accepting(listener)
        for conn in list(self._connections):
            conn.close_when_idle()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await self.close()

    async def close(self) -> None:
        for listener in list(self._listeners):
            await self.remove_listener(listener)
        for conn in list(self._connections):
            conn.abort()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        await asyncio.sleep(0)
