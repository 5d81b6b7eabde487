"""Client of the backend's node API (``/v1/nodes/{node}/…``, see COMMON.md).

Every request is built from scratch here: the node's bearer token, the
signing headers of ``interceptor.common.signing`` (over node, instance,
method and the exact path with query that goes on the wire) and a fresh
``X-Request-Id``. Nothing a guest sent is ever forwarded.

Failures become typed errors so callers can map them to guest statuses:
``BackendUnavailable`` (connection refused, timeout, 5xx, bad answer),
``NotBound`` (403), ``NotFound`` (404), ``Conflict`` (409), ``TooLarge``
(413), ``BackendRejected`` (any other 4xx, e.g. 401 for a bad signature).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from interceptor.common.signing import HEADER_REQUEST_ID, sign
from interceptor.formats.document import DocumentError, InstanceDocument, validate_document
from interceptor.node.metrics import NodeMetrics

log = logging.getLogger(__name__)


class BackendError(Exception):
    """Base of every error talking to the backend."""

    status: int | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BackendUnavailable(BackendError):
    """The backend could not be reached or failed (network, timeout, 5xx)."""


class BackendRejected(BackendError):
    """The backend refused the request (4xx not covered by a subclass)."""


class NotBound(BackendRejected):
    """403: the instance is not bound to this node (or the action is not allowed)."""

    status = 403


class NotFound(BackendRejected):
    status = 404


class Conflict(BackendRejected):
    status = 409


class TooLarge(BackendRejected):
    status = 413


@dataclass(frozen=True)
class FetchedDocument:
    """A document as the backend sent it, with its ETag (``"<revision>"``)."""

    document: InstanceDocument
    etag: str


@dataclass(frozen=True)
class Binding:
    """A tap of this node bound to an instance by the platform.

    ``generation`` changes whenever the platform (re)binds the tap; ``mac``,
    when set, is the tap's own MAC the platform gave it. Together they let the
    node serve one incarnation of the tap, never a later tap under the same name
    (desired_state.py).
    """

    ifname: str
    instance_id: str
    metadata_enabled: bool
    mac: str | None = None
    generation: int = 0


@dataclass(frozen=True)
class SerialBinding:
    """A serial-port socket of this node bound to an instance."""

    name: str
    instance_id: str
    metadata_enabled: bool
    generation: int = 0


@dataclass(frozen=True)
class Bindings:
    revision: int
    bindings: tuple[Binding, ...]
    serial: tuple[SerialBinding, ...] = ()


@dataclass(frozen=True)
class WatchResult:
    revision: int
    instances: tuple[str, ...]
    bindings_changed: bool


_ERRORS: dict[int, type[BackendRejected]] = {403: NotBound, 404: NotFound, 409: Conflict,
                                            413: TooLarge}


MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""Largest backend answer the node reads (the backend's documents are capped
far below: ``max_document_bytes``)."""


