"""Prometheus metrics of the node daemon, in a registry of its own.

Label cardinality stays bounded: surfaces, statuses, reasons and backend
operations are small fixed sets, and the per-VM series (label
``instance``) exist only for instances the daemon currently manages. The
composition root calls ``forget_instance`` when a tap goes away, which
removes that instance's label sets, so a node that has hosted ten thousand
VMs over its life exports series for the few it runs now.

The per-request series (requests by surface and status, their latency,
per-VM requests, cache hits) are plain Python counters exported by a
collector at scrape time: a prometheus_client ``inc()`` takes a lock and
costs about a microsecond, several per request, which showed in the
guest server's throughput.
"""

from __future__ import annotations

import bisect
import platform
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from interceptor import __version__

SURFACES: tuple[str, ...] = ("ec2", "openstack", "nocloud", "xml", "token", "interceptor", "other")

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0)


class _FunctionCollector(Collector):
    """Adapts a function returning metric families to the Collector protocol."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def describe(self) -> Iterable[Metric]:
        # Registration must not call collect(): it reads the kernel, which must
        # not happen on the event loop (scrapes render in a worker thread).
        return []


def surface_of(path: str) -> str:
    """Which guest surface a decoded path belongs to (metrics label only)."""
    if path.startswith("/openstack"):
        return "openstack"
    if path.startswith("/nocloud"):
        return "nocloud"
    if path.startswith("/metadata"):
        return "xml"
    if path.startswith("/interceptor/"):
        return "interceptor"  # the service's own paths: guest writes and read-back
    if path == "/" or path.startswith("/latest") or path[1:2].isdigit():
        return "ec2"
    return "other"


class NodeMetrics:
    """Every metric the node daemon exports; ``render()`` is the scrape body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "interceptor_node_"
        self.http_errors = Counter(p + "http_errors", "Guest connections ended by a "
                                   "protocol error or limit", ["reason"], registry=r)
        self.connections = Counter(p + "connections", "Guest connections accepted or "
                                   "refused", ["outcome"], registry=r)
        self.open_connections = Gauge(p + "open_connections", "Open guest connections",
                                      registry=r)
        self.cache_misses = Counter(p + "cache_misses", "Requests that needed a backend "
                                    "fetch or revalidation", registry=r)
        self.cache_stale = Counter(p + "cache_stale_serves", "Stale documents served "
                                   "because the backend failed", registry=r)
        self.cache_joins = Counter(p + "cache_singleflight_joins", "Requests that joined "
                                   "another request's backend fetch", registry=r)
        self.cache_documents = Gauge(p + "cache_documents", "Documents held in the cache",
                                     registry=r)
        self.backend_failovers = Counter(
            p + "backend_failovers", "Switches of the backend in use, by the position in "
            "backend_url switched to", ["to"], registry=r)
        self.backend_calls = Counter(p + "backend_requests", "Requests to the backend",
                                     ["op", "outcome"], registry=r)
        self.backend_latency = Histogram(p + "backend_request_seconds",
                                         "Backend request latency", ["op"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.vm_refusals = Counter(p + "vm_refusals", "Guest requests refused per managed "
                                   "VM", ["instance_id", "reason"], registry=r)
        self.longpoll_waiters = Gauge(p + "longpoll_waiters", "Guest long-polls waiting",
                                      registry=r)
        self.tokens_issued = Counter(p + "tokens_issued", "EC2 session tokens issued",
                                     registry=r)
        self.tokens_rejected = Counter(p + "tokens_rejected", "EC2 session tokens or token "
                                       "requests rejected", ["reason"], registry=r)
        self.managed_taps = Gauge(p + "managed_taps", "Taps with a guest listener",
                                  registry=r)
        self.taps_refused = Gauge(p + "taps_refused", "Managed taps the datapath refuses, "
                                  "by reason (unbound, mac_mismatch, recreated, "
                                  "ifindex_taken, no_listener)", ["reason"], registry=r)
        self.listeners_pending = Gauge(p + "tap_listeners_pending", "Bound taps whose "
                                       "listener could not be opened yet (retrying)",
                                       registry=r)
        self.listener_failures = Counter(p + "tap_listener_failures", "Failed attempts to "
                                         "open a tap listener, by errno", ["reason"],
                                         registry=r)
        self.watch_errors = Counter(p + "watch_errors", "Failed change-feed polls",
                                    registry=r)
        self.watch_resyncs = Counter(p + "watch_resyncs", "Full cache resyncs after a "
                                     "change-feed outage", registry=r)
        self.build_info = Gauge(p + "build_info", "Build of the node daemon",
                                ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, list[float]] = {}  # surface -> bucket counts + [sum]
        self._vm_requests: dict[str, int] = {}
        self.cache_hits = 0
        """Requests served from a fresh cached document (a plain counter)."""
        self._vm_instances: set[str] = set()
        self.registry.register(_FunctionCollector(self._collect_hot))

    # -- hot path helpers -------------------------------------------------------------

    def observe_request(self, surface: str, status: int, seconds: float | None) -> None:
        key = (surface, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if seconds is not None:
            counts = self._latency.get(surface)
            if counts is None:
                counts = self._latency[surface] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
            counts[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
            counts[-1] += seconds

    def observe_vm_request(self, instance_id: str) -> None:
        self._vm_requests[instance_id] = self._vm_requests.get(instance_id, 0) + 1

    def count_cache_hit(self) -> None:
        self.cache_hits += 1

    def _collect_hot(self) -> list[Metric]:
        # Scrapes may run in a worker thread: take C-level (GIL-atomic) copies
        # before iterating, as the event loop keeps adding keys.
        request_counts = dict(self._requests)
        latency_counts = {k: list(v) for k, v in dict(self._latency).items()}
        vm_counts = dict(self._vm_requests)
        p = "interceptor_node_"
        requests = CounterMetricFamily(p + "requests", "Guest HTTP requests answered",
                                       labels=["surface", "status"])
        for (surface, status), count in sorted(request_counts.items()):
            requests.add_metric([surface, str(status)], count)
        latency = HistogramMetricFamily(
            p + "request_seconds", "Time to answer a guest request (long-polls excluded)",
            labels=["surface"])
        for surface, counts in sorted(latency_counts.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip((*_LATENCY_BUCKETS, float("inf")), counts, strict=False):
                cumulative += n
                buckets.append((_bound_text(bound), cumulative))
            latency.add_metric([surface], buckets, counts[-1])
        vm = CounterMetricFamily(p + "vm_requests", "Guest requests per managed VM",
                                 labels=["instance_id"])
        for instance, count in sorted(vm_counts.items()):
            vm.add_metric([instance], count)
        hits = CounterMetricFamily(p + "cache_hits", "Requests served from a fresh cached "
                                   "document", value=self.cache_hits)
        return [requests, latency, vm, hits]

    def observe_vm_refusal(self, instance_id: str, reason: str) -> None:
        self._vm_instances.add(instance_id)
        self.vm_refusals.labels(instance_id, reason).inc()

    def observe_backend(self, op: str, outcome: str, seconds: float) -> None:
        self.backend_calls.labels(op, outcome).inc()
        self.backend_latency.labels(op).observe(seconds)

    # -- lifecycle --------------------------------------------------------------------

    def forget_instance(self, instance_id: str) -> None:
        """Remove every per-VM series of an instance that is no longer managed."""
        self._vm_requests.pop(instance_id, None)
        if instance_id not in self._vm_instances:
            return
        self._vm_instances.discard(instance_id)
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


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _label_sets(metric: Counter) -> list[tuple[str, ...]]:
    # prometheus_client keeps children in a private dict; reading its keys is the
    # only way to enumerate label sets, and it is stable across 0.x releases.
    children: dict[tuple[str, ...], object] = getattr(metric, "_metrics", {})
    return list(children.keys())
