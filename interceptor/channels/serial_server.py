"""The serial metadata server: one UNIX socket per bound VM, plus a TCP concentrator port.

Identity is the endpoint, never what the guest writes:

* **UNIX sockets** — ``<socket_dir>/<name>.sock`` for every serial binding
  the source reports (QEMU ``-chardev socket,path=…,server=off,reconnect=N``
  or libvirt ``<serial type='unix'><source mode='connect' …/>``). Fail
  closed: a name that is not bound has **no socket** (a hypervisor that
  connects gets ``ENOENT`` and no byte); a socket disappears, and its
  connections are closed, as soon as its binding goes or changes (another
  instance or generation). A VM whose metadata the platform disabled keeps
  its socket and gets ``disabled`` error packets. Sockets are created under a temporary name,
  given ``socket_mode`` (and ``socket_gid``) and renamed into place, so they never exist with
  wider permissions.
* **TCP concentrator** (``tcp_host:tcp_port``, 13370 by default; only when
  a ``concentrator_token`` is configured) — a serial concentrator in the
  VMware vSPC style connects out to us once per VM port and must send, before
  relaying any guest byte, one registration line
  ``REGISTER <name> <token>\\n``. A wrong token, an unbound name or no line
  within ``registration_timeout`` closes the connection without a byte.
  Everything after that line is the guest's stream, where a ``REGISTER``
  line is just garbage: the guest cannot change who it is.

Per VM (name) limits, so a hostile guest only hurts itself: requests per
second (``packet_rate``/``packet_burst``, excess dropped without an
answer), bytes read per second (``read_rate``; beyond it reading pauses and
the guest's writes back up), the parser's line bound (``max_line``), a
half-sent line dropped after ``partial_timeout`` seconds, an answer the
guest does not read within ``write_timeout`` ends the connection, and at
most ``max_connections`` connections per name. Answers are built by the
pure functions of ``serial_protocol`` and ``cloudsigma``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from interceptor.channels import cloudsigma, serial_protocol
from interceptor.channels.serial_protocol import CepkoRequest, Event, Packet, StreamParser
from interceptor.channels.sources import (
    MetadataDisabled,
    NotBound,
    SerialBinding,
    SerialSource,
    SourceUnavailable,
    valid_name,
)
from interceptor.node.limits import RateLimiter

log = logging.getLogger(__name__)

SOCKET_SUFFIX = ".sock"
_READ_CHUNK = 4096
_MAX_REGISTRATION = 256


@dataclass(frozen=True)
class SessionLimits:
    max_line: int = serial_protocol.MAX_LINE
    packet_rate: float = 10.0
    packet_burst: int = 20
    read_rate: float = 64 * 1024.0
    """Bytes per second per VM; 0 disables the bound."""
    partial_timeout: float = 10.0
    write_timeout: float = 30.0
    max_connections: int = 4
    registration_timeout: float = 5.0
    max_pending_registrations: int = 64


@dataclass
class SerialStats:
    """Counters since start, exported by ``serial_operator`` (no per-VM labels:
    names come and go, the label set must stay bounded)."""

    answers: int = 0
    errors: int = 0
    garbage: int = 0
    overlong: int = 0
    half_sent: int = 0
    rate_limited: int = 0
    refused_connections: int = 0
    answers_by_request: dict[str, int] = field(default_factory=dict)
    """``REQUEST_METADATA`` … or ``cloudsigma`` → answers."""
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    source_up: bool = False
    """The last read of the bindings succeeded."""

    def count_error(self, reason: str) -> None:
        self.errors += 1
        self.errors_by_reason[reason] = self.errors_by_reason.get(reason, 0) + 1


class _ByteBudget:
    """Lazy token bucket over bytes: how long to pause after reading ``n`` bytes."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def delay(self, n: int) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class _Endpoint:
    """The listening UNIX socket of one binding and its live connections."""

    def __init__(self, binding: SerialBinding, path: Path) -> None:
        self.binding = binding
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.inode: int | None = None
        self.writers: set[asyncio.StreamWriter] = set()


