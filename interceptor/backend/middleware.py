"""Request middleware: request ids, JSON errors, one log line and metrics per request."""

from __future__ import annotations

import logging
import math
import re
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from interceptor.backend.errors import ApiError
from interceptor.backend.httputil import reply
from interceptor.backend.metrics import BackendMetrics

log = logging.getLogger("interceptor.backend.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUEST_ID_HEADER = "X-Request-Id"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Metric label values for methods (anything else is "other": bounded labels)."""


def route_of(request: web.Request) -> str:
    """The route template (bounded label set), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def make_middleware(metrics: BackendMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _REQUEST_ID.match(given) else secrets.token_hex(8)
        start = time.monotonic()
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as exc:
            response = reply({"error": exc.reason}, status=exc.status)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = {404: "no such route", 405: f"method {request.method} not allowed here",
                      413: "request body too large"}.get(exc.status, exc.reason)
            response = reply({"error": reason}, status=exc.status)
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception:
            log.exception("request %s %s failed (request id %s)", request.method,
                          route_of(request), request_id)
            response = reply({"error": "internal error"}, status=500)
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.monotonic() - start
        route = route_of(request)
        method = request.method if request.method in _METHODS else "other"
        metrics.requests.labels(route, method, str(response.status)).inc()
        metrics.latency.labels(route).observe(elapsed)
        log.info("%s %s %d %.1fms id=%s", request.method, route, response.status,
                 elapsed * 1000, request_id,
                 extra={"method": request.method, "route": route, "status": response.status,
                        "ms": round(elapsed * 1000, 1), "request_id": request_id})
        return response

    return middleware
