"""The backend API fuzzed from its own OpenAPI document (schemathesis), with
every token kind: admin, the owner, another customer, a node (signed), and
none. Oracle: no 5xx, every answer matches the document (status, content
type, schema), and no token reaches what the access matrix forbids
(``tests/backend/test_access_matrix.py`` has the matrix cell by cell).

The backend runs in-process on 127.0.0.1 in a thread (SQLite), seeded with
two customers and a server bound to node-a; generated path parameters are
often swapped for those ids so the fuzzer reaches real objects.
``INTERCEPTOR_FUZZ_SCALE`` multiplies the example count.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from interceptor.backend.app import create_app
from interceptor.backend.openapi import build_spec
from interceptor.common.signing import sign
from tests.backend.support import ADMIN, NODE_TOKENS, SIGNING_KEY, make_config

SCALE = int(os.environ.get("INTERCEPTOR_FUZZ_SCALE", "1"))
schema = schemathesis.openapi.from_dict(build_spec())
KINDS = ("admin", "owner", "other", "node", "none")
SEEN: Counter[tuple[str, int]] = Counter()
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
OWNED = {"id": "s-own", "iid": "s-own", "node": "node-a"}


class Backend:
    """The real backend application in a thread with its own event loop."""

    def __init__(self) -> None:
        self.work = tempfile.mkdtemp(prefix="interceptor-apifuzz-")
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(30) or not self.port:
            raise RuntimeError("backend did not start")
        self.tokens: dict[str, str] = {"admin": ADMIN}

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            app = create_app(make_config(f"sqlite://{self.work}/backend.sqlite"))
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def seed(self) -> None:
        for cid in ("c-own", "c-oth"):
            self.call("POST", "/v1/customers", {"id": cid, "name": cid})
        self.tokens["owner"] = self.call("POST", "/v1/customers/c-own/tokens")["token"]
        self.tokens["other"] = self.call("POST", "/v1/customers/c-oth/tokens")["token"]
        self.call("PUT", "/v1/servers/s-own", {  # the platform creates and binds it
            "customer_id": "c-own", "hostname": "own", "guest_writes": True})
        self.call("PUT", "/v1/servers/s-own/bindings/node-a/tap0")
        self.call("PUT", "/v1/servers/s-own/metadata/private", {"secret": "p"},
                  self.tokens["owner"])

    def close(self) -> None:
        async def stop() -> None:
            if self.runner is not None:
                await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()
        for path in Path(self.work).iterdir():
            path.unlink()
        Path(self.work).rmdir()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend()
    try:
        b.seed()
        yield b
    finally:
        b.close()


def _forbidden(kind: str, method: str, template: str, params: dict[str, Any]) -> bool:
    """Requests the access matrix never lets ``kind`` succeed with."""
    if kind == "none":
        return template != "/v1/openapi.json"
    node_path = template.startswith("/v1/nodes/")
    if kind == "node":
        return not node_path and template != "/v1/openapi.json"
    if kind in ("owner", "other") and node_path:
        return True
    if kind in ("owner", "other") and "/bindings" in template and method != "GET":
        return True  # bindings are the platform's
    if kind == "other":
        owned = params.get("id") == "s-own" and template.startswith("/v1/servers/")
        if owned and method != "GET":
            return True
        if owned and template.endswith("/metadata/{cls}") and params.get("cls") in (
                "private", "restricted", "system"):
            return True
        if owned and template.split("/")[-1] in ("password", "guest-data", "document"):
            return True
        if params.get("id") == "c-own" and template.startswith("/v1/customers/") and (
                method != "GET" or template.endswith("/tokens")):
            return True
    return False


@pytest.mark.parametrize("kind", KINDS)
@schema.parametrize()
@settings(max_examples=5 * SCALE, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_from_its_openapi_document(backend: Backend, kind: str,
                                       case: schemathesis.Case[Any]) -> None:
    rng = random.Random(repr(case.path_parameters) + case.method)
    params = dict(case.path_parameters or {})
    for name, value in OWNED.items():
        if name in params and rng.random() < 0.7:
            params[name] = value
    case.path_parameters = params
    headers = {}
    if kind == "node":
        path = case.formatted_path
        query = urllib.parse.urlencode(case.query or {}, doseq=True)
        full = path + ("?" + query if query else "")
        body = case.body if isinstance(case.body, bytes) else (
            json.dumps(case.body).encode() if case.body is not None
            and not isinstance(case.body, schemathesis.core.NotSet) else b"")
        headers.update(sign(SIGNING_KEY.encode(), "node-a", params.get("iid", ""),
                            case.method.upper(), full, body=body))
        headers["Authorization"] = f"Bearer {NODE_TOKENS['node-a']}"
    elif kind != "none":
        headers["Authorization"] = f"Bearer {backend.tokens[kind]}"
    response = case.call(base_url=backend.base, headers=headers, timeout=10)
    SEEN[kind, response.status_code // 100] += 1
    assert response.status_code < 500, (kind, case.method, case.formatted_path, response.text)
    if _forbidden(kind, case.method.upper(), case.path, params):
        assert not 200 <= response.status_code < 300, (
            f"{kind} reached {case.method} {case.formatted_path}: {response.status_code}")
    # Shapes, statuses and content types; not "every schema-valid value is
    # accepted": the document gives shapes, the API refuses bad values with a
    # 4xx and a JSON reason (tests/backend/test_validation.py).
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_every_token_kind_reached_real_objects() -> None:
    """Runs after the fuzzer (file order): it was not all 401/404s."""
    for kind in ("admin", "owner", "node"):
        assert SEEN[kind, 2] > 0, dict(SEEN)
    assert SEEN["none", 4] > 0 and SEEN["none", 2] <= SEEN["admin", 2], dict(SEEN)
