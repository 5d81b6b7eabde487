"""A real Prometheus scrapes a real backend process: the request count the
test generated comes back from PromQL, and ``up`` follows the process."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.prometheus import prometheus_server
from tests.lab import terminate

pytestmark = [pytest.mark.slow]

ALERTS = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def backend_process(tmp_path: Path, admin_token: str) -> Iterator[tuple[int, int,
                                                                        subprocess.Popen[bytes]]]:
    api_port, operator_port = _free_port(), _free_port()
    cmd = [str(Path(sys.executable).parent / "interceptor"), "backend", "serve",
           "--listen-host", "127.0.0.1", "--listen-port", str(api_port),
           "--operator-host", "127.0.0.1", "--operator-port", str(operator_port),
           "--database", f"sqlite:///{tmp_path / 'backend.sqlite'}"]
    log = open(tmp_path / "backend.log", "wb")  # noqa: SIM115 (closed in finally)
    # The token travels in the environment, not on the command line (ps shows argv).
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/bin:/bin",
                                 "INTERCEPTOR_BACKEND_ADMIN_TOKEN": admin_token})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if _get(f"http://127.0.0.1:{operator_port}/healthz") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "backend.log").read_text()
            assert time.monotonic() < deadline, "backend did not become healthy"
            time.sleep(0.1)
        yield api_port, operator_port, proc
    finally:
        terminate(proc, timeout=15)
        log.close()


def test_prometheus_counts_the_requests_the_test_made(tmp_path: Path) -> None:
    admin = secrets.token_urlsafe(24)
    requests = secrets.randbelow(20) + 5
    with backend_process(tmp_path, admin) as (api_port, operator_port, proc), \
            prometheus_server({"interceptor-backend": [f"127.0.0.1:{operator_port}"]},
                              rule_files=[ALERTS]) as prom:
        for _ in range(requests):
            assert _get(f"http://127.0.0.1:{api_port}/v1/customers", admin) == 200
        prom.wait_for_targets_up(timeout=30)
        query = ('sum(interceptor_backend_requests_total{job="interceptor-backend",'
                 'route="/v1/customers",method="GET",status="200"})')
        assert prom.wait_for_value(query, lambda v: v >= requests, timeout=30) == requests
        assert prom.query_value('up{job="interceptor-backend"}') == 1
        # The shipped rules evaluate against live data without errors.
        groups = prom.rules()
        assert {r["health"] for g in groups for r in g["rules"]} <= {"ok", "unknown"}
        proc.terminate()
        proc.wait(timeout=15)
        assert prom.wait_for_value('up{job="interceptor-backend"}', lambda v: v == 0,
                                   timeout=30) == 0
    # Bearer tokens never reach the log.
    log = (tmp_path / "backend.log").read_text(errors="replace")
    assert "/v1/customers" in log, log[-2000:]
    assert admin not in log
