"""One guest TCP connection: its state machine, driven by readiness callbacks.

No asyncio transport: the connection reads and writes its non-blocking
socket itself (recv straight after accept, one ``sendmsg`` per response).
On 127.0.0.1 a bare loop of this kind did ~1.3-1.6x the new connections per
second of a bare asyncio Protocol server. The parser is
``http_parser.RequestReader``; the socket loop that accepts connections and
sweeps deadlines is ``http_server.GuestHttpServer``.

Memory per connection is bounded: reading pauses while more than head +
body limit is buffered behind a busy request; unsent responses are kept as
references to the (memoized, shared) response bodies, never copied, and
processing pauses while more than ``WRITE_HIGH_WATER`` bytes of them wait
for a peer that does not read — so a connection holds at most that plus
one response (``tests/e2e/test_hostile_clients.py`` measures it).

Deadlines: ``header_timeout`` runs from the first byte of a request —
empty lines before a request line included, and nothing restarts it until
the request is complete — and ``idle_timeout`` between requests and for a
peer that stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from interceptor.node.http_messages import Request, Response, error_bytes
from interceptor.node.http_parser import ProtocolError, RequestReader

if TYPE_CHECKING:
    from interceptor.node.http_server import GuestHttpServer, GuestListener

log = logging.getLogger(__name__)

_SIOCOUTQ = termios.TIOCOUTQ  # same ioctl number: bytes not yet acknowledged (TCP)
_RECV_BYTES = 32768
WRITE_HIGH_WATER = 65536
"""Stop processing pipelined requests while more than this waits to be sent."""
_IOV_MAX = 64


class GuestConnection:
    """One guest TCP connection; see the module docstring."""

    __slots__ = ("_busy", "_close_after_flush", "_closed", "_closing", "_continue_sent",
                 "_deadline", "_eof", "_fd", "_held", "_in_request", "_listener", "_loop",
                 "_read_paused", "_reader", "_reading", "_server", "_sock", "_task",
                 "_ttl_override", "_wbytes", "_wqueue", "_writing")

    def __init__(self, server: GuestHttpServer, listener: GuestListener,
                 sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._listener = listener
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._reader = RequestReader(server.limits)
        self._wqueue: deque[memoryview] = deque()
        self._wbytes = 0
        self._busy = False
        self._closing = False  # no more requests are processed
        self._closed = False  # socket closed
        self._close_after_flush = False
        self._eof = False
        self._reading = False
        self._writing = False
        self._read_paused = False
        self._held: asyncio.TimerHandle | None = None  # a throttled connection waits
        self._in_request = True  # the header deadline below runs
        self._continue_sent = False
        self._task: asyncio.Task[None] | None = None
        self._deadline = loop.time() + server.limits.header_timeout
        self._ttl_override = False

    # -- socket I/O ---------------------------------------------------------------------

    def start(self) -> None:
        self._listener.connections.add(self)
        self._server._connections.add(self)
        # Most clients send their request right behind the handshake: try to
        # read it now and save a trip through the selector.
        self._on_readable()
        if not self._closed and not self._eof:
            self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        if on and not self._reading and not self._closed and not self._eof:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        elif not on and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if data:
            self._data_received(data)
        else:
            self._eof_received()

    def _write(self, *chunks: bytes) -> None:
        if self._closed:
            return
        if not self._wqueue:
            try:
                sent = self._sock.sendmsg(chunks)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort()
                return
        else:
            sent = 0
        for chunk in chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
                continue
            view = memoryview(chunk)[sent:] if sent else memoryview(chunk)
            sent = 0
            self._wqueue.append(view)
            self._wbytes += len(view)
        if self._wqueue and not self._writing:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True

    def _on_writable(self) -> None:
        queue = self._wqueue
        try:
            sent = self._sock.sendmsg([queue[i] for i in range(min(len(queue), _IOV_MAX))])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        self._wbytes -= sent
        while sent:
            head = queue[0]
            if sent >= len(head):
                sent -= len(head)
                queue.popleft()
            else:
                queue[0] = head[sent:]
                sent = 0
        if queue:
            return
        self._loop.remove_writer(self._fd)
        self._writing = False
        if self._close_after_flush:
            self._finalize()
        elif not self._busy and not self._closing:
            self._process()

    @property
    def _write_paused(self) -> bool:
        return self._wbytes > WRITE_HIGH_WATER

    @property
    def unsent_bytes(self) -> int:
        """Response bytes queued in user space (the kernel's buffer not included)."""
        return self._wbytes

    @property
    def buffered_bytes(self) -> int:
        """Request bytes received and not yet parsed."""
        return len(self._reader.buf)

    def _eof_received(self) -> None:
        self._eof = True
        self._set_reading(False)  # a socket at EOF stays readable: stop polling it
        if self._busy:
            return  # answer the request in flight, then close (half-close)
        self._process()
        if not self._busy:
            self._close()

    def _close(self) -> None:
        """Close after anything buffered has been sent."""
        self._closing = True
        self._set_reading(False)
        if self._wqueue:
            # A peer that never reads must not hold the socket: the sweep aborts
            # it after idle_timeout.
            self._close_after_flush = True
            self._deadline = self._loop.time() + self._server.limits.idle_timeout
        else:
            self._finalize()

    def abort(self) -> None:
        """Close now, dropping unsent data and cancelling the request in flight."""
        self._closing = True
        self._finalize()

    def _finalize(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._set_reading(False)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._wqueue.clear()
        self._wbytes = 0
        if self._held is not None:
            self._held.cancel()
            self._held = None
        self._sock.close()
        self._listener.connections.discard(self)
        self._server._connections.discard(self)
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    # -- request processing -------------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        if self._closing:
            return
        reader = self._reader
        if not self._in_request and reader.idle and not self._busy:
            # A new request starts: it gets header_timeout from its first byte,
            # and only its completion (``_respond``) ends that deadline.
            self._in_request = True
            self._deadline = self._loop.time() + self._server.limits.header_timeout
        reader.feed(data)
        if self._busy or self._write_paused or self._held is not None:
            limits = self._server.limits
            if len(reader.buf) > limits.max_head_bytes + limits.max_body_bytes:
                self._read_paused = True
                self._set_reading(False)
            return
        self._process()

    def _process(self) -> None:
        """Answer every complete buffered request until one goes async."""
        reader = self._reader
        while (not self._busy and not self._closing and not self._write_paused
               and self._held is None):
            try:
                request = reader.next_request(self._eof)
            except ProtocolError as err:
                self._fail(err)
                return
            if request is None:
                pending = reader.pending
                if pending is not None:
                    self._maybe_send_continue(pending)
                break
            self._continue_sent = False
            self._dispatch(request)
        if self._closing:
            return
        if (self._read_paused and not self._busy and not self._write_paused
                and self._held is None):
            self._read_paused = False
            self._set_reading(True)
        if not self._busy and self._eof and reader.pending is None and not reader.buf:
            # Peer finished sending and everything complete has been answered.
            self._close()

    def _maybe_send_continue(self, request: Request) -> None:
        if (not self._continue_sent and not request.http10
                and request.headers.get("expect", "").lower() == "100-continue"):
            self._continue_sent = True
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _dispatch(self, request: Request) -> None:
        server = self._server
        try:
            result = server.handler(self._listener.identity, request)
        except Exception:
            log.exception("guest handler failed for %s on %s", request,
                          self._listener.identity.ifname)
            result = Response(500, b"Internal Server Error\n", close=True)
        if isinstance(result, Response):
            self._respond(request, result)
            return
        self._busy = True
        self._task = self._loop.create_task(self._run(request, result))

    async def _run(self, request: Request,
                   pending: Coroutine[Any, Any, Response]) -> None:
        try:
            response = await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("guest handler failed for %s on %s", request,
                          self._listener.identity.ifname)
            response = Response(500, b"Internal Server Error\n", close=True)
        self._task = None
        self._busy = False
        if self._closing:
            return
        self._respond(request, response)
        if not self._closing:
            self._process()

    def _respond(self, request: Request, response: Response) -> None:
        if response.reset:
            # SO_LINGER 0: close() sends an RST and no byte of a response.
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
            self.abort()
            return
        keep = (request.keep_alive and not response.close and not self._eof
                and not self._server._draining)
        if response.ip_ttl is not None:
            self._set_ttl(response.ip_ttl)
        elif self._ttl_override:
            self._maybe_restore_ttl()
        conn = b"\r\n" if keep else b"Connection: close\r\n\r\n"
        head = response.head_bytes() + self._server._date_server() + conn
        if request.method == "HEAD" or not response.body:
            self._write(head)
        else:
            self._write(head, response.body)
        if not keep:
            self._close()
            return
        if response.hold > 0:
            self._set_reading(False)
            self._read_paused = True
            self._held = self._loop.call_later(response.hold, self._release)
        # Bytes of the next request already buffered start its header deadline now.
        self._in_request = not self._reader.idle
        limits = self._server.limits
        self._deadline = self._loop.time() + (limits.header_timeout if self._in_request
                                              else limits.idle_timeout)

    def _release(self) -> None:
        self._held = None
        if not self._closing and not self._busy:
            self._process()

    def _set_ttl(self, ttl: int) -> None:
        # The TTL of a TCP segment is read when the segment is built, which may be
        # after send() returns (and again for every retransmission), so the
        # override is restored only once every byte is acknowledged; until then
        # later responses on this connection also leave with this TTL.
        try:
            self._sock.setsockopt(*_hop_option(self._sock), ttl)
            self._ttl_override = True
        except OSError as exc:
            log.warning("cannot set IP TTL on a guest connection: %s", exc)

    def _maybe_restore_ttl(self) -> None:
        if self._wqueue:
            return
        try:
            raw = fcntl.ioctl(self._fd, _SIOCOUTQ, b"\0\0\0\0")
            if struct.unpack("i", raw)[0] == 0:
                self._sock.setsockopt(*_hop_option(self._sock), -1)  # route default
                self._ttl_override = False
        except OSError as exc:
            log.warning("cannot restore IP TTL on a guest connection: %s", exc)

    def _fail(self, err: ProtocolError) -> None:
        self._server._count_error(err.reason if err.status else "garbage")
        if err.status:
            self._write(error_bytes(err.status, self._reader.head_request))
        self._close()

    def expired(self, now: float) -> bool:
        return not self._busy and not self._closed and now > self._deadline

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def close_when_idle(self) -> None:
        """Close now if idle; otherwise after the in-flight response."""
        if not self._busy:
            self._close()


def _hop_option(sock: socket.socket) -> tuple[int, int]:
    """IPv4 TTL or IPv6 unicast hop limit: whichever the guest connected over."""
    if sock.family == socket.AF_INET6:
        return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS
    return socket.IPPROTO_IP, socket.IP_TTL
