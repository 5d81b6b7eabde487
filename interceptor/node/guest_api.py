"""What a guest may ask of the metadata service, as a handler for the HTTP server.

Pure request → response logic over the document cache, the token issuer,
the backend writer and a renderer; the identity is the tap's
``TapIdentity`` and nothing else. Guest headers that claim an identity or
a forwarding path (``X-Forwarded-*``, ``X-Instance-ID*``, ``X-Neutron-*``,
``Forwarded`` …) are never read for identity and never forwarded: requests
to the backend are built from scratch by ``BackendClient``.

Statuses (every one is covered by tests):

* GET/HEAD any path → the renderer's 200/404, with ``ETag``; a matching
  ``If-None-Match`` → 304. ``GET /latest/api/token`` → 405 (``Allow: PUT``).
* ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``
  1..21600 → 200 and the token (sent with IP TTL ``token_hop_limit``);
  TTL missing or invalid → 400; carrying ``X-Forwarded-For`` → 403; a
  versioned path (``/2021-03-23/api/token``) → 403, like a refused token
  request (AWS serves tokens under ``/latest`` only, and cloud-init asks
  there only).
* ``X-aws-ec2-metadata-token`` on any request: malformed, forged, expired
  or issued to another instance → 401. When the instance's document has
  ``require_token``, a request without a token → 401 on every surface
  (not only EC2: the point of the mode is that a request forger inside the
  guest cannot read user-data by another path).
* Metadata disabled for the instance (document ``metadata_enabled`` false)
  → 403 for everything and the connection is closed (``disabled_action``
  "403"), or the connection is reset without a byte ("reset", the default).
* No usable document (backend unreachable past stale-if-error, or the
  instance is not bound here) → 503 with ``Retry-After``.
* Per-VM request rate over the limit → 429 with ``Retry-After``; that
  connection then reads nothing for ``THROTTLE_HOLD`` seconds.
* Writes, all through the backend, durable before a 2xx, never a local
  success when the backend is down (→ 503):
  ``POST /openstack/{latest|YYYY-MM-DD}/password`` (≤ 1020 bytes, else 413;
  already set → 409; success → 200 as Nova answers),
  ``PUT /interceptor/v1/meta/{public|restricted}/{key}`` → 204 (the guest
  sets a key of its server's class; 403 unless the server allows guest
  writes), ``DELETE /interceptor/v1/meta/{public|restricted}/{key}`` → 204
  (the guest consumes the key: gone from every view it has; 404 when
  absent; 403 unless the server allows guest writes, as it changes the
  owner's data), ``POST /interceptor/v1/disable`` → 204 (the guest switches its
  own metadata off; only the owner switches it back on),
  ``PUT|DELETE /interceptor/v1/guest-data/{key}`` → 204 (403 unless the
  server allows guest writes; 404 deleting an absent key). Every write
  spends the instance's guest-write budget at the backend
  (``guest_write_rate``); past it → 429, not 503.
* Any other method → 405 with ``Allow``.
* Long-polling on any GET path: ``?wait_for_change=true[&last_etag=E]
  [&timeout_sec=N]`` (N default 60, at most ``longpoll_max``, default 300)
  answers as soon as the rendered response's ETag differs from ``E`` (at
  once if it already does; without ``last_etag`` the ETag at request
  time), else after N seconds with the current response. Waiters sleep
  on the cache's per-instance change event; none polls the backend. The
  request is authorised again on every wake-up and when its token expires:
  an expired token, ``require_token`` switched on or the VM disabled ends
  the wait with 401/403.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

from interceptor.formats.document import InstanceDocument
from interceptor.formats.rendered import Rendered, etag_of
from interceptor.node.backend_client import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    Conflict,
    NotBound,
    NotFound,
    TooLarge,
)
from interceptor.node.cache import CachedDocument, DocumentCache
from interceptor.node.http_server import HandlerResult, Request, Response, TapIdentity
from interceptor.node.limits import RateLimiter
from interceptor.node.metrics import NodeMetrics, surface_of
from interceptor.node.tokens import TokenIssuer, TokenStatus, parse_ttl

log = logging.getLogger(__name__)

Renderer = Callable[[InstanceDocument, str], Rendered]

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path, not a secret
TOKEN_HEADER = "x-aws-ec2-metadata-token"  # noqa: S105
TOKEN_TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105
MAX_PASSWORD_BYTES = 1020
MAX_KEY_CHARS = 255

_VERSIONED_TOKEN = re.compile(r"/[^/]+/api/token/?\Z")
_PASSWORD = re.compile(r"/openstack/(latest|\d{4}-\d{2}-\d{2})/password/?\Z")
_META_KEY = re.compile(r"/interceptor/v1/meta/(public|restricted)/([^/]+)\Z")
_GUEST_DATA = re.compile(r"/interceptor/v1/guest-data/([^/]+)\Z")
_DISABLE = re.compile(r"/interceptor/v1/disable/?\Z")
_READ_ALLOW = "GET, HEAD"
THROTTLE_HOLD = 1.0
"""Seconds a connection that got 429 reads nothing more (clients wait Retry-After anyway)."""


class GuestWriter(Protocol):
    """The backend calls a guest's writes need (``BackendClient`` has them)."""

    async def set_password(self, instance_id: str, text: bytes) -> None: ...

    async def delete_meta(self, instance_id: str, cls: str, key: str) -> None: ...

    async def put_meta(self, instance_id: str, cls: str, key: str, value: bytes) -> None: ...

    async def disable(self, instance_id: str) -> None: ...

    async def put_guest_data(self, instance_id: str, key: str, value: bytes) -> None: ...

    async def delete_guest_data(self, instance_id: str, key: str) -> None: ...