class BackendClient:
    """The node's view of the backend. One instance per daemon; ``close()`` at exit.

    ``base_url`` e.g. ``http://127.0.0.1:8700``, or several (backend
    processes on one database): a request that fails to connect, or a GET
    that fails or gets a 5xx, goes to the next at once (``BackendChoice``); ``signing_key`` the
    platform-wide key (str or bytes). ``timeout`` bounds every request
    except ``watch``, whose bound is its own long-poll timeout plus
    ``timeout``.
    """

    def __init__(self, base_url: str | Sequence[str], node: str, node_token: str,
                 signing_key: str | bytes, *, timeout: float = 5.0,
                 connect_timeout: float = 2.0, metrics: NodeMetrics | None = None,
                 session: aiohttp.ClientSession | None = None,
                 max_answer_bytes: int = MAX_ANSWER_BYTES,
                 ca_file: str | None = None,
                 failback_after: float = 30.0) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self._backends = BackendChoice([u.rstrip("/") for u in urls], failback_after,
                                       metrics=metrics)
        self.node = node
        self._token = node_token
        self._key = signing_key.encode("utf-8") if isinstance(signing_key, str) else signing_key
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._metrics = metrics
        self._session = session
        self._own_session = session is None
        self._max_answer = max_answer_bytes
        # https: the system's CAs, or the operator's private CA (``backend_ca_file``).
        self._tls = (ssl.create_default_context(cafile=ca_file)
                     if any(u.startswith("https://") for u in self._backends.urls) else None)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # A guest-facing outage must not queue forever behind one slow backend
            # host: limit open connections but keep them alive between calls.
            connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30,
                                             ssl=self._tls if self._tls is not None else True)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                                  auto_decompress=True)
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session and not self._session.closed:
            await self._session.close()

    def _path(self, *parts: str, query: str = "") -> str:
        encoded = "/".join(quote(p, safe="") for p in ("v1", "nodes", self.node, *parts))
        return "/" + encoded + (("?" + query) if query else "")

    async def _call(self, op: str, method: str, path: str, instance: str = "", *,
                    body: bytes | None = None, headers: dict[str, str] | None = None,
                    limit: float | None = None,
                    ok: tuple[int, ...] = (200,)) -> tuple[int, dict[str, str], bytes]:
        request_id = uuid.uuid4().hex
        hdrs = {"Authorization": f"Bearer {self._token}", HEADER_REQUEST_ID: request_id,
                "Accept": "application/json"}
        hdrs.update(sign(self._key, self.node, instance, method, path, body=body or b""))
        if headers:
            hdrs.update(headers)
        if body is not None:
            hdrs["Content-Type"] = "text/plain; charset=utf-8"
        total = self._timeout if limit is None else limit
        client_timeout = aiohttp.ClientTimeout(total=total, connect=self._connect_timeout)
        failure: BackendUnavailable | None = None
        for index in self._backends.order():
            url = URL(self._backends.urls[index] + path, encoded=True)
            started = time.perf_counter()
            outcome = "error"
            try:
                async with self._client().request(method, url, data=body, headers=hdrs,
                                                  timeout=client_timeout,
                                                  allow_redirects=False) as resp:
                    # Bounded, after decompression too: a broken or hostile backend
                    # (or proxy) cannot make the node buffer an endless answer.
                    payload = await resp.content.read(self._max_answer + 1)
                    if len(payload) > self._max_answer:
                        raise BackendUnavailable(
                            f"backend {op} answer exceeds {self._max_answer} bytes")
                    status = resp.status
                    resp_headers = {k: v for k, v in resp.headers.items()}
                outcome = str(status)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failure = BackendUnavailable(
                    f"backend {op} failed: {type(exc).__name__}: {exc}"[:300])
                # A request that may have reached the backend is repeated on
                # the next one only when repeating it changes nothing.
                if method == "GET" or isinstance(exc, aiohttp.ClientConnectorError):
                    self._backends.failed(index)
                    continue
                raise failure from None
            finally:
                if self._metrics is not None:
                    self._metrics.observe_backend(op, outcome, time.perf_counter() - started)
            if status >= 500 and (method == "GET" or status == 503):
                failure = BackendUnavailable(
                    f"backend {op} answered {status}: {_error_reason(payload)} "
                    f"(request {request_id})", status)
                self._backends.failed(index)
                continue
            self._backends.succeeded(index)
            break
        else:
            assert failure is not None
            raise failure
        if status in ok:
            return status, resp_headers, payload
        reason = _error_reason(payload)
        message = f"backend {op} answered {status}: {reason} (request {request_id})"
        if status >= 500 or status == 429:
            raise BackendUnavailable(message, status)
        raise _ERRORS.get(status, BackendRejected)(message, status)

    @staticmethod
    def _json(op: str, payload: bytes) -> Any:
        try:
            return json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BackendUnavailable(f"backend {op} answered invalid JSON") from None

    # -- API ----------------------------------------------------------------------------

    async def bindings(self) -> Bindings:
        _, _, payload = await self._call("bindings", "GET", self._path("bindings"))
        data = self._json("bindings", payload)
        try:
            taps, serial = [], []
            for b in data["bindings"]:
                common = (str(b["instance_id"]), bool(b["metadata_enabled"]))
                generation = int(b.get("generation", 0))
                if "serial" in b:
                    serial.append(SerialBinding(str(b["serial"]), *common, generation))
                    continue
                mac = b.get("mac")
                taps.append(Binding(str(b["ifname"]), *common,
                                    None if mac is None else str(mac).lower(), generation))
            return Bindings(int(data["revision"]), tuple(taps), tuple(serial))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BackendUnavailable("backend bindings answer has the wrong shape") from None

    async def document(self, instance_id: str, etag: str | None = None
                       ) -> FetchedDocument | None:
        """The document of ``instance_id``; None when ``etag`` still matches (304)."""
        headers = {"If-None-Match": etag} if etag else None
        status, resp_headers, payload = await self._call(
            "document", "GET", self._path("instances", instance_id, "document"),
            instance_id, headers=headers, ok=(200, 304))
        if status == 304:
            return None
        try:
            doc = validate_document(self._json("document", payload))
        except DocumentError as exc:
            raise BackendUnavailable(f"backend sent a bad document: {exc}") from None
        if doc["instance_id"] != instance_id:
            raise BackendUnavailable("backend sent the document of another instance")
        tag = resp_headers.get("ETag") or f'"{doc["revision"]}"'
        return FetchedDocument(doc, tag)

    async def watch(self, since: int, timeout: float) -> WatchResult:  # noqa: ASYNC109
        query = f"since={int(since)}&timeout={int(timeout)}"
        _, _, payload = await self._call("watch", "GET", self._path("watch", query=query),
                                         limit=timeout + self._timeout)
        data = self._json("watch", payload)
        try:
            return WatchResult(int(data["revision"]),
                               tuple(str(i) for i in data["instances"]),
                               bool(data["bindings_changed"]))
        except (KeyError, TypeError, ValueError):
            raise BackendUnavailable("backend watch answer has the wrong shape") from None

    async def set_password(self, instance_id: str, text: bytes) -> None:
        await self._call("password", "POST",
                         self._path("instances", instance_id, "password"), instance_id,
                         body=text, ok=(200, 201, 204))

    async def delete_meta(self, instance_id: str, cls: str, key: str) -> None:
        await self._call("delete_meta", "DELETE",
                         self._path("instances", instance_id, "meta", cls, key), instance_id,
                         ok=(200, 204))

    async def put_meta(self, instance_id: str, cls: str, key: str, value: bytes) -> None:
        await self._call("put_meta", "PUT",
                         self._path("instances", instance_id, "meta", cls, key), instance_id,
                         body=value, ok=(200, 201, 204))

    async def disable(self, instance_id: str) -> None:
        await self._call("disable", "POST", self._path("instances", instance_id, "disable"),
                         instance_id, ok=(200, 204))

    async def put_guest_data(self, instance_id: str, key: str, value: bytes) -> None:
        await self._call("guest_data", "PUT",
                         self._path("instances", instance_id, "guest-data", key), instance_id,
                         body=value, ok=(200, 201, 204))

    async def delete_guest_data(self, instance_id: str, key: str) -> None:
        await self._call("guest_data", "DELETE",
                         self._path("instances", instance_id, "guest-data", key), instance_id,
                         ok=(200, 204))


