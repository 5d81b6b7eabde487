"""The datapath contract (contract.py): one meaning for every option, one
check for tap entries, one steering policy, fixed counter names (no kernel)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from interceptor.common.errors import ConfigError, DatapathError
from interceptor.node.config import NodeConfig
from interceptor.node.datapath.base import TapCounters, TapState
from interceptor.node.datapath.contract import (
    COUNTERS,
    DatapathConfig,
    SteeringPolicy,
    check_taps,
    options_from,
)
from interceptor.node.datapath.ebpf import STAT_FIELDS, EbpfConfig, EbpfDatapath
from interceptor.node.datapath.ebpf_guard import render_guard
from interceptor.node.datapath.netlink import NetLink
from interceptor.node.datapath.nft import NftDatapath
from interceptor.node.datapath.nft_ruleset import NftConfig


def node_config(**overrides: object) -> NodeConfig:
    cfg = NodeConfig(node_name="n1", backend_url=["http://127.0.0.1:1"], node_token="t",
                     signing_key="k")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_node_options_map_onto_both_datapaths_alike() -> None:
    cfg = node_config(metadata_address="169.254.1.1", metadata_port=8080, syn_rate=0,
                      max_connections=0, tap_patterns=["vm*"], host_allow_udp=["67"])
    cfg.validate()
    shared = DatapathConfig(**options_from(cfg))
    nft = NftConfig(table="t", **options_from(cfg))
    ebpf = EbpfConfig(instance="i", **options_from(cfg))
    for dp in (nft, ebpf):
        assert {f.name: getattr(dp, f.name) for f in dataclasses.fields(DatapathConfig)} \
            == dataclasses.asdict(shared)
    assert shared.patterns == ("vm*",) and shared.input_allow_udp == (67,)
    # eBPF gets the address and port as program constants, not its own defaults.
    assert "-DMETADATA_ADDR_HOST=0xa9fe0101u" in ebpf.cflags()
    assert "-DMETADATA_PORT=8080" in ebpf.cflags()


@pytest.mark.parametrize(("field", "value", "why"), [
    ("tap_patterns", ["ta*p"], "tap pattern 'ta\\*p' unsupported"),
    ("tap_patterns", [], "at least one pattern"),
    ("metadata_address", "not-an-ip", "invalid metadata address"),
    ("metadata_address", "fe80::1", "must be IPv4"),
    ("syn_rate", -1, "syn_rate and max_connections must be >= 0"),
    ("max_connections", -1, "syn_rate and max_connections must be >= 0"),
    ("route_table", 254, "route_table 254 is reserved"),
])
def test_bad_datapath_options_are_config_errors(field: str, value: object, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        node_config(**{field: value}).validate()
    assert info.value.exit_code == 2


@pytest.mark.parametrize("cls", [NftConfig, EbpfConfig])
def test_both_datapath_configs_refuse_the_same_things(cls: type[DatapathConfig]) -> None:
    for bad in ({"patterns": ("a*b",)}, {"arp_reply_mac": "03:00:00:00:00:01"},
                {"metadata_port": 70000}, {"syn_burst": 0}):
        with pytest.raises(ConfigError):
            cls(**bad)
    assert cls(syn_rate_per_s=0, max_connections=0).syn_rate_per_s == 0  # 0: no limit


@pytest.mark.parametrize("bad", [
    {"tapx": TapState("tap1", 3, "i-1", True)},  # keyed by another name
    {"tap/1": TapState("tap/1", 3, "i-1", True)},
    {"tap1": TapState("tap1", 0, "i-1", True)},
])
def test_bad_tap_entries_are_refused(bad: dict[str, TapState]) -> None:
    with pytest.raises(DatapathError, match=r"^x: bad tap entry"):
        check_taps(bad, "x")


def test_steering_policy_blocks_unsteerable_bridge_ports_once(
        caplog: pytest.LogCaptureFixture) -> None:
    links = {
        2: NetLink("br0", "02:00:00:00:00:01", kind="bridge"),
        3: NetLink("tap1", "02:00:00:00:00:01", master=2),  # wears its bridge's MAC
        4: NetLink("tap2", "fe:00:00:00:00:02", master=2),
        5: NetLink("tap3", "fe:00:00:00:00:03", master=2, group_fwd_mask=4),
        6: NetLink("tap4", "fe:00:00:00:00:04"),
    }
    taps = {n: TapState(n, i, f"i-{n}", True) for n, i in
            (("tap1", 3), ("tap2", 4), ("tap3", 5), ("tap4", 6))}
    taps["tap5"] = TapState("tap5", 7, None, False)  # gone from the dump: ignored
    policy = SteeringPolicy("x")
    with caplog.at_level(logging.WARNING):
        plan = policy.plan(taps, links)
        again = policy.plan(taps, links)
    assert set(plan.blocked) == {"tap1", "tap3"}
    assert "MAC of its bridge br0" in plan.blocked["tap1"]
    assert "group_fwd_mask" in plan.blocked["tap3"]
    assert set(plan.steered) == {4, 6}
    assert plan.ports == {3: (2, bytes.fromhex("020000000001")),
                          4: (2, bytes.fromhex("020000000001")),
                          5: (2, bytes.fromhex("020000000001"))}
    assert again.blocked == plan.blocked
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 2  # once each
    assert policy.blocked == plan.blocked


def test_counter_names_are_fixed_and_shared() -> None:
    fields = {f.name for f in dataclasses.fields(TapCounters)}
    assert set(COUNTERS) == fields
    assert NftDatapath.counted <= fields and EbpfDatapath.counted <= fields
    assert set(STAT_FIELDS.values()) == EbpfDatapath.counted
    # What both count means the same; the rest is kernel specific.
    assert {"steered_packets", "refused_packets", "arp_replies", "syn_rate_limited",
            "unsteered_dropped", "host_input_dropped"} <= NftDatapath.counted \
        & EbpfDatapath.counted


def test_ebpf_guard_fails_unsynced_taps_closed_by_name() -> None:
    text = render_guard(DatapathConfig(patterns=("tap*", "vm*"), input_allow_udp=(67,)),
                        "g")
    assert "table inet g" in text
    assert ('iifname { "tap*", "vm*" } meta mark & 0xff000000 != 0x4e000000 meta mark & '
            '0xff000000 != 0x4d000000 ip daddr 169.254.169.254 counter drop') in text
    assert "udp dport { 67 } accept" in text


class _CountingDatapath:
    """A datapath that counts only some of the contract's counters."""

    name = "fake"
    counted = frozenset({"steered_packets", "no_listener"})

    def counters(self) -> dict[str, TapCounters]:
        return {"tap1": TapCounters(steered_packets=5, no_listener=2, refused_packets=9)}

    def installed(self) -> bool:
        return True


def test_metrics_export_the_counted_counters_under_fixed_names() -> None:
    from interceptor.node.operator import datapath_metrics

    families = {f.name: f for f in datapath_metrics(_CountingDatapath())}  # type: ignore[arg-type]
    assert set(families) == {"interceptor_node_datapath_steered_packets",
                             "interceptor_node_datapath_no_listener_packets",
                             "interceptor_node_datapath_installed"}
    sample = families["interceptor_node_datapath_steered_packets"].samples[0]
    assert (sample.name, sample.labels, sample.value) == (
        "interceptor_node_datapath_steered_packets_total", {"tap": "tap1"}, 5)
