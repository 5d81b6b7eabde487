"""Vendor data, as Nova's StaticJSON and DynamicJSON providers serve it.

* Static: JSON files (each an object) read once at construction and merged
  in order, later files winning per top-level key. An unreadable or invalid
  file is a ``ConfigError`` that names it: a bad deployment fails at start.
* Dynamic: targets ``name@url``. For each instance every target gets a
  ``POST`` of the instance's facts (Nova's keys: ``project-id``,
  ``instance-id``, ``image-id``, ``user-data``, ``hostname``, ``metadata``),
  with ``Authorization: Bearer <service token>`` when one is configured, or
  a Keystone service token in ``X-Auth-Token`` as Nova sends it
  (``interceptor/backend/keystone.py``; a 401 answer drops the token and the
  call is made once more with a fresh one). ``user-data`` is the owner's
  user-data in base64 (several parts: the multipart document the guest
  reads). A
  target's JSON object appears under its name. A target that fails (timeout,
  refused, non-2xx, oversized, not JSON, not an object) is left out, logged
  and counted; it never fails the document. Targets are asked concurrently,
  each bounded by connect + read timeout, so one call to ``get`` takes no
  longer than that however many targets hang.
* Results of cached targets (the default) are cached per instance for
  ``ttl`` seconds (injected clock); targets named in ``uncached`` are asked
  on every ``get`` (every document the backend builds);
  concurrent ``get`` calls for one instance share one round of requests;
  ``invalidate`` drops an instance's entry (the backend calls it when the
  instance's document changes) and discards a round still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

import aiohttp

from interceptor.backend.keystone import KeystoneAuth, KeystoneError, KeystoneTokens
from interceptor.common.errors import ConfigError
from interceptor.formats.document import VendorData

log = logging.getLogger(__name__)

VendorRequest = TypedDict(
    "VendorRequest",
    {
        "project-id": str,
        "instance-id": str,
        "image-id": str | None,
        "user-data": str | None,
        "hostname": str,
        "metadata": dict[str, Any],
    },
)
"""The JSON body posted to every dynamic target (Nova DynamicJSON's keys)."""

MAX_RESPONSE_BYTES = 1024 * 1024
"""A target answering more than this is treated as failed (the document has its own limit)."""
CACHE_PRUNE_AT = 4096
"""Cache size at which expired entries are swept on insert (keeps memory bounded by live VMs)."""


@dataclass(frozen=True)
class DynamicTarget:
    name: str
    url: str
    cached: bool = True


class TargetFailure(Exception):
    """One target's call failed; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_targets(specs: list[str], uncached: list[str] | None = None) -> list[DynamicTarget]:
    """``name@url`` strings → targets. A repeated name is ignored (as Nova does)
    with one warning; a malformed entry, or an ``uncached`` name that is no
    target, is a ConfigError."""
    targets: list[DynamicTarget] = []
    seen: set[str] = set()
    for spec in specs:
        name, sep, url = spec.strip().partition("@")
        name = name.strip()
        parts = urlsplit(url.strip())
        if not sep or not name or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"config: vendordata dynamic target {name or spec!r} must be name@http(s)://host/…"
            )
        if name in seen:
            log.warning("vendordata: dynamic target name %s repeated; later entry ignored", name)
            continue
        seen.add(name)
        targets.append(DynamicTarget(name, url.strip(), name not in (uncached or [])))
    for name in uncached or []:
        if name not in seen:
            raise ConfigError(f"config: vendordata_dynamic_nocache names no target {name!r}")
    return targets


def load_static(files: list[str]) -> dict[str, Any]:
    """Merge the static JSON objects in order (later files win per top-level key)."""
    merged: dict[str, Any] = {}
    for file in files:
        where = f"config: vendordata static file {file}"
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: invalid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: not a JSON object")
        merged.update(data)
    return merged


@dataclass
class _Entry:
    expires: float
    dynamic: dict[str, Any]


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise TargetFailure("too_large", f"more than {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class VendorDataService:
    def __init__(
        self,
        *,
        static_files: list[str],
        dynamic_targets: list[str],
        service_token: str | None,
        uncached: list[str] | None = None,
        keystone: KeystoneAuth | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 5.0,
        ttl: float = 300.0,
        metrics: object | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = load_static(static_files)
        self._targets = parse_targets(dynamic_targets, uncached)
        self._token = service_token
        self.keystone = KeystoneTokens(keystone) if keystone is not None else None
        self._timeout = aiohttp.ClientTimeout(
            total=connect_timeout + read_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._ttl = ttl
        self._metrics: Any = metrics
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}

    @property
    def targets(self) -> list[DynamicTarget]:
        return list(self._targets)

    async def start(self) -> None:
        if self._session is None:
            # trust_env=False: never route targets through a proxy from the environment.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._cache.clear()

    def invalidate(self, instance_id: str) -> None:
        self._cache.pop(instance_id, None)
        # A round in flight may predate the change: let it finish for its
        # waiters, but do not cache it, and let the next get start afresh.
        self._inflight.pop(instance_id, None)

    async def get(self, req: VendorRequest) -> VendorData:
        return {"static": dict(self._static), "dynamic": dict(await self._dynamic(req))}

    async def _dynamic(self, req: VendorRequest) -> dict[str, Any]:
        if not self._targets:
            return {}
        cached = await self._cached(req) if any(t.cached for t in self._targets) else {}
        fresh = [t for t in self._targets if not t.cached]
        if not fresh:
            return cached
        now = await self._query_all(req, fresh)
        # In configuration order, whichever way each target was answered.
        merged = {**cached, **now}
        return {t.name: merged[t.name] for t in self._targets if t.name in merged}

    async def _cached(self, req: VendorRequest) -> dict[str, Any]:
        iid = req["instance-id"]
        entry = self._cache.get(iid)
        if entry is not None and entry.expires > self._clock():
            return entry.dynamic
        task = self._inflight.get(iid)
        if task is None:
            targets = [t for t in self._targets if t.cached]
            task = asyncio.create_task(self._query_all(req, targets), name=f"vendordata:{iid}")
            self._inflight[iid] = task
            task.add_done_callback(lambda done: self._settle(iid, done))
        # shield: a cancelled caller must not cancel the round others wait on.
        return await asyncio.shield(task)

    def _settle(self, iid: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._inflight.get(iid) is not task:
            return  # invalidated (or closed) meanwhile: not cached
        del self._inflight[iid]
        if task.cancelled() or task.exception() is not None:
            return
        now = self._clock()
        if len(self._cache) >= CACHE_PRUNE_AT:
            for key in [k for k, e in self._cache.items() if e.expires <= now]:
                del self._cache[key]
        self._cache[iid] = _Entry(now + self._ttl, task.result())

    async def _query_all(self, req: VendorRequest, targets: list[DynamicTarget]
                         ) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("VendorDataService.start() was not awaited")
        try:
            body = json.dumps(req).encode("utf-8")
        except (TypeError, ValueError) as exc:
            log.warning("vendordata: request for %s is not JSON (%s); no dynamic data",
                        req.get("instance-id"), exc)
            return {}
        results = await asyncio.gather(*(self._query(t, body) for t in targets))
        return {t.name: r for t, r in zip(targets, results, strict=True) if r is not None}

    async def _auth_headers(self) -> dict[str, str]:
        if self.keystone is not None:
            assert self._session is not None
            try:
                return {"X-Auth-Token": await self.keystone.token(self._session)}
            except KeystoneError as exc:
                raise TargetFailure("auth", str(exc)) from None
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    async def _post(self, target: DynamicTarget, body: bytes) -> tuple[int, bytes]:
        """One POST (twice when a Keystone token was refused with 401)."""
        assert self._session is not None
        for attempt in (1, 2):
            headers = {"Content-Type": "application/json", "Accept": "application/json",
                       **await self._auth_headers()}
            try:
                async with self._session.post(target.url, data=body, headers=headers,
                                              allow_redirects=False) as resp:
                    status = resp.status
                    raw = await _read_bounded(resp) if 200 <= status < 300 else b""
            except TimeoutError as exc:
                raise TargetFailure("timeout", "timed out") from exc
            except aiohttp.ClientError as exc:
                raise TargetFailure("connect", type(exc).__name__) from exc
            if status == 401 and self.keystone is not None and attempt == 1:
                self.keystone.rejected(headers["X-Auth-Token"])
                continue
            return status, raw
        raise AssertionError("unreachable")

    async def _query(self, target: DynamicTarget, body: bytes) -> dict[str, Any] | None:
        """One target's object, or None after logging and counting its failure."""
        start = time.monotonic()
        self._count("vendor_calls", target.name)
        try:
            status, raw = await self._post(target, body)
            if not 200 <= status < 300:
                raise TargetFailure("status", f"HTTP {status}")
            try:
                data = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise TargetFailure("invalid_json", "response is not JSON") from exc
            if not isinstance(data, dict):
                raise TargetFailure("not_object", "response is not a JSON object")
            return data
        except TargetFailure as failure:
            # The target's name only: its URL may carry credentials; the token never.
            log.warning("vendordata: target %s failed: %s", target.name, failure)
            self._count("vendor_failures", target.name, reason=failure.reason)
            return None
        finally:
            if self._metrics is not None:
                self._metrics.vendor_latency.labels(target=target.name).observe(
                    time.monotonic() - start)

    def _count(self, metric: str, target: str, reason: str | None = None) -> None:
        if self._metrics is None:
            return
        counter = getattr(self._metrics, metric)
        if reason is not None:
            # The backend's counter also has a "reason" label; a plain one has not.
            with contextlib.suppress(ValueError):
                counter.labels(target=target, reason=reason).inc()
                return
        counter.labels(target=target).inc()
