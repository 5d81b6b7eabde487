"""Routing, listener and link-watcher pieces the datapaths share (no kernel)."""

from __future__ import annotations

import pytest

from interceptor.common.errors import ConfigError
from interceptor.node.datapath.contract import DatapathConfig, matches
from interceptor.node.datapath.links import LinkInfo, _managed
from interceptor.node.datapath.listeners import TapListenerError, open_tap_listener
from interceptor.node.datapath.netlink import NetLink as RawLink
from interceptor.node.datapath.routing import (
    FR_ACT_GOTO,
    FR_ACT_NOP,
    FR_ACT_TO_TBL,
    PolicyRouting,
)


@pytest.mark.parametrize("family", [2, 10])
def test_rules_are_constant_and_exclude_local_traffic(family: int) -> None:
    routing = PolicyRouting(table=4711, pref=900, ipv6=True)
    assert routing.families == (2, 10)
    assert PolicyRouting(table=4711, pref=900).families == (2,)
    rules = routing._rules(family)
    assert {r["family"] for r in rules} == {family}
    assert [r["priority"] for r in rules] == [900, 901, 902]
    skip, lookup, nop = rules
    assert skip["iifname"] == "lo" and skip["action"] == FR_ACT_GOTO and skip["goto"] == 902
    assert (skip["fwmark"], skip["fwmask"]) == (0x4D000000, 0xFF000000)
    assert lookup["action"] == FR_ACT_TO_TBL and lookup["table"] == 4711
    assert "iifname" not in lookup  # no per-tap rules
    assert nop["action"] == FR_ACT_NOP


@pytest.mark.parametrize("kwargs", [{"route_table": 254}, {"route_table": 0},
                                    {"rule_pref": 0}, {"rule_pref": 32765}])
def test_routing_refuses_reserved_numbers(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=r"^config: (route_table|rule_priority) "):
        DatapathConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a\0b"])
def test_listener_refuses_bad_names(name: str) -> None:
    with pytest.raises(TapListenerError, match="invalid interface name"):
        open_tap_listener(name)


def test_links_filter_by_pattern_and_report_bridges() -> None:
    raw = {1: RawLink("lo", "00:00:00:00:00:00"), 2: RawLink("br0", "02:00:00:00:00:02",
                                                             kind="bridge"),
           3: RawLink("tap1", "02:00:00:00:00:03", master=2, kind="tun"),
           4: RawLink("vnet7", "02:00:00:00:00:04", kind="tun"),
           5: RawLink("eth0", "02:00:00:00:00:05", kind="veth"),
           6: RawLink("mdtapx", "02:00:00:00:00:06", master=7, kind="veth"),
           7: RawLink("bond0", "02:00:00:00:00:07", kind="bond")}
    links = _managed(raw, ("tap*", "vnet*", "mdtap*"))
    assert links == {
        "tap1": LinkInfo(3, "br0", "02:00:00:00:00:03"),
        "vnet7": LinkInfo(4, None, "02:00:00:00:00:04"),
        "mdtapx": LinkInfo(6, None, "02:00:00:00:00:06"),  # a bond is no bridge
    }


def test_pattern_matching_is_case_sensitive_fnmatch() -> None:
    assert matches("tap0", ["tap*"])
    assert not matches("TAP0", ["tap*"])
    assert matches("vnet12", ["tap*", "vnet?2"])