class SerialServer:
    def __init__(self, source: SerialSource, socket_dir: str | Path, *,
                 limits: SessionLimits | None = None, socket_mode: int = 0o660,
                 socket_gid: int | None = None,
                 concentrator_token: str | None = None) -> None:
        self._source = source
        self.socket_dir = Path(socket_dir)
        self.limits = limits or SessionLimits()
        self._mode = socket_mode
        self._gid = socket_gid
        self._token = concentrator_token.encode() if concentrator_token else None
        self._bindings: dict[str, SerialBinding] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._tcp_writers: dict[str, set[asyncio.StreamWriter]] = {}
        self._tcp: asyncio.AbstractServer | None = None
        self._pending = 0
        self._lock = asyncio.Lock()
        self._packets = RateLimiter(self.limits.packet_rate, self.limits.packet_burst)
        self._budgets: dict[str, _ByteBudget] = {}
        self.stats = SerialStats()

    # -- bindings -------------------------------------------------------------------

    def socket_path(self, name: str) -> Path:
        return self.socket_dir / (name + SOCKET_SUFFIX)

    async def refresh(self) -> bool:
        """Re-read the bindings and apply them; False (last known kept) if the source failed."""
        try:
            bindings = dict(await self._source.bindings())
        except SourceUnavailable as exc:
            log.warning("serial bindings: source unavailable (%s); keeping the last known", exc)
            self.stats.source_up = False
            return False
        self.stats.source_up = True
        await self.apply(bindings)
        return True

    @property
    def served(self) -> int:
        """Sockets listening now."""
        return len(self._endpoints)

    @property
    def open_connections(self) -> int:
        return (sum(len(e.writers) for e in self._endpoints.values())
                + sum(len(w) for w in self._tcp_writers.values()))

    async def apply(self, bindings: Mapping[str, SerialBinding]) -> None:
        async with self._lock:
            wanted = {n: b for n, b in bindings.items() if valid_name(n) and b.name == n}
            for name in list(self._endpoints):
                now = wanted.get(name)
                if now is None or now.identity != self._endpoints[name].binding.identity:
                    await self._stop(name)
                else:
                    self._endpoints[name].binding = now
            for name, writers in list(self._tcp_writers.items()):
                now, before = wanted.get(name), self._bindings.get(name)
                if now is None or before is None or now.identity != before.identity:
                    for writer in writers:
                        writer.close()
            self._bindings = wanted
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            for name, binding in wanted.items():
                if name not in self._endpoints:
                    await self._start(binding)
            for name in list(self._budgets):
                if name not in wanted:
                    del self._budgets[name]
                    self._packets.forget(name)

    async def _start(self, binding: SerialBinding) -> None:
        endpoint = _Endpoint(binding, self.socket_path(binding.name))
        if endpoint.path.is_symlink() or (endpoint.path.exists()
                                          and not endpoint.path.is_socket()):
            log.error("serial: %s exists and is not a socket; not serving %s",
                      endpoint.path, binding.name)
            return
        temp = self.socket_dir / f".{binding.name}.{secrets.token_hex(4)}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temp))
            if self._gid is not None:
                os.chown(temp, -1, self._gid)
            os.chmod(temp, self._mode)
            os.replace(temp, endpoint.path)  # also replaces a stale socket of an earlier run
            endpoint.inode = os.stat(endpoint.path).st_ino
            sock.setblocking(False)

            async def accept(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
                await self._accept_unix(endpoint, reader, writer)

            endpoint.server = await asyncio.start_unix_server(accept, sock=sock)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                temp.unlink()
            log.error("serial: cannot listen on %s: %s", endpoint.path, exc)
            return
        self._endpoints[binding.name] = endpoint
        log.info("serial: serving %s on %s (instance %s)", binding.name, endpoint.path,
                 binding.instance_id)

    async def _stop(self, name: str) -> None:
        endpoint = self._endpoints.pop(name)
        if endpoint.server is not None:
            endpoint.server.close()
        for writer in list(endpoint.writers):
            writer.close()
        with contextlib.suppress(OSError):
            if os.stat(endpoint.path).st_ino == endpoint.inode:
                endpoint.path.unlink()
        log.info("serial: stopped serving %s", name)

    async def close(self) -> None:
        async with self._lock:
            for name in list(self._endpoints):
                await self._stop(name)
            if self._tcp is not None:
                self._tcp.close()
                self._tcp = None
            for writers in self._tcp_writers.values():
                for writer in writers:
                    writer.close()

    # -- connections ----------------------------------------------------------------

    async def _accept_unix(self, endpoint: _Endpoint, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        if (self._endpoints.get(endpoint.binding.name) is not endpoint
                or len(endpoint.writers) >= self.limits.max_connections):
            self.stats.refused_connections += 1
            writer.close()
            return
        endpoint.writers.add(writer)
        try:
            await self._session(endpoint.binding, reader, writer, b"")
        finally:
            endpoint.writers.discard(writer)

    async def start_tcp(self, host: str, port: int) -> int:
        """Open the concentrator port; returns the bound port (useful with ``port=0``)."""
        if self._token is None:
            raise ValueError("the concentrator port needs a concentrator token")
        self._tcp = await asyncio.start_server(self._accept_tcp, host, port)
        bound = int(self._tcp.sockets[0].getsockname()[1])
        log.info("serial: concentrator port %s:%d", host, bound)
        return bound

    async def _registration(self, reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
        """(name, bytes after the line) of a valid registration, else None."""
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.registration_timeout
        while b"\n" not in data:
            remaining = deadline - loop.time()
            if remaining <= 0 or len(data) > _MAX_REGISTRATION:
                return None
            try:
                chunk = await asyncio.wait_for(reader.read(_MAX_REGISTRATION), remaining)
            except TimeoutError:
                return None
            if not chunk:
                return None
            data += chunk
        line, _, rest = data.partition(b"\n")
        words = line.rstrip(b"\r").split(b" ")
        if len(words) != 3 or words[0] != b"REGISTER" or self._token is None:
            return None
        # Constant time whatever the name: a probe learns nothing from timing.
        token_ok = hmac.compare_digest(words[2], self._token)
        name = words[1].decode("ascii", "replace")
        if not token_ok or name not in self._bindings:
            return None
        return name, rest

    async def _accept_tcp(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if self._pending >= self.limits.max_pending_registrations:
            self.stats.refused_connections += 1
            writer.close()
            return
        self._pending += 1
        try:
            registered = await self._registration(reader)
        finally:
            self._pending -= 1
        if registered is None or len(self._tcp_writers.get(registered[0], ())) >= (
                self.limits.max_connections):
            self.stats.refused_connections += 1
            writer.close()
            return
        name, rest = registered
        writers = self._tcp_writers.setdefault(name, set())
        writers.add(writer)
        try:
            await self._session(self._bindings[name], reader, writer, rest)
        finally:
            writers.discard(writer)
            if not writers:
                self._tcp_writers.pop(name, None)

    async def _session(self, binding: SerialBinding, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, first: bytes) -> None:
        parser = StreamParser(self.limits.max_line)
        budget = self._budgets.setdefault(binding.name, _ByteBudget(self.limits.read_rate))
        data = first
        try:
            while True:
                if data:
                    events = parser.feed(data)
                    self._count(parser)
                    for event in events:
                        if not await self._handle(binding, event, writer):
                            return
                    pause = budget.delay(len(data))
                    if pause > 0:
                        await asyncio.sleep(pause)
                timeout = self.limits.partial_timeout if parser.pending else None
                try:
                    data = await asyncio.wait_for(reader.read(_READ_CHUNK), timeout)
                except TimeoutError:
                    parser.reset()
                    self.stats.half_sent += 1
                    data = b""
                    continue
                if not data:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _count(self, parser: StreamParser) -> None:
        self.stats.garbage += parser.garbage
        self.stats.overlong += parser.overlong
        parser.garbage = parser.overlong = 0

    async def _handle(self, binding: SerialBinding, event: Event,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must end."""
        if not self._packets.allow(binding.name):
            self.stats.rate_limited += 1
            return True
        current = self._bindings.get(binding.name)
        if current is None or current.identity != binding.identity:
            return False
        try:
            reply = await self._reply(current, event)
        except NotBound:
            return False
        writer.write(reply)
        try:
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
        except TimeoutError:
            log.info("serial %s: guest does not read its answers; closing", binding.name)
            return False
        return True

    async def _reply(self, binding: SerialBinding, event: Event) -> bytes:
        if isinstance(event, Packet):
            refused = serial_protocol.refusal_reason(event)
            if refused is not None:
                self.stats.count_error(refused)
                return serial_protocol.error_packet(refused, event.code)
        reason = None
        try:
            doc = await self._source.document(binding)
            if not binding.metadata_enabled or not doc["metadata_enabled"]:
                raise MetadataDisabled(binding.name)
        except MetadataDisabled:
            reason = "disabled"
        except SourceUnavailable as exc:
            log.info("serial %s: source unavailable: %s", binding.name, exc)
            reason = "unavailable"
        current = self._bindings.get(binding.name)
        if current is None or current.identity != binding.identity:
            raise NotBound(binding.name)  # changed while the document was fetched
        if reason is not None:
            self.stats.count_error(reason)
            if isinstance(event, CepkoRequest):
                return cloudsigma.error_answer(reason)
            return serial_protocol.error_packet(reason, event.code)
        if isinstance(event, CepkoRequest):
            kind, reply = "cloudsigma", cloudsigma.answer(event.key, doc)
        else:
            kind, reply = event.code, serial_protocol.answer(event, doc)
            if reply.startswith(b"!!" + serial_protocol.ERROR.encode() + b"#"):
                self.stats.count_error("not-found")
                return reply
        self.stats.answers += 1
        self.stats.answers_by_request[kind] = self.stats.answers_by_request.get(kind, 0) + 1
        return reply