@dataclass(frozen=True)
class GuestApiSettings:
    token_hop_limit: int = 1
    """IP TTL of token responses (AWS: 1), so a router in the guest cannot relay them."""
    retry_after: int = 5
    """``Retry-After`` seconds of a 503."""
    longpoll_default: float = 60.0
    longpoll_max: float = 300.0
    disabled_action: str = "reset"
    """A disabled VM: "reset" (no byte, like the datapath) or "403". In reset mode
    the datapath refuses the VM; the proxy resets too, for the few milliseconds
    between a toggle reaching the cache and reaching the datapath."""


class _Refused(Exception):
    """A request answered with an error response (raised on slow paths)."""

    def __init__(self, response: Response, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


def _text(status: int, message: str, headers: tuple[tuple[str, str], ...] = (), *,
          close: bool = False) -> Response:
    return Response(status, message.encode() + b"\n", headers=headers, close=close)


def _strip_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


class GuestApi:
    """The guest request handler; pass ``handle`` to ``GuestHttpServer``."""

    def __init__(self, cache: DocumentCache, tokens: TokenIssuer, writer: GuestWriter,
                 render: Renderer, *, rate_limiter: RateLimiter | None = None,
                 settings: GuestApiSettings | None = None,
                 metrics: NodeMetrics | None = None) -> None:
        self._cache = cache
        self._tokens = tokens
        self._writer = writer
        self._render = render
        self._limiter = rate_limiter
        self.settings = settings or GuestApiSettings()
        self._metrics = metrics
        retry = (("Retry-After", str(self.settings.retry_after)),)
        self._unavailable = _text(503, "Service Unavailable", retry)
        self._unauthorized = _text(401, "Unauthorized")
        self._forbidden = _text(403, "Forbidden")
        self._disabled = (_text(403, "Forbidden", close=True)
                          if self.settings.disabled_action == "403"
                          else Response(403, reset=True))
        self._bad_request = _text(400, "Bad Request")
        self._read_only = _text(405, "Method Not Allowed", (("Allow", _READ_ALLOW),))
        self._token_only = _text(405, "Method Not Allowed", (("Allow", "PUT"),))
        self._server_error = _text(500, "Internal Server Error", close=True)
        self._throttle_memo: dict[int, Response] = {}

    # -- entry point --------------------------------------------------------------------

    def handle(self, identity: TapIdentity, request: Request) -> HandlerResult:
        """Answer at once from the cache when possible, else return a coroutine."""
        started = time.perf_counter()
        iid = identity.instance_id
        metrics = self._metrics
        if metrics is not None:
            metrics.observe_vm_request(iid)
        limiter = self._limiter
        if limiter is not None and not limiter.allow(iid):
            response = self._throttled(limiter.retry_after(iid))
            self._refusal(iid, "rate_limited")
            return self._observed(request, response, started)
        method = request.method
        if method == "GET" or method == "HEAD":
            if request.path == TOKEN_PATH:
                return self._observed(request, self._token_only, started)
            if request.query and "wait_for_change" in request.query:
                return self._slow(iid, request, self._longpoll(iid, request), None)
            return self._from_cache(iid, request, started,
                                    lambda snap: self._read(iid, request, snap),
                                    lambda: self._get_slow(iid, request))
        if method == "PUT" and request.path == TOKEN_PATH:
            return self._issue_token(iid, request, started)
        return self._slow(iid, request, self._write(iid, request), started)

    def _from_cache(self, iid: str, request: Request, started: float,
                    answer: Callable[[CachedDocument], Response],
                    slow: Callable[[], Coroutine[Any, Any, Response]]) -> HandlerResult:
        """Answer synchronously from a cached document (the hot path), else
        start ``slow`` (a cache miss) as the connection's task."""
        snap = self._cache.peek(iid)
        if snap is None:
            return self._slow(iid, request, slow(), started)
        try:
            response = answer(snap)
        except _Refused as refused:
            self._refusal(iid, refused.reason)
            response = refused.response
        return self._observed(request, response, started)

    # -- reads --------------------------------------------------------------------------

    def _authorize(self, iid: str, request: Request, doc: InstanceDocument) -> None:
        """Disabled → 403; bad token → 401; missing token when required → 401."""
        if not doc["metadata_enabled"]:
            raise _Refused(self._disabled, "disabled")
        token = request.headers.get(TOKEN_HEADER)
        if token is not None:
            status = self._tokens.check(token, iid)
            if status is not TokenStatus.VALID:
                if self._metrics is not None:
                    self._metrics.tokens_rejected.labels(status.value).inc()
                raise _Refused(self._unauthorized, "token_" + status.value)
        elif doc["require_token"]:
            if self._metrics is not None:
                self._metrics.tokens_rejected.labels("missing").inc()
            raise _Refused(self._unauthorized, "token_missing")

    def _rendered(self, snap: CachedDocument, path: str) -> tuple[Response, str]:
        """The response for ``path`` of this document revision (memoized)."""
        memo: tuple[Response, str] | None = snap.memo_get(path)
        if memo is not None:
            return memo
        try:
            rendered = self._render(snap.document, path)
        except Exception:
            log.exception("rendering %s of %s failed", path, snap.instance_id)
            return self._server_error, ""
        etag = etag_of(rendered.body)
        response = Response(rendered.status, rendered.body, rendered.content_type,
                            (("ETag", etag),))
        memo = (response, etag)
        snap.memo_put(path, memo, len(rendered.body) + len(path) + 256)
        return memo

    def _read(self, iid: str, request: Request, snap: CachedDocument) -> Response:
        self._authorize(iid, request, snap.document)
        response, etag = self._rendered(snap, request.path)
        inm = request.headers.get("if-none-match")
        if inm is not None and etag and inm.strip() == etag:
            return Response(304, headers=(("ETag", etag),))
        return response

    async def _document(self, iid: str) -> CachedDocument:
        try:
            return await self._cache.get(iid)
        except BackendError as exc:
            log.info("no document for %s: %s", iid, exc)
            raise _Refused(self._unavailable, "unavailable") from None

    async def _get_slow(self, iid: str, request: Request) -> Response:
        return self._read(iid, request, await self._document(iid))

    async def _longpoll(self, iid: str, request: Request) -> Response:
        params = parse_qs(request.query, keep_blank_values=True)
        if params.get("wait_for_change", [""])[0].lower() not in ("true", "1"):
            return await self._get_slow(iid, request)
        timeout = self.settings.longpoll_default
        if "timeout_sec" in params:
            try:
                timeout = float(params["timeout_sec"][0])
            except ValueError:
                raise _Refused(self._bad_request, "bad_longpoll") from None
            if not 0 <= timeout < float("inf"):
                raise _Refused(self._bad_request, "bad_longpoll")
        timeout = min(timeout, self.settings.longpoll_max)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        snap = await self._document(iid)
        self._authorize(iid, request, snap.document)
        token = request.headers.get(TOKEN_HEADER)
        response, etag = self._rendered(snap, request.path)
        last = params.get("last_etag", [None])[0]
        baseline = _strip_etag(last) if last is not None else _strip_etag(etag)
        while _strip_etag(etag) == baseline:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            left = self._tokens.seconds_left(token) if token is not None else None
            if left is not None:  # wake when the token expires, to refuse it then
                remaining = min(remaining, max(left, 0.0) + 0.05)
            await self._cache.wait_change(iid, snap, remaining)
            snap = await self._document(iid)
            self._authorize(iid, request, snap.document)
            response, etag = self._rendered(snap, request.path)
        return response

    # -- tokens -------------------------------------------------------------------------

    def _issue_token(self, iid: str, request: Request, started: float) -> HandlerResult:
        if "x-forwarded-for" in request.headers:
            # AWS refuses token requests that went through a proxy.
            self._token_refused(iid, "forwarded")
            return self._observed(request, self._forbidden, started)
        ttl = parse_ttl(request.headers.get(TOKEN_TTL_HEADER))
        if ttl is None:
            self._token_refused(iid, "bad_ttl")
            return self._observed(request, self._bad_request, started)
        return self._from_cache(iid, request, started,
                                lambda snap: self._token_response(iid, ttl, snap),
                                lambda: self._issue_token_slow(iid, ttl))

    async def _issue_token_slow(self, iid: str, ttl: int) -> Response:
        return self._token_response(iid, ttl, await self._document(iid))

    def _token_response(self, iid: str, ttl: int, snap: CachedDocument) -> Response:
        if not snap.document["metadata_enabled"]:
            raise _Refused(self._disabled, "disabled")
        token = self._tokens.issue(iid, ttl)
        if self._metrics is not None:
            self._metrics.tokens_issued.inc()
        return Response(200, token.encode("ascii"),
                        headers=(("X-aws-ec2-metadata-token-ttl-seconds", str(ttl)),),
                        ip_ttl=self.settings.token_hop_limit)

    def _token_refused(self, iid: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.tokens_rejected.labels(reason).inc()
        self._refusal(iid, "token_" + reason)

    # -- writes -------------------------------------------------------------------------

    async def _write(self, iid: str, request: Request) -> Response:
        method, path = request.method, request.path
        if _VERSIONED_TOKEN.match(path):
            if method == "PUT":
                self._token_refused(iid, "versioned_path")
                return self._forbidden
            return self._token_only
        password = _PASSWORD.match(path)
        meta = _META_KEY.match(path)
        guest = _GUEST_DATA.match(path)
        disable = _DISABLE.match(path)
        if password is not None:
            if method != "POST":
                return _text(405, "Method Not Allowed", (("Allow", "GET, HEAD, POST"),))
        elif disable is not None:
            if method != "POST":
                return _text(405, "Method Not Allowed", (("Allow", "POST"),))
        elif meta is not None or guest is not None:
            if method not in ("PUT", "DELETE"):
                return _text(405, "Method Not Allowed", (("Allow", "GET, HEAD, PUT, DELETE"),))
        else:
            return self._read_only
        snap = await self._document(iid)
        self._authorize(iid, request, snap.document)
        try:
            if password is not None:
                if len(request.body) > MAX_PASSWORD_BYTES:
                    return _text(413, "Payload Too Large")
                await self._writer.set_password(iid, request.body)
                status = 200
            elif disable is not None:
                await self._writer.disable(iid)
                status = 204
            elif meta is not None:
                key = meta.group(2)
                if len(key) > MAX_KEY_CHARS:
                    return self._bad_request
                if not snap.document["guest_writes"]:
                    return self._forbidden
                if method == "PUT":
                    await self._writer.put_meta(iid, meta.group(1), key, request.body)
                else:
                    await self._writer.delete_meta(iid, meta.group(1), key)
                status = 204
            else:
                assert guest is not None
                key = guest.group(1)
                if len(key) > MAX_KEY_CHARS:
                    return self._bad_request
                if not snap.document["guest_writes"]:
                    return self._forbidden
                if method == "PUT":
                    await self._writer.put_guest_data(iid, key, request.body)
                else:
                    await self._writer.delete_guest_data(iid, key)
                status = 204
        except BackendError as exc:
            return self._write_error(iid, exc)
        # Read-your-writes: the next GET waits for the new document.
        self._cache.invalidate(iid)
        return Response(status)

    def _write_error(self, iid: str, exc: BackendError) -> Response:
        if exc.status == 429:  # the backend's per-instance guest-write budget: the guest's doing
            self._refusal(iid, "write_rate_limited")
            return self._throttled(1)
        if isinstance(exc, BackendUnavailable):
            log.warning("guest write of %s failed: %s", iid, exc)
            return self._unavailable
        if isinstance(exc, Conflict):
            return _text(409, "Conflict")
        if isinstance(exc, NotFound):
            return _text(404, "Not Found")
        if isinstance(exc, NotBound):
            return self._forbidden
        if isinstance(exc, TooLarge):
            return _text(413, "Payload Too Large")
        if isinstance(exc, BackendRejected) and exc.status == 400:
            return self._bad_request
        log.warning("guest write of %s rejected by the backend: %s", iid, exc)
        return _text(502, "Bad Gateway")

    # -- bookkeeping --------------------------------------------------------------------

    def _throttled(self, retry_after: int) -> Response:
        """429, memoized per Retry-After; the connection then holds still for
        ``THROTTLE_HOLD`` s, so a flooding VM cannot buy more of the event loop
        than its budget (bench/isolation.py measures the neighbours' latency)."""
        response = self._throttle_memo.get(retry_after)
        if response is None:
            response = Response(429, b"Too Many Requests\n",
                                headers=(("Retry-After", str(retry_after)),),
                                hold=THROTTLE_HOLD)
            if len(self._throttle_memo) < 64:
                self._throttle_memo[retry_after] = response
        return response

    def _refusal(self, iid: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.observe_vm_refusal(iid, reason)

    def _observed(self, request: Request, response: Response,
                  started: float | None) -> Response:
        if self._metrics is not None:
            seconds = None if started is None else time.perf_counter() - started
            self._metrics.observe_request(surface_of(request.path)
                                          if request.path != TOKEN_PATH else "token",
                                          response.status, seconds)
        return response

    async def _slow(self, iid: str, request: Request, work: Coroutine[Any, Any, Response],
                    started: float | None) -> Response:
        """Run a slow path; ``started`` None (long-polls) skips the latency histogram."""
        try:
            response = await work
        except _Refused as refused:
            self._refusal(iid, refused.reason)
            response = refused.response
        return self._observed(request, response, started)

    def forget_instance(self, instance_id: str) -> None:
        """The instance's tap went away: drop its rate-limit state."""
        if self._limiter is not None:
            self._limiter.forget(instance_id)
