"""Prometheus metrics of the node daemon, in a registry of its own.

Label cardinality stays bounded: surfaces, statuses, reasons and backend
operations are small fixed sets, and the per-VM series (label
``instance``) exist only for instances the daemon currently manages. The
composition root calls ``forget_instance`` when a tap goes away, which
removes that instance's label sets, so a node that has hosted ten thousand
VMs over its life exports series for the few it runs now.

Hot paths (one call per guest request) use cached child objects instead of
``labels()`` lookups.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from interceptor import __version__

SURFACES: tuple[str, ...] = ("ec2", "openstack", "nocloud", "xml", "token", "write", "other")

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0)


class _FunctionCollector(Collector):
    """Adapts a function returning metric families to the Collector protocol."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def surface_of(path: str) -> str:
    """Which guest surface a decoded path belongs to (metrics label only)."""
    if path.startswith("/openstack"):
        return "openstack"
    if path.startswith("/nocloud"):
        return "nocloud"
    if path.startswith("/metadata"):
        return "xml"
    if path.startswith("/interceptor/"):
        return "write"
    if path == "/" or path.startswith("/latest") or path[1:2].isdigit():
        return "ec2"
    return "other"


class NodeMetrics:
    """Every metric the node daemon exports; ``render()`` is the scrape body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "interceptor_node_"
        self.requests = Counter(p + "requests", "Guest HTTP requests answered",
                                ["surface", "status"], registry=r)
        self.latency = Histogram(p + "request_seconds",
                                 "Time to answer a guest request (long-polls excluded)",
                                 ["surface"], buckets=_LATENCY_BUCKETS, registry=r)
        self.http_errors = Counter(p + "http_errors", "Guest connections ended by a "
                                   "protocol error or limit", ["reason"], registry=r)
        self.connections = Counter(p + "connections", "Guest connections accepted or "
                                   "refused", ["outcome"], registry=r)
        self.open_connections = Gauge(p + "open_connections", "Open guest connections",
                                      registry=r)
        self.cache_hits = Counter(p + "cache_hits", "Requests served from a fresh cached "
                                  "document", registry=r)
        self.cache_misses = Counter(p + "cache_misses", "Requests that needed a backend "
                                    "fetch or revalidation", registry=r)
        self.cache_stale = Counter(p + "cache_stale_serves", "Stale documents served "
                                   "because the backend failed", registry=r)
        self.cache_joins = Counter(p + "cache_singleflight_joins", "Requests that joined "
                                   "another request's backend fetch", registry=r)
        self.cache_documents = Gauge(p + "cache_documents", "Documents held in the cache",
                                     registry=r)
        self.backend_calls = Counter(p + "backend_requests", "Requests to the backend",
                                     ["op", "outcome"], registry=r)
        self.backend_latency = Histogram(p + "backend_request_seconds",
                                         "Backend request latency", ["op"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.vm_requests = Counter(p + "vm_requests", "Guest requests per managed VM",
                                   ["instance"], registry=r)
        self.vm_refusals = Counter(p + "vm_refusals", "Guest requests refused per managed "
                                   "VM", ["instance", "reason"], registry=r)
        self.longpoll_waiters = Gauge(p + "longpoll_waiters", "Guest long-polls waiting",
                                      registry=r)
        self.tokens_issued = Counter(p + "tokens_issued", "EC2 session tokens issued",
                                     registry=r)
        self.tokens_rejected = Counter(p + "tokens_rejected", "EC2 session tokens or token "
                                       "requests rejected", ["reason"], registry=r)
        self.managed_taps = Gauge(p + "managed_taps", "Taps with a guest listener",
                                  registry=r)
        self.watch_errors = Counter(p + "watch_errors", "Failed change-feed polls",
                                    registry=r)
        self.watch_resyncs = Counter(p + "watch_resyncs", "Full cache resyncs after a "
                                     "change-feed outage", registry=r)
        self.build_info = Gauge(p + "build_info", "Build of the node daemon",
                                ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._vm_children: dict[str, Counter] = {}
        self._vm_instances: set[str] = set()

    # -- hot path helpers -------------------------------------------------------------

    def observe_request(self, surface: str, status: int, seconds: float | None) -> None:
        key = (surface, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(surface, str(status))
        child.inc()
        if seconds is not None:
            hist = self._latency_children.get(surface)
            if hist is None:
                hist = self._latency_children[surface] = self.latency.labels(surface)
            hist.observe(seconds)

    def observe_vm_request(self, instance_id: str) -> None:
        child = self._vm_children.get(instance_id)
        if child is None:
            child = self._vm_children[instance_id] = self.vm_requests.labels(instance_id)
            self._vm_instances.add(instance_id)
        child.inc()

    def observe_vm_refusal(self, instance_id: str, reason: str) -> None:
        self._vm_instances.add(instance_id)
        self.vm_refusals.labels(instance_id, reason).inc()

    def observe_backend(self, op: str, outcome: str, seconds: float) -> None:
        self.backend_calls.labels(op, outcome).inc()
        self.backend_latency.labels(op).observe(seconds)

    # -- lifecycle --------------------------------------------------------------------

    def forget_instance(self, instance_id: str) -> None:
        """Remove every per-VM series of an instance that is no longer managed."""
        self._vm_children.pop(instance_id, None)
        if instance_id not in self._vm_instances:
            return
        self._vm_instances.discard(instance_id)
        with contextlib.suppress(KeyError):
            self.vm_requests.remove(instance_id)
        # vm_refusals has one series per reason; remove each that exists.
        for labels in _label_sets(self.vm_refusals):
            if labels[0] == instance_id:
                self.vm_refusals.remove(*labels)

    def register_collector(self, collect: Callable[[], Iterable[Metric]] | Collector
                           ) -> None:
        """Add metrics computed at scrape time (e.g. datapath counters).

        Pass a ``Collector`` or a function returning metric families
        (``prometheus_client.core.CounterMetricFamily`` …).
        """
        collector: Collector
        if callable(getattr(collect, "collect", None)):
            collector = collect  # type: ignore[assignment]
        else:
            collector = _FunctionCollector(collect)  # type: ignore[arg-type]
        self.registry.register(collector)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric in the registry."""
        return generate_latest(self.registry)


def _label_sets(metric: Counter) -> list[tuple[str, ...]]:
    # prometheus_client keeps children in a private dict; reading its keys is the
    # only way to enumerate label sets, and it is stable across 0.x releases.
    children: dict[tuple[str, ...], object] = getattr(metric, "_metrics", {})
    return list(children.keys())