class BackendChoice:
    """Which of the configured backends a request goes to first.

    The one that answered last; after a fail-over, the first URL again once
    ``failback_after`` seconds have passed (one attempt per period, so a
    dead first backend costs one failed connect per period, not per call).
    """

    def __init__(self, urls: list[str], failback_after: float, *,
                 metrics: NodeMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("at least one backend URL")
        self.urls = urls
        self.active = 0
        self._failback_after = failback_after
        self._since = clock()
        self._metrics = metrics
        self._clock = clock

    def order(self) -> list[int]:
        n = len(self.urls)
        first = self.active
        if first != 0 and self._clock() - self._since >= self._failback_after:
            first = 0
            self._since = self._clock()
        return [(first + i) % n for i in range(n)]

    def failed(self, index: int) -> None:
        if index == self.active and len(self.urls) > 1:
            log.warning("backend %d of %d failed; trying the next", index + 1, len(self.urls))

    def succeeded(self, index: int) -> None:
        if index == self.active:
            return
        log.warning("now using backend %d of %d", index + 1, len(self.urls))
        self.active = index
        self._since = self._clock()
        if self._metrics is not None:
            self._metrics.backend_failovers.labels(str(index)).inc()


def _error_reason(payload: bytes) -> str:
    try:
        data = json.loads(payload)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return str(data["error"])[:200]
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return payload[:100].decode("utf-8", "replace") or "no reason given"
