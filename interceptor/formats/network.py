"""Network configuration from ``doc["network"]`` in three dialects.

* ``network_data_json`` - OpenStack's ``network_data.json`` (links, networks,
  services). Links carry no ``name``: like Nova, the guest finds its NIC by
  MAC. Networks also carry ``dns_nameservers``/``dns_search``, which
  cloud-init copies into the subnet (Nova has no field for search domains).
* ``network_config_v1`` - cloud-init network config version 1 (NoCloud's
  default here, and the serial channel's): one ``physical`` entry per
  interface, named as in the document, matched by MAC.
* ``network_config_v2`` - the same as netplan-style version 2.

Malformed addresses are skipped (see ``facts.addresses_of``).
"""

from __future__ import annotations

from typing import Any

from interceptor.formats.document import InstanceDocument
from interceptor.formats.facts import Nic, nics_of


def _nameservers(nic: Nic) -> list[str]:
    return [str(ns) for ns in nic.source.get("nameservers", [])]


def _search(nic: Nic) -> list[str]:
    return [str(s) for s in nic.source.get("search", [])]


def network_data_json(doc: InstanceDocument) -> dict[str, Any]:
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for nic in nics_of(doc):
        link: dict[str, Any] = {
            "id": nic.name,
            "type": "phy",
            "ethernet_mac_address": nic.mac,
            "vif_id": nic.name,
        }
        if "mtu" in nic.source:
            link["mtu"] = nic.source["mtu"]
        links.append(link)
        dns = _nameservers(nic)
        extras: dict[str, Any] = {
            "services": [{"type": "dns", "address": ns} for ns in dns],
        }
        if dns:
            extras["dns_nameservers"] = dns
        if _search(nic):
            extras["dns_search"] = _search(nic)
        if nic.source.get("dhcp4"):
            networks.append({"id": f"network{len(networks)}", "type": "ipv4_dhcp",
                             "link": nic.name, "network_id": nic.name, **extras})
        gateway = nic.gateway4
        for addr in nic.addresses:
            net: dict[str, Any] = {
                "id": f"network{len(networks)}",
                "type": "ipv4" if addr.version == 4 else "ipv6",
                "link": nic.name,
                "ip_address": addr.ip,
                "netmask": addr.netmask,
                "routes": [],
                "network_id": nic.name,
                **extras,
            }
            if addr.version == 4 and gateway is not None:
                net["routes"] = [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gateway}]
                gateway = None  # one default route per interface
            networks.append(net)
        for ns in dns:
            if {"type": "dns", "address": ns} not in services:
                services.append({"type": "dns", "address": ns})
    return {"links": links, "networks": networks, "services": services}


def _v1_subnets(nic: Nic) -> list[dict[str, Any]]:
    subnets: list[dict[str, Any]] = []
    if nic.source.get("dhcp4"):
        subnets.append({"type": "dhcp"})
    gateway = nic.gateway4
    for addr in nic.addresses:
        if addr.version == 4:
            subnet: dict[str, Any] = {"type": "static", "address": addr.ip, "netmask": addr.netmask}
            if gateway is not None:
                subnet["gateway"] = gateway
                gateway = None
        else:
            subnet = {"type": "static6", "address": addr.cidr}
        subnets.append(subnet)
    if subnets:
        if _nameservers(nic):
            subnets[0]["dns_nameservers"] = _nameservers(nic)
        if _search(nic):
            subnets[0]["dns_search"] = _search(nic)
    return subnets


def network_config_v1(doc: InstanceDocument) -> dict[str, Any]:
    config: list[dict[str, Any]] = []
    for nic in nics_of(doc):
        entry: dict[str, Any] = {"type": "physical", "name": nic.name, "mac_address": nic.mac}
        if "mtu" in nic.source:
            entry["mtu"] = nic.source["mtu"]
        entry["subnets"] = _v1_subnets(nic)
        config.append(entry)
    return {"version": 1, "config": config}


def network_config_v2(doc: InstanceDocument) -> dict[str, Any]:
    ethernets: dict[str, Any] = {}
    for nic in nics_of(doc):
        entry: dict[str, Any] = {
            "match": {"macaddress": nic.mac},
            "set-name": nic.name,
            "dhcp4": bool(nic.source.get("dhcp4")),
        }
        if "mtu" in nic.source:
            entry["mtu"] = nic.source["mtu"]
        if nic.addresses:
            entry["addresses"] = [a.cidr for a in nic.addresses]
        if nic.gateway4 is not None and nic.v4:
            entry["gateway4"] = nic.gateway4
        nameservers: dict[str, list[str]] = {}
        if _nameservers(nic):
            nameservers["addresses"] = _nameservers(nic)
        if _search(nic):
            nameservers["search"] = _search(nic)
        if nameservers:
            entry["nameservers"] = nameservers
        ethernets[nic.name] = entry
    return {"version": 2, "ethernets": ethernets}
