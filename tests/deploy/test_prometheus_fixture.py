"""The real-Prometheus fixture scrapes a live exporter and answers PromQL."""

from __future__ import annotations

import secrets
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.helpers.prometheus import prometheus_server
from tests.lab import netns

pytestmark = [pytest.mark.slow]

ALERTS = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"

# Started inside a netns: counts N events, serves /metrics on 127.0.0.1:PORT.
_EXPORTER = (
    "import sys, time\n"
    "from prometheus_client import CollectorRegistry, Counter, start_http_server\n"
    "reg = CollectorRegistry()\n"
    "c = Counter('fixture_probe_events', 'events', registry=reg)\n"
    "c.inc(int(sys.argv[2]))\n"
    "start_http_server(int(sys.argv[1]), addr='127.0.0.1', registry=reg)\n"
    "print('READY', flush=True)\n"
    "time.sleep(120)\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def exporter(events: int) -> Iterator[str]:
    registry = CollectorRegistry()
    counter = Counter("fixture_probe_events", "events counted by the test", registry=registry)
    counter.inc(events)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_scrapes_exporter_and_query_returns_its_counter() -> None:
    events = secrets.randbelow(1000) + 1
    with exporter(events) as target, \
            prometheus_server({"probe": [target]}, rule_files=[ALERTS]) as prom:
        targets = prom.wait_for_targets_up(timeout=30)
        assert [t["labels"]["job"] for t in targets] == ["probe"]
        value = prom.wait_for_value('fixture_probe_events_total{job="probe"}',
                                    lambda v: v == events, timeout=30)
        assert value == events
        # The shipped alert rules load into a real server, not only promtool.
        groups = {g["name"] for g in prom.rules()}
        assert groups, prom.log()[-2000:]


@pytest.mark.root
def test_runs_inside_a_netns_and_scrapes_its_loopback() -> None:
    events = secrets.randbelow(1000) + 1
    with netns() as ns:
        port_probe = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
             "print(s.getsockname()[1])"],
            capture_output=True, text=True, check=True)
        port = int(port_probe.stdout)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _EXPORTER, str(port),
             str(events)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            assert ready and proc.stdout.readline().strip() == "READY"
            with prometheus_server({"probe": [f"127.0.0.1:{port}"]}, netns=ns) as prom:
                prom.wait_for_targets_up(timeout=30)
                assert prom.wait_for_value("sum(fixture_probe_events_total)",
                                           lambda v: v == events, timeout=30) == events
        finally:
            proc.kill()
            proc.wait(timeout=10)
