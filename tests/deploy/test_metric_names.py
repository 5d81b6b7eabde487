"""Alert rules and the Grafana dashboard use metric and label names the
daemons really export, and every dashboard query is valid PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from interceptor.backend.metrics import BackendMetrics
from interceptor.node.metrics import NodeMetrics
from tests.helpers.prometheus import prometheus_server

DEPLOY = Path(__file__).parents[2] / "deploy"
_METRIC = re.compile(r"\binterceptor_[a-z0-9_]+")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
# Labels Prometheus attaches itself, and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "le", "__name__"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
             "gauge": ("",), "summary": ("", "_count", "_sum"), "info": ("_info",)}


def _metric_objects() -> list[MetricWrapperBase]:
    objs: list[MetricWrapperBase] = []
    for holder in (NodeMetrics(CollectorRegistry()), BackendMetrics(CollectorRegistry())):
        objs += [v for v in vars(holder).values() if isinstance(v, MetricWrapperBase)]
    return objs


def _exported() -> tuple[set[str], set[str]]:
    """(sample names, label names) the node and backend registries can export."""
    names: set[str] = set()
    labels: set[str] = set()
    for metric in _metric_objects():
        # _name/_type/_labelnames are prometheus_client internals, stable across 0.x;
        # families with labels have no samples until used, so read the declaration.
        base, kind = metric._name, metric._type
        names |= {base + s for s in _SUFFIXES.get(kind or "", ("",))}
        labels |= set(metric._labelnames)
    # The node counts hot-path events in plain integers and exports them at
    # scrape time; exercise it once so every family has samples, then read
    # what the registry really exports.
    registry = CollectorRegistry()
    node = NodeMetrics(registry)
    node.observe_request("ec2", 200, 0.001)
    node.observe_vm_request("i-1")
    node.observe_vm_refusal("i-1", "rate")
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def _alert_exprs() -> list[str]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def _alert_labels_in_templates() -> list[str]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    texts = [v for g in doc["groups"] for r in g["rules"] for v in r["annotations"].values()]
    return [m for t in texts for m in re.findall(r"\$labels\.([a-zA-Z_]+)", t)]


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "interceptor.json").read_text())
    return data


def _dashboard_targets() -> list[dict[str, Any]]:
    return [t for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, ready for Prometheus."""
    return (expr.replace("$__rate_interval", "1m").replace("$node", ".*")
            .replace("$backend", ".*"))


def test_dashboard_is_grafana_json_with_unique_panels() -> None:
    dash = _dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for p in graphs:
        assert p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in
                                                      range(len(p["targets"]))]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "node", "backend"} <= variables


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_metric_names_exist_in_the_code(source: str) -> None:
    exprs = _alert_exprs() if source == "alerts" else [t["expr"] for t in _dashboard_targets()]
    names, _ = _exported()
    used = {m for e in exprs for m in _METRIC.findall(e)}
    assert used, source
    assert used - names == set(), f"{source} uses metrics no registry exports"


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_label_names_exist_in_the_code(source: str) -> None:
    if source == "alerts":
        exprs, legends = _alert_exprs(), _alert_labels_in_templates()
    else:
        targets = _dashboard_targets()
        exprs = [t["expr"] for t in targets]
        legends = [m for t in targets for m in _LEGEND.findall(t["legendFormat"])]
    used = set(legends)
    for e in exprs:
        used |= {x.strip() for group in _BY.findall(e) for x in group.split(",") if x.strip()}
        used |= set(_MATCHER.findall(e))
    _, labels = _exported()
    assert used - labels - TARGET_LABELS == set(), f"{source} uses unknown labels"


def test_no_metric_uses_a_label_prometheus_reserves_for_the_target() -> None:
    # A scraped "instance" or "job" label collides with the target's and is
    # renamed exported_instance / exported_job, breaking every query by VM.
    clashes = sorted((m._name, label) for m in _metric_objects()
                     for label in m._labelnames
                     if label in ("instance", "job"))
    assert clashes == []


@pytest.mark.slow
def test_dashboard_queries_are_valid_promql() -> None:
    with prometheus_server({}) as prom:
        for target in _dashboard_targets():
            prom.query(_concrete(target["expr"]))  # raises on a syntax error
        for var in _dashboard()["templating"]["list"]:
            if var["type"] == "query":
                inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
                assert inner, var["definition"]
                prom.query(inner.group(1))
