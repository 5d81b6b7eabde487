"""The operator listener: ``/metrics``, ``/healthz``, ``/readyz``.

It listens on its own address (loopback by default), never on a tap, so no
guest can reach it; the nft/eBPF datapath also drops guest traffic to any
host service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from interceptor.node.cache import DocumentCache
from interceptor.node.datapath.base import Datapath
from interceptor.node.datapath.contract import COUNTERS
from interceptor.node.metrics import NodeMetrics
from interceptor.node.taps import TapManager
from interceptor.node.watcher import FeedWatcher


@dataclass
class OperatorState:
    datapath: Datapath
    watcher: FeedWatcher
    cache: DocumentCache
    metrics: NodeMetrics
    taps: TapManager


STATE = web.AppKey("state", OperatorState)


def datapath_metrics(datapath: Datapath) -> Iterable[Metric]:
    """Kernel counters per tap, read at scrape time (labels: tap names that
    exist now); the contract's fixed names, those this datapath counts."""
    counters = datapath.counters()
    fams = []
    for field, (metric, help_text) in COUNTERS.items():
        if field not in datapath.counted:
            continue
        fam = CounterMetricFamily(f"interceptor_node_datapath_{metric}", help_text,
                                  labels=["tap"])
        for tap, c in sorted(counters.items()):
            fam.add_metric([tap], getattr(c, field))
        fams.append(fam)
    installed = GaugeMetricFamily("interceptor_node_datapath_installed",
                                  "1 while the datapath is present in the kernel",
                                  labels=["datapath"])
    installed.add_metric([datapath.name], 1.0 if datapath.installed() else 0.0)
    return [*fams, installed]


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await asyncio.to_thread(state.metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    datapath_ok = await asyncio.to_thread(state.datapath.installed)
    backend_ok = state.watcher.healthy
    cache_ok = len(state.cache) > 0
    ready = datapath_ok and (backend_ok or cache_ok)
    body = {"ready": ready, "datapath": datapath_ok, "backend": backend_ok,
            "cached_documents": len(state.cache), "taps": len(state.taps.taps)}
    return web.json_response(body, status=200 if ready else 503)


def operator_app(state: OperatorState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app
