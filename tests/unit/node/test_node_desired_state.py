"""Desired per-tap state from links, bindings and latches (pure)."""

from __future__ import annotations

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import TapState
from interceptor.node.desired_state import (
    MAC_MISMATCH,
    NO_LISTENER,
    RECREATED,
    TAKEN,
    UNBOUND,
    Link,
    desired_taps,
)

LINKS = {"tap1": Link("tap1", 11), "tap2": Link("tap2", 12, "br0"), "tap3": Link("tap3", 13)}
BINDINGS = {
    "tap1": Binding("tap1", "i-1", True),
    "tap2": Binding("tap2", "i-2", False),
    "tap9": Binding("tap9", "i-9", True),
}


def test_unbound_fail_closed_and_disabled_refused_in_reset_mode() -> None:
    desired = desired_taps(LINKS, BINDINGS, "reset")
    assert desired.taps == {
        "tap1": TapState("tap1", 11, "i-1", True),
        "tap2": TapState("tap2", 12, "i-2", False, "br0"),
        "tap3": TapState("tap3", 13, None, False),
    }
    assert desired.refused == {"tap3": UNBOUND}


def test_disabled_still_steered_in_403_mode() -> None:
    taps = desired_taps(LINKS, BINDINGS, "403").taps
    assert taps["tap2"].steer and taps["tap2"].instance_id == "i-2"
    assert not taps["tap3"].steer


def test_a_binding_without_a_link_makes_nothing_but_waits_unlatched() -> None:
    desired = desired_taps(LINKS, BINDINGS, "reset")
    assert "tap9" not in desired.taps
    assert ("tap9", 0) not in desired.latches
    # The tap appears later: the binding latches onto it then.
    later = desired_taps({**LINKS, "tap9": Link("tap9", 19)}, BINDINGS, "reset", desired.latches)
    assert later.taps["tap9"].instance_id == "i-9" and later.latches[("tap9", 0)] == 19


def test_recreated_tap_is_refused_until_bound_again() -> None:
    first = desired_taps(LINKS, BINDINGS, "reset")
    assert first.latches[("tap1", 0)] == 11
    # Same name, new incarnation (new ifindex): never served under the old binding.
    again = desired_taps({"tap1": Link("tap1", 42)}, BINDINGS, "reset", first.latches)
    assert again.taps["tap1"] == TapState("tap1", 42, None, False)
    assert again.refused == {"tap1": RECREATED}
    # The latch outlives the tap while its binding lives.
    assert again.latches[("tap1", 0)] == 11
    # The platform binds it again (a new generation): served, re-latched.
    rebound = {"tap1": Binding("tap1", "i-7", True, generation=99)}
    served = desired_taps({"tap1": Link("tap1", 42)}, rebound, "reset", again.latches)
    assert served.taps["tap1"].instance_id == "i-7"
    assert served.latches == {("tap1", 99): 42}  # the released binding is forgotten


def test_mac_binding_serves_only_the_matching_tap() -> None:
    bindings = {"vnet0": Binding("vnet0", "i-1", True, mac="fe:54:00:00:00:01")}
    ok = desired_taps({"vnet0": Link("vnet0", 5, mac="FE:54:00:00:00:01")}, bindings, "reset")
    assert ok.taps["vnet0"].instance_id == "i-1" and ok.latches == {}
    # Recreated with the same MAC (the same VM re-plugged): served.
    same = desired_taps(
        {"vnet0": Link("vnet0", 6, mac="fe:54:00:00:00:01")}, bindings, "reset", ok.latches
    )
    assert same.taps["vnet0"].steer
    # Another VM's tap under the same name: refused.
    other = desired_taps({"vnet0": Link("vnet0", 7, mac="fe:54:00:00:00:99")}, bindings, "reset")
    assert other.taps["vnet0"].instance_id is None and other.refused == {"vnet0": MAC_MISMATCH}


def test_tap_renamed_to_another_bound_name_stays_refused() -> None:
    bindings = {
        "vnet1": Binding("vnet1", "i-1", True, generation=1),
        "vnet2": Binding("vnet2", "i-2", True, generation=2),
    }
    first = desired_taps({"vnet1": Link("vnet1", 10)}, bindings, "reset")
    # vnet1 (ifindex 10, i-1's VM) is renamed to vnet2, i-2's name.
    renamed = desired_taps({"vnet2": Link("vnet2", 10)}, bindings, "reset", first.latches)
    assert renamed.taps["vnet2"].instance_id is None and renamed.refused == {"vnet2": TAKEN}
    assert ("vnet2", 2) not in renamed.latches


def test_a_tap_without_its_listener_is_refused_not_steered() -> None:
    desired = desired_taps(LINKS, BINDINGS, "reset", unlistened={"tap1"})
    assert desired.taps["tap1"] == TapState("tap1", 11, None, False)
    assert desired.refused["tap1"] == NO_LISTENER
    assert desired.latches[("tap1", 0)] == 11  # still its incarnation


def test_new_ifindex_gets_a_new_mark() -> None:
    before = desired_taps(LINKS, BINDINGS, "reset").taps["tap1"]
    after = desired_taps(
        {"tap1": Link("tap1", 42)}, {"tap1": Binding("tap1", "i-1", True, generation=5)}, "reset"
    ).taps["tap1"]
    assert (before.ifindex, after.ifindex) == (11, 42)
    assert before.mark != after.mark


def test_latches_are_kept_until_the_bindings_are_known() -> None:
    # At start the links arrive before the backend answered: nothing is
    # served, and no latch may be dropped for lack of its binding.
    kept = desired_taps({"tap1": Link("tap1", 6)}, {}, "reset", {("tap1", 7): 5},
                        bindings_known=False)
    assert kept.latches == {("tap1", 7): 5} and kept.refused == {"tap1": UNBOUND}
