"""Stateless EC2-style session tokens (IMDSv2), bound to one instance.

A token is ``<payload>.<mac>`` in URL-safe base64 (no padding). The payload
is a version byte, the expiry (Unix seconds, 8 bytes) and 8 random bytes;
the MAC is HMAC-SHA256 keyed with the node's token secret over a domain
label, the instance id and the payload. The instance id is not *in* the
token (a guest learns nothing from it) but is part of the MAC, so a token
is valid only on the tap of the instance it was issued to. Any worker or
process holding the same secret validates it: no shared state.

When no secret is configured a random one is drawn at start, so every
token dies with a restart: clients then get 401 and ask for a new token,
which every IMDSv2 client does on 401. Configure ``token_secret`` to keep
tokens valid across restarts.

Tokens are credentials: never log them or the secret.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import secrets
import struct
import time
from collections.abc import Callable

MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 21600
"""EC2's bounds for ``X-aws-ec2-metadata-token-ttl-seconds``."""

_VERSION = 1
_PAYLOAD = struct.Struct(">BQ8s")  # version, expiry, nonce
_DOMAIN = b"interceptor-imds-token-v1\0"
_MAX_TOKEN_CHARS = 128
"""Longer header values are rejected before any decoding work."""


class TokenStatus(enum.Enum):
    VALID = "valid"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"  # forged, another node's secret, or another instance
    EXPIRED = "expired"


def parse_ttl(text: str | None) -> int | None:
    """The TTL of a token request header, or None when missing or out of range."""
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        return None
    ttl = int(text)
    return ttl if MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Issues and validates session tokens with one node secret."""

    def __init__(self, secret: bytes | str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        if secret is None or secret in ("", b""):
            secret = secrets.token_bytes(32)
        self._key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        self._clock = clock

    def _mac(self, instance_id: str, payload: bytes) -> bytes:
        message = _DOMAIN + instance_id.encode("utf-8") + b"\0" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def issue(self, instance_id: str, ttl_seconds: int) -> str:
        """A token for ``instance_id`` valid for ``ttl_seconds`` (1..21600)."""
        if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"token TTL {ttl_seconds} outside 1..21600")
        # Round up: the expiry has whole seconds, and truncating made a 1 s
        # token issued late in a second expire almost at once.
        expiry = math.ceil(self._clock() + ttl_seconds)
        payload = _PAYLOAD.pack(_VERSION, expiry, secrets.token_bytes(8))
        return _b64(payload) + "." + _b64(self._mac(instance_id, payload))

    def seconds_left(self, token: str) -> float | None:
        """Seconds until a token ``check`` found valid expires (None if malformed).
        Long-polls use it to re-check their token when it expires."""
        try:
            payload = _unb64(token.partition(".")[0])
            _version, expiry, _nonce = _PAYLOAD.unpack(payload)
        except (binascii.Error, ValueError, struct.error):
            return None
        return float(expiry) - self._clock()

    def check(self, token: str, instance_id: str) -> TokenStatus:
        """Validate ``token`` for ``instance_id`` (constant-time MAC compare)."""
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            return TokenStatus.MALFORMED
        payload_text, mac_text = token.split(".")
        try:
            payload = _unb64(payload_text)
            mac = _unb64(mac_text)
        except (binascii.Error, ValueError):
            return TokenStatus.MALFORMED
        if len(payload) != _PAYLOAD.size or len(mac) != hashlib.sha256().digest_size:
            return TokenStatus.MALFORMED
        if not hmac.compare_digest(mac, self._mac(instance_id, payload)):
            return TokenStatus.BAD_SIGNATURE
        version, expiry, _nonce = _PAYLOAD.unpack(payload)
        if version != _VERSION:
            return TokenStatus.MALFORMED
        if self._clock() >= expiry:
            return TokenStatus.EXPIRED
        return TokenStatus.VALID
