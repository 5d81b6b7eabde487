"""Bearer tokens: admin (config), nodes (config) and customers (store), all by hash.

Only SHA-256 digests are kept in memory and at rest; comparisons against
configured tokens are constant-time. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from interceptor.backend.errors import Unauthorized
from interceptor.backend.model import Principal
from interceptor.backend.store.base import Store


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    return token.strip()


class Authenticator:
    """Maps a bearer token to a Principal."""

    def __init__(self, *, admin_token: str | None, node_tokens: dict[str, str],
                 store: Store) -> None:
        self._admin = digest(admin_token) if admin_token else None
        self._nodes = [(node, digest(tok)) for node, tok in sorted(node_tokens.items())]
        self._store = store

    async def principal(self, token: str) -> Principal:
        d = digest(token)
        found: Principal | None = None
        if self._admin is not None and hmac.compare_digest(d, self._admin):
            found = Principal("admin")
        for node, nd in self._nodes:  # walk them all: time does not depend on which matched
            if hmac.compare_digest(d, nd) and found is None:
                found = Principal("node", node)
        if found is None:
            stored = await self._store.find_token(d)
            if stored is not None:
                found = Principal(stored.kind, stored.subject)
        if found is None:
            raise Unauthorized("invalid token")
        return found

    async def authenticate(self, request: web.Request) -> Principal:
        return await self.principal(bearer(request))
