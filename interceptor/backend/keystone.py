"""A Keystone (OpenStack Identity v3) service token, as Nova sends to vendor-data targets.

``POST {auth_url}/auth/tokens`` with the password method, scoped to a
project; the token is the ``X-Subject-Token`` header of the 201 answer and
expires at the body's ``token.expires_at``. The token is cached until
shortly before it expires (``refresh_margin``: a tenth of its lifetime,
between 10 s and 5 min), fetched once however many callers wait
(single-flight), and dropped when a target answers 401 with it, so the next
call fetches a fresh one. Neither the password nor the token is logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from interceptor.common.errors import ConfigError

MAX_ANSWER_BYTES = 1024 * 1024


class KeystoneError(Exception):
    """No token could be had (the reason is safe to log)."""


@dataclass(frozen=True)
class KeystoneAuth:
    auth_url: str
    username: str
    password: str
    project_name: str
    domain: str = "Default"

    def tokens_url(self) -> str:
        base = self.auth_url.rstrip("/")
        return (base if base.endswith("/v3") else base + "/v3") + "/auth/tokens"

    def request_body(self) -> dict[str, object]:
        domain = {"name": self.domain}
        return {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.username, "domain": domain, "password": self.password}}},
            "scope": {"project": {"name": self.project_name, "domain": domain}}}}


def auth_from_config(auth_url: str | None, username: str | None, password: str | None,
                     project_name: str | None, domain: str) -> KeystoneAuth | None:
    """The Keystone settings, None when unset; partly set is a ConfigError."""
    values = {"vendordata_auth_url": auth_url, "vendordata_auth_username": username,
              "vendordata_auth_password": password,
              "vendordata_auth_project_name": project_name}
    given = [k for k, v in values.items() if v]
    if not given:
        return None
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise ConfigError(f"config: {missing[0]} must be set with {given[0]}")
    assert auth_url and username and password and project_name
    if not auth_url.startswith(("http://", "https://")):
        raise ConfigError("config: vendordata_auth_url must be http(s)://…")
    return KeystoneAuth(auth_url, username, password, project_name, domain or "Default")


def _expiry(text: object) -> float:
    if not isinstance(text, str):
        raise KeystoneError("token answer has no expires_at")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise KeystoneError("token expires_at is not an ISO 8601 time") from None


class KeystoneTokens:
    def __init__(self, auth: KeystoneAuth, *, clock: Callable[[], float] = time.time) -> None:
        self._auth = auth
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def token(self, session: aiohttp.ClientSession) -> str:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                await self._fetch(session)
            assert self._token is not None
            return self._token

    def rejected(self, token: str) -> None:
        """A target answered 401 to ``token``: fetch a new one next time."""
        if token == self._token:
            self._token = None

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        self.fetches += 1
        body = json.dumps(self._auth.request_body()).encode()
        try:
            async with session.post(self._auth.tokens_url(), data=body, allow_redirects=False,
                                    headers={"Content-Type": "application/json",
                                             "Accept": "application/json"}) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                status, token = resp.status, resp.headers.get("X-Subject-Token")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise KeystoneError(f"Keystone unreachable ({type(exc).__name__})") from None
        if status != 201 or not token:
            raise KeystoneError(f"Keystone answered HTTP {status}" +
                                ("" if token or status != 201 else " without a token"))
        if len(raw) > MAX_ANSWER_BYTES:
            raise KeystoneError("Keystone answer too large")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeystoneError("Keystone answer is not JSON") from None
        expires = _expiry(data.get("token", {}).get("expires_at")
                          if isinstance(data, dict) and isinstance(data.get("token"), dict)
                          else None)
        now = self._clock()
        margin = min(300.0, max(10.0, (expires - now) / 10))
        self._token, self._refresh_at = token, expires - margin
