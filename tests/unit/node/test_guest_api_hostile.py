"""Guest API weaknesses suspected in issue 15, each proven and fixed.

* responses over the per-document memo's entry limit were rendered again
  for every request on the one event loop (now: the node-wide LargeMemo);
* a long-poll checked authorisation once, so an expired token or a
  ``require_token`` switched on meanwhile kept receiving changes for up to
  ``longpoll_max`` (now: re-checked on every wake-up and at token expiry).
"""

from __future__ import annotations

import asyncio
import base64

from interceptor.formats.document import InstanceDocument
from interceptor.formats.rendered import Rendered
from interceptor.formats.router import render_path
from interceptor.node.guest_api import GuestApi
from interceptor.node.tokens import TokenIssuer
from tests.unit.node.node_fakes import IID, FakeSource, load_doc
from tests.unit.node.test_node_guest_api import Env

PATH = "/latest/meta-data/hostname"


def _big_user_data(source: FakeSource) -> None:
    data = base64.b64encode(b"#!/bin/sh\n" + b"x" * 100_000).decode()
    source.put(load_doc(user_data=[{"name": "big", "content_type": "text/x-shellscript",
                                    "data_b64": data}]))


async def test_large_response_rendered_once_not_per_request(source: FakeSource) -> None:
    _big_user_data(source)
    env = Env(source)
    renders: list[str] = []

    def counting(doc: InstanceDocument, path: str) -> Rendered:
        renders.append(path)
        return render_path(doc, path)

    env.api = GuestApi(env.cache, env.tokens, env.writer, counting)
    first = await env.call("GET", "/latest/user-data")
    assert first.status == 200 and len(first.body) > 100_000
    for _ in range(200):
        again = env.sync("GET", "/latest/user-data")
        assert again is first  # the same memoized Response: no render, no copy
    assert renders == ["/latest/user-data"]
    assert env.cache.large_memo.bytes >= 100_000


async def test_longpoll_refuses_a_token_that_expired_while_waiting(source: FakeSource) -> None:
    env = Env(source)
    token = await env.token("5")
    headers = {"X-aws-ec2-metadata-token": token}
    waiter = asyncio.create_task(env.call("GET", PATH, headers,
                                          query="wait_for_change=true&timeout_sec=300"))
    await asyncio.sleep(0.05)
    env.token_clock.advance(6)
    source.bump(IID, hostname="changed")
    env.cache.invalidate(IID)
    r = await asyncio.wait_for(waiter, 5)
    assert r.status == 401 and b"changed" not in r.body


async def test_longpoll_wakes_at_token_expiry_without_any_change(source: FakeSource) -> None:
    env = Env(source)
    env.tokens = TokenIssuer(b"node-secret")  # the real clock
    env.api = GuestApi(env.cache, env.tokens, env.writer, render_path)
    token = await env.token("1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await asyncio.wait_for(env.call("GET", PATH, {"X-aws-ec2-metadata-token": token},
                                        query="wait_for_change=true&timeout_sec=30"), 10)
    assert r.status == 401 and loop.time() - started < 5


async def test_longpoll_refused_when_require_token_is_switched_on(source: FakeSource) -> None:
    env = Env(source)
    waiter = asyncio.create_task(env.call("GET", PATH, query="wait_for_change=true"))
    await asyncio.sleep(0.05)
    source.bump(IID, require_token=True, hostname="secret-name")
    env.cache.invalidate(IID)
    r = await asyncio.wait_for(waiter, 5)
    assert r.status == 401 and b"secret-name" not in r.body


async def test_regression_post_openstack_latest_password_flood_is_429_not_503(
        source: FakeSource) -> None:
    """Found by the e2e fuzzer: a guest over its backend guest-write budget
    (the backend answers 429) got 503, as if the service had failed."""
    from interceptor.node.backend_client import BackendUnavailable

    env = Env(source)
    env.writer.error = BackendUnavailable("backend password answered 429", 429)
    r = await env.call("POST", "/openstack/latest/password", body=b"pw")
    assert r.status == 429 and r.header("Retry-After") == "1" and r.hold > 0
    env.writer.error = BackendUnavailable("backend down")
    assert (await env.call("POST", "/openstack/latest/password", body=b"pw")).status == 503
