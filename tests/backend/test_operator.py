"""The operator listener: health, readiness and Prometheus metrics by route template."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, test_utils
from prometheus_client.parser import text_string_to_metric_families

from interceptor.backend.app import create_app
from interceptor.backend.metrics import BackendMetrics
from interceptor.backend.operator import create_operator_app
from tests.backend.support import Api, make_config


@pytest.fixture
async def pair(database: str) -> AsyncIterator[tuple[Api, str]]:
    metrics = BackendMetrics()
    app = create_app(make_config(database), metrics=metrics)
    api_server = test_utils.TestServer(app)
    await api_server.start_server()
    op_server = test_utils.TestServer(create_operator_app(app, metrics))
    await op_server.start_server()
    try:
        async with ClientSession() as session:
            yield (Api(session, str(api_server.make_url("")).rstrip("/"), app),
                   str(op_server.make_url("")).rstrip("/"))
    finally:
        await op_server.close()
        await api_server.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_health_ready_and_metrics(pair: tuple[Api, str]) -> None:
    api, op = pair
    for path in ("/healthz", "/readyz"):
        async with api.session.get(op + path) as resp:
            assert resp.status == 200
    await api.customer("c1")
    await api.server("s1", "c1")
    for _ in range(3):
        await api.document("s1")
    await api.call("GET", "/v1/servers/nope")
    async with api.session.get(op + "/metrics") as resp:
        assert resp.status == 200
        samples = _samples(await resp.text())
    key = ("interceptor_backend_requests_total",
           (("method", "GET"), ("route", "/v1/nodes/{node}/instances/{iid}/document"),
            ("status", "200")))
    assert samples[key] == 3
    key404 = ("interceptor_backend_requests_total",
              (("method", "GET"), ("route", "/v1/servers/{id}"), ("status", "404")))
    assert samples[key404] == 1
    assert samples[("interceptor_backend_documents_served_total",
                    (("result", "served"),))] == 3
    for op in ("commit", "get", "revision"):
        assert samples[("interceptor_backend_store_seconds_count", (("op", op),))] >= 1, op
    assert ("interceptor_backend_watchers", ()) in samples
    # Raw paths never become labels (bounded label sets).
    assert not any("s1" in dict(labels).get("route", "") for _, labels in samples)


async def test_readyz_fails_when_store_is_gone(pair: tuple[Api, str]) -> None:
    from interceptor.backend.context import BACKEND
    api, op = pair
    await api.app[BACKEND].store.close()
    async with api.session.get(op + "/readyz") as resp:
        assert resp.status == 503
