"""The serial daemon's operator listener: metrics after real traffic, readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import test_utils, web
from prometheus_client.parser import text_string_to_metric_families

from interceptor.channels.serial_operator import operator_app
from interceptor.channels.serial_server import SerialServer
from tests.channels.support import Client, FakeSource, document

OperatorClient = test_utils.TestClient[web.Request, web.Application]


@pytest.fixture
async def operator(server: SerialServer) -> AsyncIterator[OperatorClient]:
    client = test_utils.TestClient(test_utils.TestServer(operator_app(server)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_and_readiness(server: SerialServer, source: FakeSource,
                                     operator: OperatorClient) -> None:
    r = await operator.get("/readyz")
    assert r.status == 503  # the source has not answered yet
    source.bind("vm1", document("i-one"))
    source.bind("vm2", document("i-two"), enabled=False)
    await server.refresh()
    assert (await operator.get("/readyz")).status == 200
    c1 = await Client.unix(server.socket_path("vm1"))
    c2 = await Client.unix(server.socket_path("vm2"))
    await c1.request("REQUEST_METADATA")
    await c1.request("REQUEST_BOGUS")
    await c1.send(b"junk\n<\n/uuid\n>")
    await c1.line()
    await c2.request("REQUEST_USERDATA")
    r = await operator.get("/metrics")
    assert r.status == 200
    samples = _samples(await r.text())
    assert samples[("interceptor_serial_answers_total", (("request", "REQUEST_METADATA"),))] == 1
    assert samples[("interceptor_serial_answers_total", (("request", "cloudsigma"),))] == 1
    assert samples[("interceptor_serial_errors_total", (("reason", "unknown-code"),))] == 1
    assert samples[("interceptor_serial_errors_total", (("reason", "disabled"),))] == 1
    assert samples[("interceptor_serial_skipped_lines_total", (("reason", "garbage"),))] == 1
    assert samples[("interceptor_serial_sockets", ())] == 2
    assert samples[("interceptor_serial_open_connections", ())] == 2
    assert samples[("interceptor_serial_source_up", ())] == 1
    assert not any("i-one" in str(key) or "vm1" in str(key) for key in samples)
    await c1.close()
    await c2.close()
    assert (await operator.get("/healthz")).status == 200
