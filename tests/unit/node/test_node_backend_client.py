"""BackendClient against a small contract server on 127.0.0.1 that checks
every request the way the backend does (bearer token + signature)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from interceptor.common.signing import HEADER_REQUEST_ID, verify
from interceptor.node.backend_client import (
    BackendClient,
    BackendRejected,
    BackendUnavailable,
    Conflict,
    NotBound,
    NotFound,
    TooLarge,
)
from interceptor.node.metrics import NodeMetrics
from tests.unit.node.node_fakes import load_doc

KEY = b"platform-signing-key"
NODE = "node-a"
TOKEN = "node-a-token"


@dataclass
class Contract:
    seen: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    password: bytes | None = None
    fail_with: int | None = None


def make_app(state: Contract) -> web.Application:
    doc = load_doc()

    def check(request: web.Request, instance: str = "") -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(text='{"error": "token"}')
        signed = verify(KEY, request.headers, request.method, request.raw_path)
        if signed != (NODE, instance):
            raise web.HTTPUnauthorized(text='{"error": "signature"}')
        assert request.headers.get(HEADER_REQUEST_ID)
        if state.fail_with:
            raise web.HTTPInternalServerError(text=json.dumps({"error": "injected"}))

    async def bindings(request: web.Request) -> web.Response:
        check(request)
        return web.json_response({"revision": 7, "bindings": [
            {"ifname": "tap1", "instance_id": doc["instance_id"], "metadata_enabled": True}]})

    async def document(request: web.Request) -> web.Response:
        iid = request.match_info["iid"]
        check(request, iid)
        if iid == "i-elsewhere":
            raise web.HTTPForbidden(text='{"error": "not bound"}')
        if iid != doc["instance_id"]:
            raise web.HTTPNotFound(text='{"error": "unknown"}')
        tag = f'"{doc["revision"]}"'
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.json_response(doc, headers={"ETag": tag})

    async def watch(request: web.Request) -> web.Response:
        check(request)
        assert request.query["since"] == "5" and request.query["timeout"] == "2"
        return web.json_response({"revision": 9, "instances": ["i-1"],
                                  "bindings_changed": True})

    async def password(request: web.Request) -> web.Response:
        iid = request.match_info["iid"]
        check(request, iid)
        body = await request.read()
        if len(body) > 1020:
            raise web.HTTPRequestEntityTooLarge(1020, len(body))
        if state.password is not None:
            raise web.HTTPConflict(text='{"error": "already set"}')
        state.password = body
        return web.Response(status=201)

    async def meta(request: web.Request) -> web.Response:
        iid = request.match_info["iid"]
        check(request, iid)
        state.seen.append(("meta", request.match_info["cls"], request.match_info["key"], b""))
        return web.Response(status=204)

    async def guest(request: web.Request) -> web.Response:
        iid = request.match_info["iid"]
        check(request, iid)
        state.seen.append((request.method, iid, request.match_info["key"],
                           await request.read()))
        return web.Response(status=204)

    app = web.Application()
    base = "/v1/nodes/{node}"
    app.router.add_get(base + "/bindings", bindings)
    app.router.add_get(base + "/instances/{iid}/document", document)
    app.router.add_get(base + "/watch", watch)
    app.router.add_post(base + "/instances/{iid}/password", password)
    app.router.add_delete(base + "/instances/{iid}/meta/{cls}/{key}", meta)
    app.router.add_route("*", base + "/instances/{iid}/guest-data/{key}", guest)
    return app


@dataclass
class Running:
    client: BackendClient
    state: Contract
    metrics: NodeMetrics


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    state = Contract()
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    metrics = NodeMetrics()
    client = BackendClient(str(server.make_url("/")), NODE, TOKEN, KEY.decode(),
                           timeout=5.0, metrics=metrics)
    yield Running(client, state, metrics)
    await client.close()
    await server.close()


async def test_bindings_document_and_304(running: Running) -> None:
    b = await running.client.bindings()
    assert b.revision == 7 and b.bindings[0].ifname == "tap1"
    iid = b.bindings[0].instance_id
    fetched = await running.client.document(iid)
    assert fetched is not None and fetched.etag == '"42"'
    assert fetched.document["instance_id"] == iid
    assert await running.client.document(iid, fetched.etag) is None
    text = running.metrics.render().decode()
    assert 'interceptor_node_backend_requests_total{op="document",outcome="304"} 1.0' in text


async def test_typed_errors(running: Running) -> None:
    with pytest.raises(NotBound):
        await running.client.document("i-elsewhere")
    with pytest.raises(NotFound):
        await running.client.document("i-unknown")
    running.state.fail_with = 500
    with pytest.raises(BackendUnavailable, match="500"):
        await running.client.bindings()


async def test_bad_signature_key_is_rejected(running: Running) -> None:
    url = running.client._backends.urls[0]
    other = BackendClient(url, NODE, TOKEN, "wrong-key")
    try:
        with pytest.raises(BackendRejected) as info:
            await other.bindings()
        assert info.value.status == 401
    finally:
        await other.close()


async def test_watch(running: Running) -> None:
    result = await running.client.watch(5, 2)
    assert result.revision == 9 and result.instances == ("i-1",) and result.bindings_changed


async def test_writes(running: Running) -> None:
    c = running.client
    await c.set_password("i-x", b"pw")
    assert running.state.password == b"pw"
    with pytest.raises(Conflict):
        await c.set_password("i-x", b"pw")
    with pytest.raises(TooLarge):
        await c.set_password("i-y", b"x" * 2000)
    await c.delete_meta("i-x", "public", "a key/with slash")
    await c.put_guest_data("i-x", "k", b"value")
    await c.delete_guest_data("i-x", "k")
    assert running.state.seen == [("meta", "public", "a key/with slash", b""),
                                  ("PUT", "i-x", "k", b"value"), ("DELETE", "i-x", "k", b"")]


async def test_unreachable_backend_is_unavailable() -> None:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    client = BackendClient(f"http://127.0.0.1:{port}", NODE, TOKEN, KEY, timeout=2.0)
    try:
        with pytest.raises(BackendUnavailable):
            await client.document("i-1")
    finally:
        await client.close()


def _free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


async def test_fails_over_to_the_next_backend_and_back() -> None:
    first, second = Contract(), Contract()
    servers = [TestServer(make_app(state), host="127.0.0.1") for state in (first, second)]
    for server in servers:
        await server.start_server()
    metrics = NodeMetrics()
    dead = f"http://127.0.0.1:{_free_port()}"
    client = BackendClient([dead, str(servers[0].make_url("/")), str(servers[1].make_url("/"))],
                           NODE, TOKEN, KEY, timeout=2.0, metrics=metrics, failback_after=3600)
    try:
        # Connection refused on the first, answered by the second.
        assert (await client.bindings()).revision == 7
        assert client._backends.active == 1
        # A 5xx on a GET: the third answers, and stays in use.
        first.fail_with = 500
        assert (await client.bindings()).revision == 7
        assert client._backends.active == 2
        first.fail_with = None
        assert (await client.bindings()).revision == 7
        assert client._backends.active == 2
        text = metrics.render().decode()
        assert 'interceptor_node_backend_failovers_total{to="1"} 1.0' in text
        assert 'interceptor_node_backend_failovers_total{to="2"} 1.0' in text
        # A write that got a 500 may have been applied: not repeated elsewhere.
        second.fail_with = 500
        with pytest.raises(BackendUnavailable, match="500"):
            await client.set_password("i-x", b"pw")
        assert first.password is None and second.password is None
        second.fail_with = None
        # Every backend down: unavailable, with the last reason.
        for server in servers:
            await server.close()
        with pytest.raises(BackendUnavailable):
            await client.bindings()
    finally:
        await client.close()


async def test_goes_back_to_the_first_backend_after_failback_period() -> None:
    state = Contract()
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    spare = Contract()
    backup = TestServer(make_app(spare), host="127.0.0.1")
    await backup.start_server()
    client = BackendClient([str(server.make_url("/")), str(backup.make_url("/"))], NODE, TOKEN,
                           KEY, timeout=2.0, failback_after=0.0)
    try:
        state.fail_with = 503
        await client.bindings()
        assert client._backends.active == 1
        state.fail_with = None
        await client.bindings()  # the period (0 s) is over: the first is tried again
        assert client._backends.active == 0
    finally:
        await client.close()
        await server.close()
        await backup.close()
