"""Prometheus metrics of the backend, in a private registry.

``BackendMetrics`` is also what ``VendorDataService(metrics=...)`` receives;
it uses ``vendor_calls``, ``vendor_failures`` and ``vendor_latency`` (all
labelled by ``target``; failures also by ``reason``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BackendMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "interceptor_backend_requests", "API requests by route template, method, status",
            ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "interceptor_backend_request_seconds", "API request latency by route template",
            ["route"], registry=r)
        self.documents = Counter(
            "interceptor_backend_documents_served", "Instance documents sent to nodes "
            "(200 only; 304 revalidations are counted as not_modified)", ["result"],
            registry=r)
        self.watchers = Gauge(
            "interceptor_backend_watchers", "Node long-polls waiting now", registry=r)
        self.store_latency = Histogram(
            "interceptor_backend_store_seconds", "Store operation latency", ["op"],
            registry=r)
        self.revision = Gauge(
            "interceptor_backend_revision", "Latest revision this process has seen",
            registry=r)
        self.vendor_calls = Counter(
            "interceptor_backend_vendor_calls", "Dynamic vendor-data target calls",
            ["target"], registry=r)
        self.vendor_failures = Counter(
            "interceptor_backend_vendor_failures", "Failed dynamic vendor-data calls",
            ["target", "reason"], registry=r)
        self.vendor_latency = Histogram(
            "interceptor_backend_vendor_seconds", "Dynamic vendor-data call latency",
            ["target"], registry=r)
