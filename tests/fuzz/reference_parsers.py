"""Two well-kept HTTP/1.1 parsers as differential oracles for the node's own.

Each adapter reads a complete byte stream (the peer then closes) and
returns the requests it found, in order, as ``(method, target, body)``,
plus whether it refused the stream. Only framing and target matter here:
``h11``'s refusal of an HTTP/1.1 request without ``Host`` is a semantic
rule, not a framing decision, so that one refusal is reported as
``"no-host"`` and not held against the node (llhttp has no such rule and
still judges the input).
"""

from __future__ import annotations

import h11
import httptools

Parsed = tuple[bytes, bytes, bytes]


class _Llhttp:
    def __init__(self) -> None:
        self.found: list[Parsed] = []
        self._url = b""
        self._body = b""
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.found.append((bytes(method), self._url, self._body))


def llhttp(data: bytes) -> tuple[list[Parsed], str]:
    """("ok" | "refused" | "upgrade")."""
    state = _Llhttp()
    try:
        state.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return state.found, "upgrade"
    except httptools.HttpParserError:
        return state.found, "refused"
    return state.found, "ok"


def h11_parse(data: bytes) -> tuple[list[Parsed], str]:
    """("ok" | "refused" | "no-host")."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    conn.receive_data(b"")
    found: list[Parsed] = []
    method = target = b""
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                method, target, body = bytes(event.method), bytes(event.target), b""
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                found.append((method, target, body))
                if conn.our_state is h11.SEND_RESPONSE:
                    conn.send(h11.Response(status_code=404, headers=[("Content-Length", "0")]))
                    conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return found, "ok"
                conn.start_next_cycle()
            else:  # NEED_DATA, PAUSED, ConnectionClosed
                return found, "ok"
    except h11.RemoteProtocolError as exc:
        return found, "no-host" if "Host" in str(exc) else "refused"
