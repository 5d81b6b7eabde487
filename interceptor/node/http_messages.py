"""What the guest HTTP server exchanges with its handler: the tap identity,
a parsed ``Request`` and a ``Response`` (its serialized head is cached, so a
memoized Response costs no formatting per request).

Split from ``http_server.py`` (the socket loop) and ``http_connection.py``
(the per-connection state machine); ``http_parser.py`` makes Requests.
"""

from __future__ import annotations

import http
import re
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

TEXT_PLAIN = "text/plain; charset=utf-8"
TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN_RE = re.compile(TCHARS + r"\Z")
NO_BODY_STATUSES = frozenset((204, 304))


@dataclass(frozen=True, slots=True)
class TapIdentity:
    """Who is asking: the tap a listener is bound to and its instance."""

    ifname: str
    ifindex: int
    instance_id: str


class Request:
    """One parsed guest request. Header names are lower case; repeated
    headers are joined with ``", "``. ``target`` is the request-target as
    sent (origin or absolute form); ``path`` is its percent-decoded path
    without the query; ``query`` is the raw query string."""

    __slots__ = ("body", "headers", "http10", "keep_alive", "method", "path", "query",
                 "target")

    def __init__(self, method: str, target: str, path: str, query: str, http10: bool,
                 headers: dict[str, str], keep_alive: bool, body: bytes = b"") -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.http10 = http10
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body

    def __repr__(self) -> str:  # never includes headers: they may carry tokens
        return f"Request({self.method} {self.path})"


class Response:
    """A response the server writes. ``Content-Length`` and ``Content-Type``
    are always sent (except for 204/304, which have no body); ``headers``
    are extra ``(name, value)`` pairs. ``ip_ttl`` sends this response (and
    anything after it on the connection until it is acknowledged) with that
    IP TTL. ``close`` ends the connection after the response. ``reset``
    sends nothing at all: the connection is reset (RST), as if the datapath
    had refused it. ``hold`` (seconds) reads nothing more from the
    connection for that long after this response: a throttled VM's
    connections wait in the kernel instead of costing the one event loop a
    parse and an answer per request (the guest API sets it on 429).

    A Response may be reused for many requests (the guest API memoizes
    them): its serialized head is computed once and cached.
    """

    __slots__ = ("_head", "body", "close", "content_type", "headers", "hold", "ip_ttl",
                 "reset", "status")

    def __init__(self, status: int, body: bytes = b"", content_type: str = TEXT_PLAIN,
                 headers: Iterable[tuple[str, str]] = (), *, ip_ttl: int | None = None,
                 close: bool = False, reset: bool = False, hold: float = 0.0) -> None:
        self.status = status
        self.reset = reset
        self.body = body
        self.content_type = content_type
        self.headers = tuple(headers)
        self.ip_ttl = ip_ttl
        self.close = close
        self.hold = hold
        self._head: bytes | None = None

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None

    def head_bytes(self) -> bytes:
        """Status line and fixed headers, without Date/Server/Connection."""
        head = self._head
        if head is None:
            try:
                reason = http.HTTPStatus(self.status).phrase
            except ValueError:
                reason = "Unknown"
            parts = [f"HTTP/1.1 {self.status} {reason}\r\n"]
            if self.status not in NO_BODY_STATUSES:
                parts.append(f"Content-Type: {self.content_type}\r\n"
                             f"Content-Length: {len(self.body)}\r\n")
            for name, value in self.headers:
                if "\r" in value or "\n" in value or not TOKEN_RE.match(name):
                    raise ValueError(f"invalid response header {name!r}")
                parts.append(f"{name}: {value}\r\n")
            head = self._head = "".join(parts).encode("latin-1")
        return head


HandlerResult = Response | Coroutine[Any, Any, Response]
Handler = Callable[[TapIdentity, Request], HandlerResult]
"""Return a Response to answer at once, or a coroutine for slow paths."""


def error_bytes(status: int, head: bool = False) -> bytes:
    """A complete ``Connection: close`` error response (parser refusals, 503 at
    accept); without the body when it answers a HEAD request."""
    phrase = http.HTTPStatus(status).phrase
    body = f"{phrase}\n".encode()
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {TEXT_PLAIN}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + (
                b"" if head else body)
