"""Backends that fail over (issue 16): two backend processes on one real
PostgreSQL, the node configured with both (``backend_url`` list). The first
is killed (-9) while every guest boots at once: no guest request fails, the
node still fetches each document once, a later change reaches every guest
with one fetch per VM, and the node goes back to the first backend once it
returns and ``backend_failback`` has passed."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest

from tests.backend.support import PgServer
from tests.e2e.stack import BACKEND_PORT, get, metric, product
from tests.e2e.test_storm import CRAWL_PATHS, _client, _create_many, _finish
from tests.lab import Topology, readline

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow]

SECOND_PORT, SECOND_OPERATOR_PORT = 8710, 8711
GUESTS = 30


@pytest.fixture
def postgres() -> Iterator[PgServer]:
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


def _fetched(node_metrics: str) -> float:
    return metric(node_metrics, "interceptor_node_backend_requests_total", op="document",
                  outcome="200")


def test_backend_killed_under_a_boot_storm(topology: Topology, postgres: PgServer) -> None:
    dsn = asyncio.run(postgres.create_database())
    urls = [f"http://127.0.0.1:{BACKEND_PORT}", f"http://127.0.0.1:{SECOND_PORT}"]
    with product(topology, datapath="nft", backend_options={"database": dsn},
                 node_options={"backend_url": urls, "backend_failback": 3.0}) as stack:
        stack.start_extra_backend("backend-b", SECOND_PORT, SECOND_OPERATOR_PORT)
        guests = [topology.add_guest(ip="10.41.0.2/24") for _ in range(GUESTS)]
        ids = _create_many(stack, guests, "fo")
        stack.wait_listeners(GUESTS)
        assert _fetched(stack.node_metrics()) == 0

        procs = [_client(g, "crawl", json.dumps(CRAWL_PATHS), "4") for g in guests]
        for proc in procs:
            assert readline(proc, 30.0).strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        time.sleep(0.05)
        assert stack.stop_backend(signal.SIGKILL) == -signal.SIGKILL  # the first, mid-storm
        summaries = [_finish(p) for p in procs]
        for iid, summary in zip(ids, summaries, strict=True):
            results = summary["results"]
            assert isinstance(results, dict) and len(results) == len(CRAWL_PATHS)
            bad = {p: r for p, r in results.items() if r[0] not in (200, 404)}
            assert not bad, f"{iid}: {bad}"
            assert results["/latest/meta-data/instance-id"] == [200, iid]
        node = stack.node_metrics()
        fetched = _fetched(node)
        assert fetched == GUESTS, f"{fetched} document fetches for {GUESTS} VMs"
        assert metric(node, "interceptor_node_backend_failovers_total", to="1") == 1

        # A change through the surviving backend: one fetch per VM, every guest sees it.
        stack.api_port = SECOND_PORT
        for iid in ids:
            status, body = stack.api("PATCH", f"/v1/servers/{iid}", {"hostname": f"{iid}-new"})
            assert status == 200, body
        deadline = time.monotonic() + 20
        pending = dict(zip(ids, guests, strict=True))
        while pending and time.monotonic() < deadline:
            for iid, guest in list(pending.items()):
                status, text, _ = get(guest, "/latest/meta-data/hostname", max_time=2.0)
                assert status == 200, (status, text)
                if text == f"{iid}-new":
                    del pending[iid]
            time.sleep(0.2)
        assert not pending, f"never saw the change: {sorted(pending)}"
        refetched = _fetched(stack.node_metrics()) - fetched
        assert refetched == GUESTS, f"{refetched} fetches for one change to {GUESTS} VMs"

        # The first backend returns: the node goes back to it after the failback period.
        stack.start_backend()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if metric(stack.node_metrics(), "interceptor_node_backend_failovers_total",
                      to="0") >= 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the node never went back to the first backend")
        print(f"\nfail-over: {GUESTS} VMs x {len(CRAWL_PATHS)} paths, first backend killed "
              f"mid-storm: 0 guest failures, {fetched:.0f} document fetches, "
              f"{refetched:.0f} for one change to every VM")
