"""Network config dialects, parsed by cloud-init's network state interpreter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cloudinit.net import network_state

from interceptor.formats.document import InstanceDocument
from interceptor.formats.network import network_config_v1, network_config_v2, network_data_json


def _by_name(state: network_state.NetworkState) -> dict[str, dict[str, Any]]:
    return {iface["name"]: iface for iface in state.iter_interfaces()}


def test_v1_for_normal_doc(load_doc: Callable[[str], InstanceDocument]) -> None:
    config = network_config_v1(load_doc("normal"))
    state = network_state.parse_net_config_data(config, skip_broken=False)
    ifaces = _by_name(state)
    assert set(ifaces) == {"eth0", "eth1"}
    eth0 = ifaces["eth0"]
    assert eth0["mac_address"] == "52:54:00:12:34:56" and eth0["mtu"] == 1500
    statics = [(s["type"], s["address"], s["prefix"]) for s in eth0["subnets"]]
    assert statics == [("static", "10.0.0.5", 24), ("static", "10.0.0.6", 24),
                       ("static6", "2001:db8::5", 64)]
    assert eth0["subnets"][0]["gateway"] == "10.0.0.1"
    assert eth0["subnets"][0]["dns_nameservers"] == ["10.0.0.1", "9.9.9.9"]
    assert eth0["subnets"][0]["dns_search"] == ["example.internal"]
    assert [s["type"] for s in ifaces["eth1"]["subnets"]] == ["dhcp"]


def test_v2_for_normal_doc(load_doc: Callable[[str], InstanceDocument]) -> None:
    config = network_config_v2(load_doc("normal"))
    assert config["ethernets"]["eth0"]["match"] == {"macaddress": "52:54:00:12:34:56"}
    assert config["ethernets"]["eth0"]["addresses"] == ["10.0.0.5/24", "10.0.0.6/24",
                                                         "2001:db8::5/64"]
    assert config["ethernets"]["eth0"]["gateway4"] == "10.0.0.1"
    assert config["ethernets"]["eth1"]["dhcp4"] is True
    state = network_state.parse_net_config_data(config, skip_broken=False)
    ifaces = _by_name(state)
    assert set(ifaces) == {"eth0", "eth1"}
    subnets = ifaces["eth0"]["subnets"]
    assert [(s["address"], s["prefix"]) for s in subnets] == [
        ("10.0.0.5", 24), ("10.0.0.6", 24), ("2001:db8::5", 64)]
    assert subnets[0]["gateway"] == "10.0.0.1"
    assert [s["type"] for s in ifaces["eth1"]["subnets"]] == ["dhcp4"]
    assert state.dns_nameservers == ["10.0.0.1", "9.9.9.9"]
    assert state.dns_searchdomains == ["example.internal"]


def test_all_dialects_tolerate_every_doc(any_doc: InstanceDocument) -> None:
    for build in (network_config_v1, network_config_v2):
        config = build(any_doc)
        if any_doc["network"]["interfaces"]:
            state = network_state.parse_net_config_data(config, skip_broken=False)
            assert len(_by_name(state)) == len(any_doc["network"]["interfaces"])
    data = network_data_json(any_doc)
    assert set(data) == {"links", "networks", "services"}
    links = {link["id"] for link in data["links"]}
    assert all(net["link"] in links for net in data["networks"])


def test_malformed_addresses_are_skipped(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("hostile")
    assert network_config_v2(doc)["ethernets"]["eth0"]["addresses"] == ["10.9.9.9/8"]
    assert "gateway4" not in network_config_v2(doc)["ethernets"]["eth0"]
    assert [n["ip_address"] for n in network_data_json(doc)["networks"]] == ["10.9.9.9"]


def test_duplicate_macs_and_names(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("empty")
    doc["network"]["interfaces"] = [
        {"name": "eth0", "mac": "52:54:00:00:00:01", "dhcp4": True, "addresses": []},
        {"name": "eth0", "mac": "52:54:00:00:00:02", "dhcp4": True, "addresses": []},
        {"name": "eth9", "mac": "52:54:00:00:00:01", "dhcp4": True, "addresses": []},
    ]
    names = [c["name"] for c in network_config_v1(doc)["config"]]
    assert names == ["eth0", "eth0-1"]
    assert [link["id"] for link in network_data_json(doc)["links"]] == ["eth0", "eth0-1"]
