"""A small Keystone-compatible token endpoint and a target that checks its tokens.

``KeystoneStub`` answers ``POST /v3/auth/tokens`` as Keystone v3 does for the
password method scoped to a project: 201, the token in ``X-Subject-Token``,
``{"token": {"expires_at": …, "project": …, "user": …}}``; wrong
credentials → 401. ``revoke()`` invalidates every issued token (as a
Keystone restart with fernet key rotation would), so a target then answers
401 to a cached token. ``target_app()`` is a vendor-data target that accepts
only a valid token of this stub in ``X-Auth-Token``.

Run as a process (end-to-end tests, inside a namespace)::

    python -m tests.helpers.keystone KS_PORT TARGET_PORT USER PASSWORD PROJECT

serves both on 127.0.0.1, prints ``ready`` and stops when stdin closes.
``POST /_test/revoke`` revokes every token; ``GET /_test/stats`` tells how
many tokens were issued and how many target calls were refused.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass
class KeystoneStub:
    username: str
    password: str
    project: str
    domain: str = "Default"
    lifetime: float = 3600.0
    issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch)
    requests: list[dict[str, Any]] = field(default_factory=list)
    seen_tokens: list[str | None] = field(default_factory=list)

    def valid(self, token: str | None) -> bool:
        return token is not None and self.issued.get(token, 0.0) > time.time()

    def revoke(self) -> None:
        self.issued.clear()

    async def tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        try:
            auth = body["auth"]
            user = auth["identity"]["password"]["user"]
            project = auth["scope"]["project"]
            ok = (auth["identity"]["methods"] == ["password"]
                  and user["name"] == self.username and user["password"] == self.password
                  and user["domain"]["name"] == self.domain
                  and project["name"] == self.project
                  and project["domain"]["name"] == self.domain)
        except (KeyError, TypeError):
            return web.json_response({"error": {"code": 400}}, status=400)
        if not ok:
            return web.json_response({"error": {"code": 401, "title": "Unauthorized"}},
                                     status=401)
        token = "gAAAA" + secrets.token_urlsafe(24)
        expires = time.time() + self.lifetime
        self.issued[token] = expires
        stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return web.json_response(
            {"token": {"expires_at": stamp, "methods": ["password"],
                       "project": {"name": self.project, "id": "p-" + self.project},
                       "user": {"name": self.username, "id": "u-" + self.username}}},
            status=201, headers={"X-Subject-Token": token})

    def app(self) -> web.Application:
        async def revoke(request: web.Request) -> web.Response:
            self.revoke()
            return web.json_response({"revoked": True})

        async def stats(request: web.Request) -> web.Response:
            refused = sum(1 for t in self.seen_tokens if not self.valid(t))
            return web.json_response({"tokens_issued": len(self.requests),
                                      "target_calls": len(self.seen_tokens),
                                      "refused_now_invalid": refused})

        app = web.Application()
        app.router.add_post("/v3/auth/tokens", self.tokens)
        app.router.add_post("/_test/revoke", revoke)
        app.router.add_get("/_test/stats", stats)
        return app

    def target_app(self) -> web.Application:
        async def vendor(request: web.Request) -> web.Response:
            token = request.headers.get("X-Auth-Token")
            self.seen_tokens.append(token)
            if not self.valid(token):
                return web.json_response({"error": "unauthorized"}, status=401)
            body = await request.json()
            return web.json_response({"for": body["instance-id"],
                                      "user-data": body["user-data"]})

        app = web.Application()
        app.router.add_post("/vendor", vendor)
        return app


async def _serve(ks_port: int, target_port: int, user: str, password: str,
                 project: str) -> None:
    stub = KeystoneStub(user, password, project)
    runners = []
    for app, port in ((stub.app(), ks_port), (stub.target_app(), target_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    for runner in runners:
        await runner.cleanup()


if __name__ == "__main__":
    _, ks, target, user, password, project = sys.argv
    asyncio.run(_serve(int(ks), int(target), user, password, project))
