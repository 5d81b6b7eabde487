"""The guest request handler: every status, tokens, writes, long-polls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from interceptor.formats.rendered import etag_of
from interceptor.formats.router import render_path
from interceptor.node.backend_client import (
    BackendRejected,
    BackendUnavailable,
    Conflict,
    NotBound,
    NotFound,
    TooLarge,
)
from interceptor.node.cache import DocumentCache
from interceptor.node.guest_api import GuestApi, GuestApiSettings
from interceptor.node.http_server import Request, Response, TapIdentity
from interceptor.node.limits import RateLimiter
from interceptor.node.metrics import NodeMetrics
from interceptor.node.tokens import TokenIssuer
from tests.unit.node.node_fakes import IID, FakeClock, FakeSource, FakeWriter, load_doc

TAP = TapIdentity("tap0", 5, IID)


class Env:
    def __init__(self, source: FakeSource, *, rate: float = 0.0, burst: int = 10,
                 disabled_action: str = "403") -> None:
        self.source = source
        self.clock = FakeClock()
        self.token_clock = FakeClock(1_700_000_000.0)
        self.metrics = NodeMetrics()
        self.cache = DocumentCache(source, clock=self.clock, metrics=self.metrics)
        self.tokens = TokenIssuer(b"node-secret", clock=self.token_clock)
        self.writer = FakeWriter()
        self.api = GuestApi(self.cache, self.tokens, self.writer, render_path,
                            rate_limiter=RateLimiter(rate, burst, clock=self.clock),
                            settings=GuestApiSettings(token_hop_limit=1, retry_after=7,
                                                      disabled_action=disabled_action),
                            metrics=self.metrics)

    async def call(self, method: str, path: str, headers: dict[str, str] | None = None,
                   body: bytes = b"", query: str = "", tap: TapIdentity = TAP) -> Response:
        req = Request(method, path + ("?" + query if query else ""), path, query, False,
                      {k.lower(): v for k, v in (headers or {}).items()}, True, body)
        result = self.api.handle(tap, req)
        if isinstance(result, Response):
            return result
        return await result

    def sync(self, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
        req = Request(method, path, path, "", False,
                      {k.lower(): v for k, v in (headers or {}).items()}, True, b"")
        return self.api.handle(TAP, req)

    async def token(self, ttl: str = "60") -> str:
        r = await self.call("PUT", "/latest/api/token",
                            {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
        assert r.status == 200
        return r.body.decode()


@pytest.fixture
def env(source: FakeSource) -> Env:
    return Env(source)


def with_doc(source: FakeSource, **changes: Any) -> FakeSource:
    source.put(load_doc(**changes))
    return source


async def test_miss_then_synchronous_hit(env: Env) -> None:
    first = env.sync("GET", "/latest/meta-data/instance-id")
    assert not isinstance(first, Response)  # a coroutine: the cache was empty
    r = await first
    assert r.status == 200 and r.body == IID.encode()
    assert r.header("ETag") == etag_of(r.body)
    hit = env.sync("GET", "/latest/meta-data/instance-id")
    assert isinstance(hit, Response) and hit is r  # memoized per (revision, path)
    assert len(env.source.calls) == 1


async def test_surfaces_and_404_carry_etags(env: Env) -> None:
    for path in ("/", "/openstack/latest/meta_data.json", "/nocloud/meta-data", "/metadata",
                 "/no/such/path"):
        r = await env.call("GET", path)
        expected = render_path(env.source.docs[IID], path)
        assert (r.status, r.body, r.content_type) == (expected.status, expected.body,
                                                      expected.content_type)
        assert r.header("ETag") == etag_of(expected.body)


async def test_head_and_if_none_match(env: Env) -> None:
    get = await env.call("GET", "/latest/meta-data/hostname")
    head = await env.call("HEAD", "/latest/meta-data/hostname")
    assert head.status == 200 and head.body == get.body  # the server drops HEAD bodies
    tag = get.header("ETag")
    assert tag is not None
    r = await env.call("GET", "/latest/meta-data/hostname", {"If-None-Match": tag})
    assert r.status == 304 and r.header("ETag") == tag


async def test_identity_headers_are_ignored(env: Env, source: FakeSource) -> None:
    other = load_doc(instance_id="i-other", hostname="other")
    source.put(other)
    r = await env.call("GET", "/latest/meta-data/instance-id",
                       {"X-Instance-ID": "i-other", "X-Forwarded-For": "10.1.1.1",
                        "X-Neutron-Network-ID": "n", "Forwarded": "for=1.2.3.4",
                        "X-Instance-ID-Signature": "abc"})
    assert r.body == IID.encode()
    assert {c[0] for c in source.calls} == {IID}


# -- tokens ---------------------------------------------------------------------------


async def test_token_put_success(env: Env) -> None:
    r = await env.call("PUT", "/latest/api/token",
                       {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    assert r.status == 200 and r.ip_ttl == 1
    assert r.header("X-aws-ec2-metadata-token-ttl-seconds") == "21600"
    assert env.tokens.check(r.body.decode(), IID).value == "valid"


@pytest.mark.parametrize("ttl", [None, "0", "21601", "abc", "-5", ""])
async def test_token_put_bad_ttl_is_400(env: Env, ttl: str | None) -> None:
    headers = {} if ttl is None else {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    assert (await env.call("PUT", "/latest/api/token", headers)).status == 400


async def test_token_put_forwarded_is_403(env: Env) -> None:
    r = await env.call("PUT", "/latest/api/token",
                       {"X-aws-ec2-metadata-token-ttl-seconds": "60",
                        "X-Forwarded-For": "10.0.0.1"})
    assert r.status == 403


@pytest.mark.parametrize("path", ["/2021-03-23/api/token", "/2009-04-04/api/token",
                                  "/foo/api/token"])
async def test_token_put_versioned_is_403(env: Env, path: str) -> None:
    r = await env.call("PUT", path, {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert r.status == 403


async def test_get_on_token_path_is_405(env: Env) -> None:
    r = await env.call("GET", "/latest/api/token")
    assert r.status == 405 and r.header("Allow") == "PUT"


async def test_tokens_on_gets(env: Env) -> None:
    token = await env.token("10")
    path = "/latest/meta-data/instance-id"
    assert (await env.call("GET", path, {"X-aws-ec2-metadata-token": token})).status == 200
    bad = {"X-aws-ec2-metadata-token": token[:-2] + ("AA" if token[-2:] != "AA" else "BB")}
    assert (await env.call("GET", path, bad)).status == 401
    assert (await env.call("GET", path, {"X-aws-ec2-metadata-token": "junk"})).status == 401
    other = env.tokens.issue("i-other", 60)
    assert (await env.call("GET", path, {"X-aws-ec2-metadata-token": other})).status == 401
    env.token_clock.advance(10)
    assert (await env.call("GET", path, {"X-aws-ec2-metadata-token": token})).status == 401
    # IMDSv1 (no token) still works when the instance does not require tokens.
    assert (await env.call("GET", path)).status == 200
    text = env.metrics.render().decode()
    assert 'interceptor_node_tokens_rejected_total{reason="expired"} 1.0' in text
    assert 'interceptor_node_tokens_rejected_total{reason="bad_signature"} 2.0' in text


async def test_token_of_another_tap_rejected(env: Env, source: FakeSource) -> None:
    source.put(load_doc(instance_id="i-b"))
    token = await env.token()
    r = await env.call("GET", "/latest/meta-data/", {"X-aws-ec2-metadata-token": token},
                       tap=TapIdentity("tapb", 9, "i-b"))
    assert r.status == 401


async def test_require_token_mode(source: FakeSource) -> None:
    env = Env(with_doc(source, require_token=True))
    for path in ("/latest/meta-data/instance-id", "/openstack/latest/user_data",
                 "/nocloud/user-data", "/metadata"):
        assert (await env.call("GET", path)).status == 401
    token = await env.token()
    r = await env.call("GET", "/latest/meta-data/instance-id",
                       {"X-aws-ec2-metadata-token": token})
    assert r.status == 200


# -- disabled, unavailable, rate limit, methods ----------------------------------------


async def test_disabled_is_403_for_everything(source: FakeSource) -> None:
    env = Env(with_doc(source, metadata_enabled=False))
    for method, path, headers in [
            ("GET", "/latest/meta-data/instance-id", {}),
            ("HEAD", "/", {}),
            ("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
            ("POST", "/openstack/latest/password", {}),
            ("PUT", "/interceptor/v1/guest-data/k", {}),
            ("GET", "/openstack/latest/meta_data.json", {})]:
        r = await env.call(method, path, headers, body=b"x")
        assert r.status == 403 and r.close, (method, path)
    assert env.writer.calls == []


async def test_disabled_in_reset_mode_sends_no_byte(source: FakeSource) -> None:
    env = Env(with_doc(source, metadata_enabled=False), disabled_action="reset")
    for method, path in [("GET", "/latest/meta-data/instance-id"), ("GET", "/metadata"),
                         ("PUT", "/latest/api/token")]:
        r = await env.call(method, path, {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        assert r.reset, (method, path)
    assert env.writer.calls == []


async def test_no_document_and_backend_down_is_503(source: FakeSource) -> None:
    source.error = BackendUnavailable("down")
    env = Env(source)
    for method, path, headers in [
            ("GET", "/latest/meta-data/", {}),
            ("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
            ("POST", "/openstack/latest/password", {})]:
        r = await env.call(method, path, headers)
        assert r.status == 503 and r.header("Retry-After") == "7", (method, path)


@pytest.mark.parametrize("error", [NotBound("x"), NotFound("x")])
async def test_instance_not_bound_here_is_503(source: FakeSource, error: Exception) -> None:
    source.error = error  # type: ignore[assignment]
    env = Env(source)
    assert (await env.call("GET", "/")).status == 503


async def test_rate_limit_per_vm(source: FakeSource) -> None:
    source.put(load_doc(instance_id="i-b"))
    env = Env(source, rate=1.0, burst=3)
    statuses = [(await env.call("GET", "/")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    r = await env.call("GET", "/")
    assert r.header("Retry-After") == "1"
    neighbour = TapIdentity("tapb", 9, "i-b")
    assert (await env.call("GET", "/", tap=neighbour)).status == 200
    env.clock.advance(1.0)
    assert (await env.call("GET", "/")).status == 200
    text = env.metrics.render().decode()
    assert f'interceptor_node_vm_refusals_total{{instance_id="{IID}",reason="rate_limited"}} 3.0' \
        in text


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PATCH", "/latest/meta-data/", "GET, HEAD"),
    ("POST", "/latest/meta-data/", "GET, HEAD"),
    ("OPTIONS", "/", "GET, HEAD"),
    ("PUT", "/latest/meta-data/hostname", "GET, HEAD"),
    ("DELETE", "/openstack/latest/password", "GET, HEAD, POST"),
    ("GET", "/interceptor/v1/meta/public/k", None),  # a read path: renderer's 404
    ("POST", "/interceptor/v1/meta/public/k", "GET, HEAD, PUT, DELETE"),
    ("POST", "/interceptor/v1/guest-data/k", "GET, HEAD, PUT, DELETE"),
    ("GET", "/interceptor/v1/disable", None),
    ("PUT", "/interceptor/v1/disable", "POST"),
])
async def test_other_methods_405(env: Env, method: str, path: str, allow: str | None) -> None:
    r = await env.call(method, path)
    if allow is None:
        assert r.status == 404
    else:
        assert r.status == 405 and r.header("Allow") == allow


# -- writes ---------------------------------------------------------------------------


async def test_password_post_goes_through_backend_then_refetches(env: Env) -> None:
    await env.call("GET", "/openstack/latest/password")
    r = await env.call("POST", "/openstack/latest/password", body=b"pw")
    assert r.status == 200 and env.writer.calls == [("password", IID, "pw")]
    assert env.cache.peek(IID) is None  # invalidated: the next read refetches
    r = await env.call("POST", "/openstack/2013-04-04/password", body=b"pw2")
    assert r.status == 200


@pytest.mark.parametrize(("error", "status"), [
    (Conflict("set"), 409), (BackendUnavailable("down"), 503), (TooLarge("x"), 413),
    (NotBound("x"), 403), (NotFound("x"), 404), (BackendRejected("bad", 400), 400),
    (BackendRejected("sig", 401), 502)])
async def test_write_errors(env: Env, error: Exception, status: int) -> None:
    env.writer.error = error  # type: ignore[assignment]
    r = await env.call("POST", "/openstack/latest/password", body=b"pw")
    assert r.status == status
    assert env.writer.calls == []


async def test_password_too_long_is_413(env: Env) -> None:
    r = await env.call("POST", "/openstack/latest/password", body=b"x" * 1021)
    assert r.status == 413 and env.writer.calls == []
    r = await env.call("POST", "/openstack/latest/password", body=b"x" * 1020)
    assert r.status == 200


async def test_delete_meta_key(source: FakeSource) -> None:
    env = Env(with_doc(source, guest_writes=False))  # the owner's data: opt-in only
    assert (await env.call("DELETE", "/interceptor/v1/meta/public/role")).status == 403
    env = Env(with_doc(source, guest_writes=True))
    r = await env.call("DELETE", "/interceptor/v1/meta/public/role")
    assert r.status == 204 and env.writer.calls == [("delete_meta", IID, "public", "role")]
    r = await env.call("DELETE", "/interceptor/v1/meta/private/role")
    assert r.status == 405  # private keys are not the guest's


async def test_put_meta_key_needs_guest_writes(source: FakeSource) -> None:
    env = Env(with_doc(source, guest_writes=False))
    r = await env.call("PUT", "/interceptor/v1/meta/restricted/result", body=b"done")
    assert r.status == 403 and env.writer.calls == []
    env = Env(with_doc(source, guest_writes=True))
    r = await env.call("PUT", "/interceptor/v1/meta/restricted/result", body=b"done")
    assert r.status == 204
    assert env.writer.calls == [("put_meta", IID, "restricted", "result", "done")]
    assert env.cache.peek(IID) is None  # read-your-writes
    r = await env.call("PUT", "/interceptor/v1/meta/system/result", body=b"x")
    assert r.status == 405


async def test_disable_goes_to_the_backend(env: Env) -> None:
    r = await env.call("POST", "/interceptor/v1/disable")
    assert r.status == 204 and env.writer.calls == [("disable", IID)]
    env.writer.error = BackendUnavailable("down")
    assert (await env.call("POST", "/interceptor/v1/disable")).status == 503


async def test_guest_reads_back_its_data_and_parts(source: FakeSource) -> None:
    env = Env(with_doc(source, guest_data={"result": "42"}))
    r = await env.call("GET", "/interceptor/v1/guest-data/")
    assert (r.status, r.body) == (200, b"result")
    r = await env.call("GET", "/interceptor/v1/guest-data/result")
    assert (r.status, r.body) == (200, b"42")
    r = await env.call("GET", "/interceptor/v1/user-data/")
    assert r.status == 200 and r.body.splitlines() == [b"user", b"platform.sh"]


async def test_guest_data_needs_guest_writes(source: FakeSource) -> None:
    env = Env(with_doc(source, guest_writes=False))
    assert (await env.call("PUT", "/interceptor/v1/guest-data/k", body=b"v")).status == 403
    env = Env(with_doc(source, guest_writes=True))
    assert (await env.call("PUT", "/interceptor/v1/guest-data/k", body=b"v")).status == 204
    assert (await env.call("DELETE", "/interceptor/v1/guest-data/k")).status == 204
    assert env.writer.calls == [("put_guest", IID, "k", "v"), ("delete_guest", IID, "k")]
    assert (await env.call("PUT", "/interceptor/v1/guest-data/" + "k" * 256)).status == 400


async def test_write_with_invalid_token_is_401(env: Env) -> None:
    r = await env.call("POST", "/openstack/latest/password",
                       {"X-aws-ec2-metadata-token": "bogus"}, body=b"pw")
    assert r.status == 401 and env.writer.calls == []


# -- long-polling ---------------------------------------------------------------------

PATH = "/latest/meta-data/hostname"


async def test_longpoll_returns_at_once_when_etag_differs(env: Env) -> None:
    r = await env.call("GET", PATH, query="wait_for_change=true&last_etag=old&timeout_sec=30")
    assert r.status == 200 and r.body == b"vm1"


async def test_longpoll_waits_for_change(env: Env, source: FakeSource) -> None:
    current = await env.call("GET", PATH)
    tag = current.header("ETag")
    assert tag is not None
    waiter = asyncio.create_task(env.call(
        "GET", PATH, query=f"wait_for_change=true&last_etag={tag.strip(chr(34))}"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    source.bump(IID, meta={**source.docs[IID]["meta"]})  # new revision, same hostname
    env.cache.invalidate(IID)
    await asyncio.sleep(0.05)
    assert not waiter.done()  # the path's content did not change: still waiting
    source.bump(IID, hostname="renamed")
    env.cache.invalidate(IID)
    r = await asyncio.wait_for(waiter, 5)
    assert r.body == b"renamed" and r.header("ETag") != tag


async def test_longpoll_without_last_etag_waits_for_next_change(env: Env,
                                                                source: FakeSource) -> None:
    waiter = asyncio.create_task(env.call("GET", PATH, query="wait_for_change=true"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    source.bump(IID, hostname="next")
    env.cache.invalidate(IID)
    assert (await asyncio.wait_for(waiter, 5)).body == b"next"


async def test_longpoll_timeout_returns_current(env: Env) -> None:
    current = await env.call("GET", PATH)
    tag = current.header("ETag")
    r = await env.call("GET", PATH, {}, query=f"wait_for_change=true&last_etag={tag}"
                       "&timeout_sec=0.2")
    assert r.status == 200 and r.header("ETag") == tag


async def test_longpoll_released_with_403_when_disabled(env: Env, source: FakeSource) -> None:
    waiter = asyncio.create_task(env.call("GET", PATH, query="wait_for_change=true"))
    await asyncio.sleep(0.05)
    source.bump(IID, metadata_enabled=False)
    env.cache.invalidate(IID)
    r = await asyncio.wait_for(waiter, 5)
    assert r.status == 403 and r.close


@pytest.mark.parametrize("query", ["wait_for_change=true&timeout_sec=abc",
                                   "wait_for_change=true&timeout_sec=-1",
                                   "wait_for_change=true&timeout_sec=nan"])
async def test_longpoll_bad_timeout_is_400(env: Env, query: str) -> None:
    assert (await env.call("GET", PATH, query=query)).status == 400


async def test_longpoll_false_is_plain_get(env: Env) -> None:
    r = await env.call("GET", PATH, query="wait_for_change=false")
    assert r.status == 200 and r.body == b"vm1"


async def test_thousands_of_waiters_cost_one_refetch(env: Env, source: FakeSource) -> None:
    await env.call("GET", PATH)
    calls_before = len(source.calls)
    waiters = [asyncio.create_task(env.call("GET", PATH, query="wait_for_change=true"))
               for _ in range(2000)]
    await asyncio.sleep(0.1)
    assert env.cache.waiters(IID) == 2000
    assert 'interceptor_node_longpoll_waiters 2000.0' in env.metrics.render().decode()
    source.bump(IID, hostname="all")
    env.cache.invalidate(IID)
    results = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert {r.body for r in results} == {b"all"}
    assert len(source.calls) - calls_before == 1


async def test_metrics_by_surface(env: Env) -> None:
    await env.call("GET", "/openstack/latest/meta_data.json")
    await env.call("GET", "/latest/meta-data/")
    await env.call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "5"})
    text = env.metrics.render().decode()
    assert 'interceptor_node_requests_total{status="200",surface="openstack"} 1.0' in text
    assert 'interceptor_node_requests_total{status="200",surface="ec2"} 1.0' in text
    assert 'interceptor_node_requests_total{status="200",surface="token"} 1.0' in text
    assert "interceptor_node_tokens_issued_total 1.0" in text


async def test_forget_instance_drops_rate_state(source: FakeSource) -> None:
    env = Env(source, rate=1.0, burst=1)
    assert (await env.call("GET", "/")).status == 200
    assert (await env.call("GET", "/")).status == 429
    env.api.forget_instance(IID)
    assert (await env.call("GET", "/")).status == 200
