"""The guest request parser: bytes in, ``Request`` objects out, no I/O.

Strict on purpose. Wherever a well-kept parser (llhttp through
``httptools``, or ``h11``) would see a different request boundary or a
different target, this parser refuses the input instead
(``tests/unit/node/test_http_parser_differential.py`` checks that on
generated and mutated inputs), so nothing between a guest and the node can
disagree with the node about what was asked:

* lines end in CRLF only; a bare LF or a bare CR anywhere in the head is
  400 (llhttp refuses both);
* the request line is ``METHOD SP target SP HTTP/1.x``, single spaces; the
  method is one the node knows (others: 405 and close); the target is
  origin form or ``http://`` absolute form, visible ASCII only (no ``#``
  fragment, no control, space or non-ASCII byte);
* header names are tokens with the colon right after them (no space
  before it, no obsolete line folding); values are visible ASCII, space,
  tab or obs-text;
* bodies only by ``Content-Length`` (one header, digits only);
  ``Transfer-Encoding`` gets 411 (or 400 together with Content-Length);
* a request that cannot be followed by another on the same connection in
  llhttp's or h11's view (``Connection: close``; any HTTP/1.0 request, as
  h11 has no HTTP/1.0 keep-alive; any ``Upgrade``) ends the connection
  after its answer; an ``Upgrade`` with a body is 400 (llhttp reads no
  body there).

Empty lines before a request line are refused (400): RFC 9112 §2.2 lets
a server skip them, llhttp does, h11 refuses them, so refusing is the one
choice both agree with (and a stream of empty lines cannot keep a
connection in "no request yet"). Bytes that do not start like a method
(TLS, binary) close the connection silently (status 0).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from interceptor.node.http_messages import TCHARS, Request
from interceptor.node.limits import HttpLimits

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))
"""Methods parsed at all; the handler answers the ones it does not serve with 405.
Parser refusals are 4xx only: a 5xx from the node always means a node fault."""

_TARGET_CHARS = r"[\x21\x22\x24-\x7e]+"
"""Visible ASCII but ``#``: what llhttp and h11 both take, without fragments.
Wider than RFC 3986 on purpose: clients put quoted ETags (``last_etag="…"``)
and other unescaped characters in queries."""
_REQUEST_LINE_RE = re.compile(r"(" + TCHARS + r") (" + _TARGET_CHARS + r") HTTP/1\.([01])")
_HEADER_RE = re.compile(r"(" + TCHARS + r"):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\Z")
_HEADER_BLOCK_RE = re.compile(r"(?:" + TCHARS + r":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_AUTHORITY_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%\[\]]*")
_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _bare_cr_or_lf(buf: bytearray, end: int) -> bool:
    """Whether ``buf[:end]`` has a CR or LF that is not part of a CRLF (C-speed counts)."""
    pairs = buf.count(b"\r\n", 0, end)
    return buf.count(b"\n", 0, end) != pairs or buf.count(b"\r", 0, end) != pairs


class ProtocolError(Exception):
    """A request answered with ``status`` (0 = close silently), then the
    connection is closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestReader:
    """Incremental parser of one connection's byte stream.

    ``feed`` appends bytes; ``next_request`` returns the next complete
    request (head and body), None while one is incomplete, or raises
    ``ProtocolError``. ``pending`` is a request whose head is complete but
    whose body is not (the connection may send ``100 Continue`` for it).
    """

    __slots__ = ("_body_needed", "buf", "head_request", "limits", "pending")

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.buf = bytearray()
        self.pending: Request | None = None
        self._body_needed = 0
        self.head_request = False
        """The request being parsed (or refused) is a HEAD: its answer has no body."""

    def feed(self, data: bytes) -> None:
        self.buf += data

    @property
    def idle(self) -> bool:
        """Nothing of a next request has arrived."""
        return not self.buf and self.pending is None

    def next_request(self, eof: bool = False) -> Request | None:
        request = self.pending
        if request is None:
            request = self._parse_head()
            if request is None:
                return None
        need = self._body_needed
        if need:
            buf = self.buf
            if len(buf) < need:
                self.pending = request
                if eof:
                    raise ProtocolError(0, "truncated body")
                return None
            request.body = bytes(buf[:need])
            del buf[:need]
            self._body_needed = 0
        self.pending = None
        return request

    def _parse_head(self) -> Request | None:
        buf = self.buf
        limits = self.limits
        if not buf:
            return None
        self.head_request = buf.startswith(b"HEAD ")
        first = buf[0]
        if not (65 <= first <= 90 or 97 <= first <= 122):
            if first in (13, 10):
                raise ProtocolError(400, "empty line before request line")
            raise ProtocolError(0, "garbage")  # not an HTTP method: TLS, binary …
        room = limits.max_head_bytes
        end = buf.find(b"\r\n\r\n", 0, room + 4)
        if end < 0:
            if _bare_cr_or_lf(buf, len(buf) - (buf[-1] == 13)):  # a final CR may be a CRLF
                raise ProtocolError(400, "bare CR or LF")
            if len(buf) > room:
                raise ProtocolError(431, "head too large")
            return None
        if end > room:
            raise ProtocolError(431, "head too large")
        if _bare_cr_or_lf(buf, end + 4):
            raise ProtocolError(400, "bare CR or LF")
        head = buf[:end].decode("latin-1")
        del buf[:end + 4]
        return self._parse(head)

    def _parse(self, head: str) -> Request:
        """Two C-level regex passes for the common well-formed head; anything
        unusual (repeated headers, errors) goes to ``_parse_slow``, which also
        decides the error status."""
        limits = self.limits
        line, _, block = head.partition("\r\n")
        match = _REQUEST_LINE_RE.fullmatch(line)
        if block:
            block += "\r\n"
        if match is None or (block and _HEADER_BLOCK_RE.fullmatch(block) is None):
            return self._parse_slow(line, block.split("\r\n")[:-1] if block else [])
        lines = block.split("\r\n")
        lines.pop()  # the empty string after the final CRLF
        if len(lines) > limits.max_headers:
            raise ProtocolError(431, "too many headers")
        headers: dict[str, str] = {}
        for raw in lines:  # validated above: "name:value" each
            name, _, value = raw.partition(":")
            headers[name.lower()] = value.strip(" \t")
        if len(headers) != len(lines):
            return self._parse_slow(line, lines)
        method, target, minor = match.groups()
        length = headers.get("content-length")
        return self._finish(method, target, minor == "0", headers,
                            [] if length is None else [length])

    def _parse_slow(self, line: str, lines: list[str]) -> Request:
        if len(lines) > self.limits.max_headers:
            raise ProtocolError(431, "too many headers")
        parts = line.split(" ")
        if len(parts) != 3:
            raise ProtocolError(400, "bad request line")
        method, target, version = parts
        if version == "HTTP/1.1":
            http10 = False
        elif version == "HTTP/1.0":
            http10 = True
        elif version.startswith("HTTP/") and len(version) == 8:
            raise ProtocolError(400, "unsupported HTTP version")
        else:
            raise ProtocolError(400, "bad request line")
        if re.fullmatch(TCHARS, method) is None:
            raise ProtocolError(400, "bad method")
        if re.fullmatch(_TARGET_CHARS, target) is None:
            raise ProtocolError(400, "bad target")
        headers: dict[str, str] = {}
        content_lengths: list[str] = []
        for raw in lines:
            if raw[:1] in (" ", "\t"):
                raise ProtocolError(400, "folded header line")
            header = _HEADER_RE.match(raw)
            if header is None:
                raise ProtocolError(400, "bad header")
            name, value = header.group(1).lower(), header.group(2)
            if name == "content-length":
                content_lengths.append(value)
            old = headers.get(name)
            headers[name] = value if old is None else old + ", " + value
        return self._finish(method, target, http10, headers, content_lengths)

    def _finish(self, method: str, target: str, http10: bool, headers: dict[str, str],
                content_lengths: list[str]) -> Request:
        if method not in METHODS:
            raise ProtocolError(405, "unknown method")
        if target[0] == "/":
            origin = target
        elif target[:7].lower() == "http://":
            cut = min((i for i in (target.find("/", 7), target.find("?", 7)) if i >= 0),
                      default=len(target))
            if _AUTHORITY_RE.fullmatch(target, 7, cut) is None:
                raise ProtocolError(400, "bad target")  # llhttp is strict in the host part
            origin = target[cut:] if target[cut:cut + 1] == "/" else "/" + target[cut:]
        else:
            raise ProtocolError(400, "bad target")
        raw_path, _, query = origin.partition("?")
        if "%" in raw_path:
            if _PERCENT_RE.search(raw_path):
                raise ProtocolError(400, "bad percent-encoding")
            try:
                path = unquote(raw_path, errors="strict")
            except UnicodeDecodeError:
                raise ProtocolError(400, "bad percent-encoding") from None
            if _CONTROL_RE.search(path):
                raise ProtocolError(400, "control character in path")
        else:
            path = raw_path
        body_length = 0
        if "transfer-encoding" in headers:
            if content_lengths:
                raise ProtocolError(400, "both Transfer-Encoding and Content-Length")
            raise ProtocolError(411, "Transfer-Encoding is not supported")
        if content_lengths:
            value = content_lengths[0]
            if len(content_lengths) > 1 or not value.isdigit() or not value.isascii() \
                    or len(value) > 12:
                raise ProtocolError(400, "bad Content-Length")
            body_length = int(value)
            if body_length > self.limits.max_body_bytes:
                raise ProtocolError(413, "body too large")
        # HTTP/1.0 keep-alive is not offered: h11 has none, llhttp has it.
        keep_alive = not http10 and "close" not in headers.get("connection", "").lower()
        if "upgrade" in headers:
            # llhttp hands everything after such a head to another protocol: no
            # body of ours may follow it, and no next request.
            if body_length:
                raise ProtocolError(400, "body with Upgrade")
            keep_alive = False
        self._body_needed = body_length
        return Request(method, target, path, query, http10, headers, keep_alive)
