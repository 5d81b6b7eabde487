"""The operator listener: /healthz, /readyz and /metrics, on a port guests never reach."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from interceptor.backend.context import BACKEND
from interceptor.backend.metrics import BackendMetrics

READY_TIMEOUT = 2.0


def create_operator_app(api: web.Application, metrics: BackendMetrics) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ctx = api.get(BACKEND)
        if ctx is None:
            return web.json_response({"status": "starting"}, status=503)
        try:
            await asyncio.wait_for(ctx.store.ping(), READY_TIMEOUT)
        except Exception as exc:
            return web.json_response({"status": "store unreachable",
                                      "error": type(exc).__name__}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_view(request: web.Request) -> web.Response:
        ctx = api.get(BACKEND)
        if ctx is not None:
            metrics.revision.set(ctx.notifier.revision)
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
