"""A real Prometheus server (Debian's ``prometheus``) for tests.

    with prometheus_server({"node": ["127.0.0.1:9100"]}) as prom:
        prom.wait_for_targets_up(timeout=20)
        value = prom.wait_for_value('sum(interceptor_node_requests_total)',
                                    lambda v: v >= 5, timeout=20)

It listens on 127.0.0.1:<free port>, scrapes every ``scrape_interval`` and
keeps its TSDB in a private temporary directory, deleted at exit together
with the process (also when the body raises). With ``netns`` the server runs
inside that namespace (``ip netns exec``) so it reaches targets on the
namespace's loopback; queries are then made from inside it too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.lab import terminate

PROMETHEUS = "/usr/bin/prometheus"
START_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.2

# Runs inside the netns for queries: fetch one URL, print status and body.
_NETNS_GET = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
    "    sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    sys.stdout.write(str(e.code) + '\\n' + e.read().decode())\n"
    "except OSError as e:\n"
    "    sys.stdout.write('0\\n' + str(e))\n"
)


class PrometheusError(RuntimeError):
    """Prometheus did not start, answered with an error, or a wait timed out."""


def _free_port(netns: str | None) -> int:
    if netns is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c",
         "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
         "print(s.getsockname()[1])"],
        capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def scrape_config(targets: Mapping[str, Sequence[str]], scrape_interval: str,
                  rule_files: Sequence[str] = (),
                  evaluation_interval: str | None = None) -> dict[str, Any]:
    """The configuration document: one job per key of ``targets``."""
    return {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": evaluation_interval or scrape_interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addrs)}]}
            for job, addrs in targets.items()
        ],
    }


class PrometheusServer:
    """A running server; use ``prometheus_server`` to get one."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: Path,
                 netns: str | None) -> None:
        self.proc = proc
        self.port = port
        self.workdir = workdir
        self.netns = netns
        self.base_url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        """Everything the server wrote so far (for assertion messages)."""
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> tuple[int, str]:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if self.netns:
            out = subprocess.run(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c", _NETNS_GET, url],
                capture_output=True, text=True, check=False, timeout=15)
            status, _, body = out.stdout.partition("\n")
            return int(status or 0), body
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """``data`` of a successful ``/api/v1/<path>`` answer."""
        status, body = self._get("/api/v1/" + path, params)
        try:
            doc = json.loads(body)
        except ValueError:
            raise PrometheusError(f"prometheus {path}: HTTP {status}: {body[:300]}") from None
        if status != 200 or doc.get("status") != "success":
            raise PrometheusError(f"prometheus {path}: HTTP {status}: {doc.get('error', body)}")
        return doc["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the vector's samples (``metric`` labels, ``value``)."""
        data = self.api("query", {"query": promql})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_value(self, promql: str) -> float | None:
        """The single sample's value, None when the result is empty."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_for_value(self, promql: str, predicate: Callable[[float], bool],
                       timeout: float = 20.0) -> float:
        """Poll (bounded by ``timeout``) until the query's value satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while True:
            last = self.query_value(promql)
            if last is not None and predicate(last):
                return last
            if time.monotonic() > deadline:
                raise PrometheusError(f"{promql!r}: last value {last} after {timeout}s")
            time.sleep(POLL_INTERVAL_S)

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_for_targets_up(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until every configured target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return targets
            if time.monotonic() > deadline:
                summary = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
                raise PrometheusError(f"targets not up after {timeout}s: {summary}")
            time.sleep(POLL_INTERVAL_S)

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups (``/api/v1/rules``)."""
        return list(self.api("rules")["groups"])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self.proc.returncode}):\n"
                                      f"{self.log()[-2000:]}")
            status, _ = self._get("/-/ready")
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {START_TIMEOUT_S}s:\n"
                                      f"{self.log()[-2000:]}")
            time.sleep(POLL_INTERVAL_S)


@contextlib.contextmanager
def prometheus_server(targets: Mapping[str, Sequence[str]], *, netns: str | None = None,
                      scrape_interval: str = "1s",
                      rule_files: Sequence[str | Path] = (),
                      config: Mapping[str, Any] | None = None) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping ``targets`` (job name → ``host:port`` list).

    ``rule_files`` are copied next to the config and loaded. ``config``
    replaces the generated configuration document entirely.
    """
    if not Path(PROMETHEUS).exists():
        raise PrometheusError(f"{PROMETHEUS} missing; install the Debian package prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="interceptor-prom-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        copied = []
        for i, rule_file in enumerate(rule_files):
            target = workdir / f"rules-{i}.yml"
            shutil.copyfile(rule_file, target)
            copied.append(str(target))
        doc = dict(config) if config is not None else scrape_config(
            targets, scrape_interval, copied)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        port = _free_port(netns)
        cmd = [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
               f"--storage.tsdb.path={workdir / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}",
               "--storage.tsdb.retention.time=1h", "--log.level=info"]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        with open(workdir / "prometheus.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        server = PrometheusServer(proc, port, workdir, netns)
        server._wait_ready()
        yield server
    finally:
        if proc is not None:
            terminate(proc)
        shutil.rmtree(workdir, ignore_errors=True)
