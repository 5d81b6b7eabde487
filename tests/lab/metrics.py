"""Reading a Prometheus text exposition (the node's and backend's
``/metrics``), with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def metric_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (a counter's ``_total`` too) whose labels
    include ``labels``; 0.0 when there are none."""
    want = labels or {}
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (name, name + "_total") and all(
                    s.labels.get(k) == v for k, v in want.items()):
                total += float(s.value)
    return total
