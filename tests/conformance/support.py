"""Helpers for tests that run real clients and helper servers in namespaces."""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.lab import PYTHON, REPO, Guest, readline, stderr_tail, stop

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's Python, where the ``cloud-init`` package's modules live."""


@contextmanager
def vendor_target(netns: str, port: int, mode: str, token: str) -> Iterator[None]:
    """A dynamic vendor-data target on 127.0.0.1:``port`` inside ``netns``."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, PYTHON, str(HERE / "vendor_target.py"), str(port),
         mode, token],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        line = readline(proc, 15.0)
        if line.strip() != "ready":
            raise RuntimeError(f"vendor target did not start: {line!r} {stderr_tail(proc)}")
        yield
    finally:
        stop(proc)  # closes stdin (the stub exits), then waits, kills


def crawl(guest: Guest, script: str, *args: str, timeout: float = 60.0,
          url: str | None = None) -> dict[str, Any]:
    """Run ``tests/conformance/<script>`` with the system Python in the guest
    (against ``url`` when given, see ci_client.METADATA_URL)."""
    env = ["env", f"CI_METADATA_URL={url}"] if url else []
    r = guest.run([*env, SYSTEM_PYTHON, str(HERE / script), *args], timeout=timeout)
    if r.returncode != 0 or not r.stdout.strip():
        raise AssertionError(f"{script} {args} failed ({r.returncode}):\n"
                             f"{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"], f"{script}: cloud-init did not accept the datasource:\n" \
                         f"{r.stderr[-6000:]}"
    return result


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def api_parts(doc: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(content type, bytes) of each user-data part the API holds."""
    return [(p["content_type"], base64.b64decode(p["data_b64"])) for p in doc["user_data"]]


def client_parts(result: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(content type, bytes) of each part cloud-init's user-data processor found."""
    out = []
    for part in result["userdata_parts"]:
        payload = unb64(part["payload_b64"])
        assert payload is not None
        out.append((part["content_type"], payload))
    return out


def v1_facts(config: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    """From a cloud-init network config version 1: per MAC, its static
    addresses (``ip/prefix``), gateways and nameservers."""
    assert config.get("version") == 1, config
    facts: dict[str, dict[str, set[str]]] = {}
    global_dns: set[str] = set()
    global_search: set[str] = set()
    for entry in config["config"]:
        if entry.get("type") == "nameserver":
            global_dns.update(_strings(entry.get("address", [])))
            global_search.update(_strings(entry.get("search", [])))
        if entry.get("type") != "physical":
            continue
        mac = str(entry["mac_address"]).lower()
        item = facts.setdefault(mac, {"addresses": set(), "gateways": set(), "dns": set(),
                                      "search": set()})
        for subnet in entry.get("subnets", []):
            if subnet.get("type") not in ("static", "static6"):
                continue
            address = str(subnet["address"])
            if "/" not in address:
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{subnet['netmask']}").prefixlen
                address = f"{address}/{prefix}"
            item["addresses"].add(address)
            if subnet.get("gateway"):
                item["gateways"].add(str(subnet["gateway"]))
            for route in subnet.get("routes", []):
                if route.get("gateway"):
                    item["gateways"].add(str(route["gateway"]))
            item["dns"].update(_strings(subnet.get("dns_nameservers", [])))
            item["search"].update(_strings(subnet.get("dns_search", [])))
    for item in facts.values():
        item["dns"] |= global_dns
        item["search"] |= global_search
    return facts


def _strings(value: Any) -> list[str]:
    """A v1 field that may be one string or a list of them."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def api_network_facts(doc: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    facts = {}
    for iface in doc["network"]["interfaces"]:
        facts[iface["mac"].lower()] = {
            "addresses": {f"{a['address']}/{a['prefix']}" for a in iface["addresses"]},
            "gateways": {iface["gateway4"]} if iface.get("gateway4") else set(),
            "dns": set(iface.get("nameservers", [])),
            "search": set(iface.get("search", [])),
        }
    return facts
