"""Desired per-tap state from links and bindings (pure)."""

from __future__ import annotations

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import TapState
from interceptor.node.desired_state import Link, desired_taps

LINKS = {"tap1": Link("tap1", 11), "tap2": Link("tap2", 12, "br0"), "tap3": Link("tap3", 13)}
BINDINGS = {"tap1": Binding("tap1", "i-1", True), "tap2": Binding("tap2", "i-2", False),
            "tap9": Binding("tap9", "i-9", True)}


def test_unbound_fail_closed_and_disabled_refused_in_reset_mode() -> None:
    taps = desired_taps(LINKS, BINDINGS, "reset")
    assert taps == {"tap1": TapState("tap1", 11, "i-1", True),
                    "tap2": TapState("tap2", 12, "i-2", False, "br0"),
                    "tap3": TapState("tap3", 13, None, False)}


def test_disabled_still_steered_in_403_mode() -> None:
    taps = desired_taps(LINKS, BINDINGS, "403")
    assert taps["tap2"].steer and taps["tap2"].instance_id == "i-2"
    assert not taps["tap3"].steer


def test_a_binding_without_a_link_makes_nothing() -> None:
    assert "tap9" not in desired_taps(LINKS, BINDINGS, "reset")


def test_recreated_tap_gets_the_new_ifindex_and_mark() -> None:
    before = desired_taps(LINKS, BINDINGS, "reset")["tap1"]
    after = desired_taps({"tap1": Link("tap1", 42)}, BINDINGS, "reset")["tap1"]
    assert (before.ifindex, after.ifindex) == (11, 42)
    assert before.mark != after.mark
