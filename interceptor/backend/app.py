"""Composition root of the backend: one application factory, resources in cleanup_ctx.

Order of start: store (opened, migrated, subscribed to other processes'
commits), vendor-data service, then the API serves. Teardown runs in
reverse and only for what started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from interceptor.backend import (
    routes_bindings,
    routes_configdrive,
    routes_guest,
    routes_image_parts,
    routes_keypairs,
    routes_nodes,
    routes_occi,
    routes_owner,
)
from interceptor.backend.auth import Authenticator
from interceptor.backend.changes import ChangeNotifier, prune_forever
from interceptor.backend.config import BackendConfig
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.documents import VendorSource
from interceptor.backend.metrics import BackendMetrics
from interceptor.backend.middleware import make_middleware
from interceptor.backend.openapi import add_routes as add_openapi
from interceptor.backend.store import open_store
from interceptor.backend.store.timed import timed_store
from interceptor.common.ratelimit import RateLimiter

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", BackendMetrics)
CONFIG = web.AppKey("config", BackendConfig)


def make_vendor(cfg: BackendConfig, metrics: BackendMetrics) -> Any:
    """The vendor-data service, or None when no source is configured."""
    if not cfg.vendordata_static_files and not cfg.vendordata_dynamic_targets:
        return None
    from interceptor.backend.vendordata import VendorDataService
    return VendorDataService(
        static_files=cfg.vendordata_static_files,
        dynamic_targets=cfg.vendordata_dynamic_targets,
        service_token=cfg.vendordata_service_token,
        uncached=cfg.vendordata_dynamic_nocache,
        keystone=cfg.keystone_auth(),
        connect_timeout=cfg.vendordata_connect_timeout,
        read_timeout=cfg.vendordata_read_timeout,
        ttl=cfg.vendordata_ttl,
        metrics=metrics)


def create_app(cfg: BackendConfig, *, metrics: BackendMetrics | None = None,
               vendor: VendorSource | None = None) -> web.Application:
    """The API application. ``vendor`` replaces the configured vendor-data service."""
    metrics = metrics if metrics is not None else BackendMetrics()
    app = web.Application(middlewares=[make_middleware(metrics)],
                          client_max_size=cfg.max_request_bytes)
    app[METRICS] = metrics
    app[CONFIG] = cfg

    async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
        store = timed_store(open_store(cfg.database), metrics.store_latency)
        await store.open()
        try:
            ctx = Backend(store=store,
                          auth=Authenticator(admin_token=cfg.admin_token,
                                             node_tokens=cfg.node_tokens, store=store),
                          notifier=ChangeNotifier(), limits=cfg.limits(), metrics=metrics,
                          signing_key=cfg.signing_key.encode() if cfg.signing_key else None,
                          guest_writes=RateLimiter(cfg.guest_write_rate, cfg.guest_write_burst))
            ctx.notifier.revision = ctx.vendor_seen = await store.revision()
            await store.subscribe(ctx.on_remote_commit)
            app[BACKEND] = ctx
            pruner = asyncio.create_task(prune_forever(store), name="prune-changes")
            try:
                yield
            finally:
                await ctx.close_tasks()
                pruner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruner
        finally:
            await store.close()

    async def vendor_ctx(app: web.Application) -> AsyncIterator[None]:
        if vendor is not None:  # injected (tests): its owner starts and closes it
            app[BACKEND].vendor = vendor
            yield
            return
        service = make_vendor(cfg, metrics)
        if service is None:
            yield
            return
        await service.start()
        app[BACKEND].vendor = service
        try:
            yield
        finally:
            app[BACKEND].vendor = None
            await service.close()

    async def wake_watchers(app: web.Application) -> None:
        ctx = app.get(BACKEND)
        if ctx is not None:
            ctx.notifier.close()

    app.cleanup_ctx.append(backend_ctx)
    app.cleanup_ctx.append(vendor_ctx)
    app.on_shutdown.append(wake_watchers)
    routes_owner.add_routes(app)
    routes_nodes.add_routes(app)
    routes_bindings.add_routes(app)
    routes_configdrive.add_routes(app)
    routes_guest.add_routes(app)
    routes_keypairs.add_routes(app)
    routes_image_parts.add_routes(app)
    routes_occi.add_routes(app)
    add_openapi(app)
    return app
