"""Signed node requests: who is asking, for which instance, when.

Every node → backend request carries the node's bearer token *and* these
headers. The signature is an HMAC-SHA256, keyed with the platform-wide
``signing_key`` (both configs), over the node, the instance (empty when the
request is not about one), the method, the path (with query), a Unix
timestamp and the SHA-256 of the body (``X-Interceptor-Content-SHA256``;
the empty body's digest when there is none). A captured signature is
therefore useless for another instance, path, body or, after
``MAX_SKEW_SECONDS``, at all. The receiver checks the body against the
signed digest with ``body_matches`` once it has read it. Answers are not
signed: run the backend behind TLS (README "Threat model"). Compare with
``verify`` only (constant time); never log a signature or a key.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER_NODE = "X-Interceptor-Node"
HEADER_INSTANCE = "X-Interceptor-Instance"
HEADER_TIMESTAMP = "X-Interceptor-Timestamp"
HEADER_SIGNATURE = "X-Interceptor-Signature"
HEADER_REQUEST_ID = "X-Request-Id"
HEADER_CONTENT = "X-Interceptor-Content-SHA256"
EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()

MAX_SKEW_SECONDS = 30


def _message(node: str, instance: str, method: str, path: str, timestamp: int,
             digest: str) -> bytes:
    fields = (node, instance, method.upper(), path, str(timestamp), digest)
    if any("\n" in f for f in fields):
        raise ValueError("a signed field contains a newline")
    return "\n".join(fields).encode()


def sign(key: bytes, node: str, instance: str, method: str, path: str,
         timestamp: int | None = None, body: bytes = b"") -> dict[str, str]:
    """Headers that authenticate one request (path includes the query string)."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hashlib.sha256(body).hexdigest()
    mac = hmac.new(key, _message(node, instance, method, path, ts, digest),
                   hashlib.sha256).hexdigest()
    return {
        HEADER_NODE: node,
        HEADER_INSTANCE: instance,
        HEADER_TIMESTAMP: str(ts),
        HEADER_CONTENT: digest,
        HEADER_SIGNATURE: mac,
    }


def body_matches(headers: dict[str, str] | object, body: bytes) -> bool:
    """Whether ``body`` is the one whose digest a ``verify``-ed request signed."""
    get = getattr(headers, "get", None)
    claimed = get(HEADER_CONTENT, EMPTY_DIGEST) if get is not None else None
    return isinstance(claimed, str) and hmac.compare_digest(
        claimed, hashlib.sha256(body).hexdigest())


def verify(key: bytes, headers: dict[str, str] | object, method: str, path: str,
           now: float | None = None) -> tuple[str, str] | None:
    """Return (node, instance) when the headers carry a valid, fresh signature."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    node, instance = get(HEADER_NODE), get(HEADER_INSTANCE, "")
    ts_text, signature = get(HEADER_TIMESTAMP), get(HEADER_SIGNATURE)
    digest = get(HEADER_CONTENT, EMPTY_DIGEST)
    if not node or ts_text is None or not signature:
        return None
    if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12:
        return None
    ts = int(ts_text)
    if any("\n" in f for f in (node, instance, digest)):
        return None
    current = time.time() if now is None else now
    if abs(current - ts) > MAX_SKEW_SECONDS:
        return None
    expected = hmac.new(key, _message(node, instance, method, path, ts, digest),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return None
    return node, instance
