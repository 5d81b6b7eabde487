"""Signed node requests: who is asking, for which instance, when.

Every node → backend request carries the node's bearer token *and* these
headers. The signature is an HMAC-SHA256, keyed with the platform-wide
``signing_key`` (both configs), over the node, the instance (empty when the
request is not about one), the method, the path (with query) and a Unix
timestamp. A captured signature is therefore useless for another instance,
path or, after ``MAX_SKEW_SECONDS``, at all. Compare with ``verify`` only
(constant time); never log a signature or a key.
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

MAX_SKEW_SECONDS = 30


def _message(node: str, instance: str, method: str, path: str, timestamp: int) -> bytes:
    return "\n".join((node, instance, method.upper(), path, str(timestamp))).encode()


def sign(key: bytes, node: str, instance: str, method: str, path: str,
         timestamp: int | None = None) -> dict[str, str]:
    """Headers that authenticate one request (path includes the query string)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(key, _message(node, instance, method, path, ts), hashlib.sha256).hexdigest()
    return {
        HEADER_NODE: node,
        HEADER_INSTANCE: instance,
        HEADER_TIMESTAMP: str(ts),
        HEADER_SIGNATURE: mac,
    }


def verify(key: bytes, headers: dict[str, str] | object, method: str, path: str,
           now: float | None = None) -> tuple[str, str] | None:
    """Return (node, instance) when the headers carry a valid, fresh signature."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    node, instance = get(HEADER_NODE), get(HEADER_INSTANCE, "")
    ts_text, signature = get(HEADER_TIMESTAMP), get(HEADER_SIGNATURE)
    if not node or ts_text is None or not signature:
        return None
    try:
        ts = int(ts_text)
    except ValueError:
        return None
    current = time.time() if now is None else now
    if abs(current - ts) > MAX_SKEW_SECONDS:
        return None
    expected = hmac.new(key, _message(node, instance, method, path, ts),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return None
    return node, instance
