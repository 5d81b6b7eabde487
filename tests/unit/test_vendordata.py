"""VendorDataService against real HTTP targets on 127.0.0.1 (aiohttp test servers)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter, Histogram

from interceptor.backend.vendordata import (
    MAX_RESPONSE_BYTES,
    VendorDataService,
    VendorRequest,
    parse_targets,
)
from interceptor.common.errors import ConfigError

TOKEN = "svc-token-must-not-be-logged"


def request(iid: str = "i-1") -> VendorRequest:
    return {
        "project-id": "c-1",
        "instance-id": iid,
        "image-id": "img-1",
        "user-data": "#cloud-config\n{}",
        "hostname": "vm1",
        "metadata": {"role": "web", "n": 1},
    }


@dataclass
class Targets:
    """A target server; ``seen`` records every request the good target got."""

    server: TestServer
    seen: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def next_arrival(self) -> str:
        """The instance id of the next request the good target receives (bounded wait)."""
        return await asyncio.wait_for(self.arrived.get(), timeout=5.0)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def targets() -> AsyncIterator[Targets]:
    state: dict[str, Targets] = {}

    async def good(req: web.Request) -> web.Response:
        body = await req.json()
        state["t"].seen.append((body, req.headers.get("Authorization")))
        state["t"].arrived.put_nowait(body["instance-id"])
        await state["t"].gate.wait()
        return web.json_response({"iid": body["instance-id"], "n": len(state["t"].seen)})

    async def slow(req: web.Request) -> web.Response:
        await state["t"].release.wait()  # hangs until teardown
        return web.json_response({"late": True})

    async def fail(req: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    async def bad(req: web.Request) -> web.Response:
        return web.Response(text="{not json", content_type="application/json")

    async def array(req: web.Request) -> web.Response:
        return web.json_response([1, 2, 3])

    async def big(req: web.Request) -> web.Response:
        return web.Response(body=b'{"x": "' + b"a" * MAX_RESPONSE_BYTES + b'"}')

    async def redirect(req: web.Request) -> web.Response:
        raise web.HTTPFound("/good")

    app = web.Application()
    for path, handler in (("/good", good), ("/slow", slow), ("/fail", fail), ("/bad", bad),
                          ("/array", array), ("/big", big), ("/redirect", redirect)):
        app.router.add_post(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    t = Targets(server)
    t.gate.set()
    state["t"] = t
    try:
        yield t
    finally:
        t.release.set()
        t.gate.set()
        await server.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Metrics:
    """The attributes the service uses, labelled by ``target`` only (the brief's minimum)."""

    def __init__(self, with_reason: bool = False) -> None:
        r = self.registry = CollectorRegistry()
        self.vendor_calls = Counter("vc", "calls", ["target"], registry=r)
        labels = ["target", "reason"] if with_reason else ["target"]
        self.vendor_failures = Counter("vf", "failures", labels, registry=r)
        self.vendor_latency = Histogram("vl", "latency", ["target"], registry=r)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def make_service() -> AsyncIterator[Callable[..., VendorDataService]]:
    made: list[VendorDataService] = []

    def make(**kwargs: Any) -> VendorDataService:
        kwargs.setdefault("static_files", [])
        kwargs.setdefault("service_token", TOKEN)
        kwargs.setdefault("connect_timeout", 0.5)
        kwargs.setdefault("read_timeout", 0.5)
        service = VendorDataService(**kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.close()


async def test_good_target_gets_nova_request(targets: Targets,
                                             make_service: Callable[..., VendorDataService]
                                             ) -> None:
    service = make_service(dynamic_targets=[f"good@{targets.url('/good')}"])
    await service.start()
    data = await service.get(request())
    assert data == {"static": {}, "dynamic": {"good": {"iid": "i-1", "n": 1}}}
    body, auth = targets.seen[0]
    assert body == json.loads(json.dumps(request()))
    assert set(body) == {"project-id", "instance-id", "image-id", "user-data", "hostname",
                         "metadata"}
    assert auth == f"Bearer {TOKEN}"


async def test_no_token_no_authorization(targets: Targets,
                                         make_service: Callable[..., VendorDataService]) -> None:
    service = make_service(dynamic_targets=[f"good@{targets.url('/good')}"], service_token=None)
    await service.start()
    await service.get(request())
    assert targets.seen[0][1] is None


async def test_failing_targets_are_left_out_and_counted(
        targets: Targets, make_service: Callable[..., VendorDataService],
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    names = ["good", "fail", "bad", "array", "big", "redirect"]
    service = make_service(
        dynamic_targets=[f"{n}@{targets.url('/' + n)}" for n in names]
        + ["refused@http://127.0.0.1:9/"], metrics=metrics)
    await service.start()
    with caplog.at_level(logging.WARNING, logger="interceptor.backend.vendordata"):
        data = await service.get(request())
    assert list(data["dynamic"]) == ["good"]
    for name in [*names, "refused"]:
        assert metrics.value("vc_total", target=name) == 1
        assert metrics.value("vl_count", target=name) == 1
        expected = 0 if name == "good" else 1
        assert metrics.value("vf_total", target=name) == expected
    assert TOKEN not in caplog.text
    assert "127.0.0.1" not in caplog.text  # target URLs are not logged either
    for name in ("fail", "bad", "array", "big", "redirect", "refused"):
        assert f"target {name} failed" in caplog.text


async def test_failure_reason_label_when_the_counter_has_one(
        targets: Targets, make_service: Callable[..., VendorDataService]) -> None:
    metrics = Metrics(with_reason=True)
    service = make_service(
        dynamic_targets=[f"fail@{targets.url('/fail')}", f"bad@{targets.url('/bad')}",
                         f"array@{targets.url('/array')}", f"slow@{targets.url('/slow')}"],
        metrics=metrics, connect_timeout=0.2, read_timeout=0.2)
    await service.start()
    await service.get(request())
    assert metrics.value("vf_total", target="fail", reason="status") == 1
    assert metrics.value("vf_total", target="bad", reason="invalid_json") == 1
    assert metrics.value("vf_total", target="array", reason="not_object") == 1
    assert metrics.value("vf_total", target="slow", reason="timeout") == 1


async def test_slow_target_bounded_by_timeouts(targets: Targets,
                                               make_service: Callable[..., VendorDataService]
                                               ) -> None:
    connect, read = 0.3, 0.4
    service = make_service(
        dynamic_targets=[f"slow{i}@{targets.url('/slow')}" for i in range(3)]
        + [f"good@{targets.url('/good')}"],
        connect_timeout=connect, read_timeout=read)
    await service.start()
    start = time.monotonic()
    data = await service.get(request())
    elapsed = time.monotonic() - start
    assert data["dynamic"] == {"good": {"iid": "i-1", "n": 1}}
    # concurrent: three hanging targets cost one timeout, not three
    assert elapsed < connect + read + 0.5, elapsed


async def test_duplicate_name_ignored(targets: Targets,
                                      make_service: Callable[..., VendorDataService],
                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="interceptor.backend.vendordata"):
        service = make_service(dynamic_targets=[f"one@{targets.url('/good')}",
                                                f"one@{targets.url('/fail')}"])
    assert [t.name for t in service.targets] == ["one"]
    assert caplog.text.count("repeated") == 1
    await service.start()
    data = await service.get(request())
    assert data["dynamic"] == {"one": {"iid": "i-1", "n": 1}}
    assert len(targets.seen) == 1


async def test_ttl_and_invalidate(targets: Targets,
                                  make_service: Callable[..., VendorDataService]) -> None:
    clock = FakeClock()
    service = make_service(dynamic_targets=[f"good@{targets.url('/good')}"], ttl=60.0,
                           clock=clock)
    await service.start()
    first = await service.get(request())
    assert (await service.get(request())) == first
    clock.now += 59.0
    assert (await service.get(request())) == first
    assert len(targets.seen) == 1
    clock.now += 2.0  # past the TTL
    second = await service.get(request())
    assert second["dynamic"]["good"]["n"] == 2
    service.invalidate("i-1")
    third = await service.get(request())
    assert third["dynamic"]["good"]["n"] == 3
    service.invalidate("i-unknown")  # harmless
    await service.get(request("i-2"))  # other instances have their own entries
    assert len(targets.seen) == 4
    assert (await service.get(request())) == third


async def test_single_flight_per_instance(targets: Targets,
                                          make_service: Callable[..., VendorDataService]) -> None:
    service = make_service(dynamic_targets=[f"good@{targets.url('/good')}"])
    await service.start()
    targets.gate.clear()
    waiters = [asyncio.create_task(service.get(request())) for _ in range(5)]
    other = asyncio.create_task(service.get(request("i-2")))
    # one round per instance reaches the target
    assert sorted([await targets.next_arrival(), await targets.next_arrival()]) == ["i-1", "i-2"]
    targets.gate.set()
    results = await asyncio.gather(*waiters)
    await other
    assert all(r == results[0] for r in results)
    assert len(targets.seen) == 2


async def test_invalidate_during_flight_is_not_cached(
        targets: Targets, make_service: Callable[..., VendorDataService]) -> None:
    service = make_service(dynamic_targets=[f"good@{targets.url('/good')}"])
    await service.start()
    targets.gate.clear()
    early = asyncio.create_task(service.get(request()))
    assert await targets.next_arrival() == "i-1"
    service.invalidate("i-1")
    targets.gate.set()
    assert (await early)["dynamic"]["good"]["n"] == 1
    assert (await service.get(request()))["dynamic"]["good"]["n"] == 2


async def test_cancelled_caller_does_not_cancel_the_round(
        targets: Targets, make_service: Callable[..., VendorDataService]) -> None:
    service = make_service(dynamic_targets=[f"good@{targets.url('/good')}"])
    await service.start()
    targets.gate.clear()
    first = asyncio.create_task(service.get(request()))
    second = asyncio.create_task(service.get(request()))
    assert await targets.next_arrival() == "i-1"
    first.cancel()
    targets.gate.set()
    assert (await second)["dynamic"]["good"]["n"] == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_static_files_merged_in_order(tmp_path: Path,
                                            make_service: Callable[..., VendorDataService]
                                            ) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"cloud-init": "#cloud-config\n{}", "x": 1, "y": {"k": 1}}))
    b.write_text(json.dumps({"x": 2, "z": "ü"}), encoding="utf-8")
    service = make_service(static_files=[str(a), str(b)], dynamic_targets=[])
    data = await service.get(request())  # no targets: no session needed
    assert data == {"static": {"cloud-init": "#cloud-config\n{}", "x": 2, "y": {"k": 1},
                               "z": "ü"}, "dynamic": {}}
    data["static"]["x"] = 99  # a caller's change does not leak into the next document
    assert (await service.get(request()))["static"]["x"] == 2


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    ("{not json", "invalid JSON"),
    ("[1, 2]", "not a JSON object"),
    (b"\xff\xfe", "cannot read"),
])
def test_bad_static_file_names_it(tmp_path: Path, content: str | bytes | None,
                                  message: str) -> None:
    path = tmp_path / "vendor.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        VendorDataService(static_files=[str(path)], dynamic_targets=[], service_token=None)
    assert str(path) in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("spec", ["noat", "@http://x/", "n@", "n@ftp://x/", "n@http://"])
def test_bad_target_spec(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_targets([spec])


def test_target_url_may_hold_at_sign() -> None:
    (target,) = parse_targets(["inv@http://user@127.0.0.1:8080/v1"])
    assert (target.name, target.url) == ("inv", "http://user@127.0.0.1:8080/v1")


async def test_get_before_start_is_a_clear_error(
        make_service: Callable[..., VendorDataService]) -> None:
    service = make_service(dynamic_targets=["a@http://127.0.0.1:9/"])
    with pytest.raises(RuntimeError, match="start"):
        await service.get(request())
