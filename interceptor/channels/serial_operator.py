"""The serial daemon's operator listener: ``/metrics``, ``/healthz``, ``/readyz``.

On its own address (loopback by default), never reachable from a guest's
serial line. Metrics carry no per-VM labels (socket names come and go).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from interceptor.channels.serial_server import SerialServer

SERVER = web.AppKey("serial_server", SerialServer)
_P = "interceptor_serial_"


class SerialCollector(Collector):
    """Reads the server's counters at scrape time."""

    def __init__(self, server: SerialServer) -> None:
        self._server = server

    def collect(self) -> Iterable[Metric]:
        stats = self._server.stats
        answers = CounterMetricFamily(_P + "answers", "Requests answered with data",
                                      labels=["request"])
        for request, n in sorted(stats.answers_by_request.items()):
            answers.add_metric([request], n)
        errors = CounterMetricFamily(_P + "errors", "Requests answered with an error",
                                     labels=["reason"])
        for reason, n in sorted(stats.errors_by_reason.items()):
            errors.add_metric([reason], n)
        skipped = CounterMetricFamily(_P + "skipped_lines", "Guest input skipped unanswered",
                                      labels=["reason"])
        for reason, n in (("garbage", stats.garbage), ("overlong", stats.overlong),
                          ("half_sent", stats.half_sent)):
            skipped.add_metric([reason], n)
        limited = CounterMetricFamily(_P + "rate_limited", "Requests dropped by the per-VM "
                                      "rate limit")
        limited.add_metric([], stats.rate_limited)
        refused = CounterMetricFamily(_P + "refused_connections", "Connections closed "
                                      "without a byte (limits, failed registration)")
        refused.add_metric([], stats.refused_connections)
        sockets = GaugeMetricFamily(_P + "sockets", "VM sockets listening",
                                    value=self._server.served)
        conns = GaugeMetricFamily(_P + "open_connections", "Open serial connections",
                                  value=self._server.open_connections)
        up = GaugeMetricFamily(_P + "source_up", "1 while the source answers",
                               value=1.0 if stats.source_up else 0.0)
        return [answers, errors, skipped, limited, refused, sockets, conns, up]


async def _metrics(request: web.Request) -> web.Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SerialCollector(request.app[SERVER]))
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    ready = server.stats.source_up
    return web.json_response({"ready": ready, "sockets": server.served},
                             status=200 if ready else 503)


def operator_app(server: SerialServer) -> web.Application:
    app = web.Application()
    app[SERVER] = server
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app
