"""A binding serves one incarnation of a tap, on both datapaths, routed and
bridged: real backend and node processes, real namespaces and veth taps.

The platform binds when it plugs a VM's interface and releases when it
unplugs it (or stops the server). A tap name the hypervisor hands to another
VM is never served the old VM's data: released bindings serve nothing, kept
bindings are latched to the tap incarnation they were first served on (also
across a daemon restart), MAC bindings serve only the tap with that MAC, and
a tap renamed onto another bound name stays refused. Every refusal is fast.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.stack import ProductStack, get, metric, product
from tests.lab import PYTHON, Guest, Topology, mac_of, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

PATH = "/latest/meta-data/instance-id"
FAST_S = 1.0


@pytest.fixture(params=[("nft", "routed"), ("nft", "bridged"),
                        ("ebpf", "routed"), ("ebpf", "bridged")],
                ids=["nft-routed", "nft-bridged", "ebpf-routed", "ebpf-bridged"])
def stack(request: pytest.FixtureRequest, topology: Topology) -> Iterator[ProductStack]:
    datapath, taps = request.param
    with product(topology, datapath=datapath, taps=taps) as s:
        yield s


def wait_for(guest: Guest, iid: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    seen: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        status, body, _ = get(guest, PATH, max_time=1.0)
        seen = (status, body)
        if seen == (200, iid):
            return
        time.sleep(0.05)
    raise AssertionError(f"{guest.tap} not served {iid} within {timeout}s: {seen}")


def wait_refused(guest: Guest, never: str, timeout: float = 10.0) -> float:
    """Poll until the guest's request is refused fast; no answer on the way
    may carry ``never``'s data. Returns the time the fast refusal took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body, secs = get(guest, PATH, max_time=1.0)
        assert never not in body, f"{guest.tap} was served {never}'s data: {status} {body}"
        if status == 0 and secs < FAST_S:
            return secs
        time.sleep(0.05)
    raise AssertionError(f"{guest.tap} was not refused fast within {timeout}s")


def assert_stays_refused(guest: Guest, never: str, tries: int = 5) -> None:
    for _ in range(tries):
        started = time.monotonic()
        status, body, _ = get(guest, PATH, max_time=3.0)
        elapsed = time.monotonic() - started
        assert never not in body and status == 0, (status, body)
        assert elapsed < FAST_S + 0.5, f"refusal took {elapsed:.2f}s (a hang, not a refusal)"
        time.sleep(0.1)


def test_stopped_vm_tap_reused_by_another_vm_gets_nothing_until_bound(
        stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.put_server("i-id-s1", hostname="s1", ifname=guest.tap)
    stack.put_server("i-id-s2", hostname="s2", ifname=None)
    wait_for(guest, "i-id-s1")
    status, _ = stack.api("POST", "/v1/servers/i-id-s1/stop")
    assert status == 200
    # The hypervisor gives the tap name to a new VM of another tenant at once.
    stack.topo.recreate_veth(guest)
    wait_refused(guest, never="i-id-s1")
    assert_stays_refused(guest, never="i-id-s1")
    stack.bind("i-id-s2", guest.tap)
    wait_for(guest, "i-id-s2")


def test_a_kept_binding_serves_only_the_tap_incarnation_it_was_first_served_on(
        stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.put_server("i-id-k1", hostname="k1", ifname=guest.tap)
    wait_for(guest, "i-id-k1")
    status, _ = stack.api("POST", "/v1/servers/i-id-k1/stop", {"keep_bindings": True})
    assert status == 200
    stack.topo.recreate_veth(guest)
    wait_refused(guest, never="i-id-k1")
    assert_stays_refused(guest, never="i-id-k1")
    assert metric(stack.node_metrics(), "interceptor_node_taps_refused",
                  reason="recreated") == 1
    # The platform plugs it again: a new incarnation, served.
    stack.bind("i-id-k1", guest.tap)
    wait_for(guest, "i-id-k1")


def test_a_restarted_node_does_not_latch_onto_a_tap_recreated_meanwhile(
        stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.put_server("i-id-r1", hostname="r1", ifname=guest.tap)
    wait_for(guest, "i-id-r1")
    stack.stop_node()
    stack.topo.recreate_veth(guest)
    stack.start_node()
    wait_refused(guest, never="i-id-r1")
    assert_stays_refused(guest, never="i-id-r1")
    stack.bind("i-id-r1", guest.tap)
    wait_for(guest, "i-id-r1")


def test_a_mac_binding_serves_only_the_tap_with_that_mac(stack: ProductStack) -> None:
    guest = stack.add_guest()
    mac = mac_of(stack.netns, guest.tap)
    stack.put_server("i-id-m1", hostname="m1", ifname=None)
    stack.bind("i-id-m1", guest.tap, mac=mac.upper())
    wait_for(guest, "i-id-m1")
    # Another VM's tap under the same name (a new random MAC): refused.
    stack.topo.recreate_veth(guest)
    assert mac_of(stack.netns, guest.tap) != mac
    wait_refused(guest, never="i-id-m1")
    assert metric(stack.node_metrics(), "interceptor_node_taps_refused",
                  reason="mac_mismatch") == 1
    # The same VM re-plugged (the platform's MAC on the tap): served, no rebind.
    sh(["ip", "link", "set", guest.tap, "address", mac], netns=stack.netns)
    wait_for(guest, "i-id-m1")


def test_a_tap_renamed_onto_another_bound_name_stays_refused(stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.put_server("i-id-n1", hostname="n1", ifname=guest.tap)
    wait_for(guest, "i-id-n1")
    other = stack.topo.tap_name()  # bound, but its tap does not exist yet
    stack.put_server("i-id-n2", hostname="n2", ifname=other)
    for name, args in ((guest.tap, ["down"]), (guest.tap, ["name", other]), (other, ["up"])):
        sh(["ip", "link", "set", name, *args], netns=stack.netns)
    guest.tap = other
    wait_refused(guest, never="i-id-n2")
    assert_stays_refused(guest, never="i-id-n2")
    assert metric(stack.node_metrics(), "interceptor_node_taps_refused",
                  reason="ifindex_taken") == 1


SQUAT = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_IP, 19, 1)              # IP_TRANSPARENT
s.setsockopt(socket.SOL_SOCKET, 25, sys.argv[1].encode())   # SO_BINDTODEVICE
s.bind(("169.254.169.254", 80))
s.listen(1)
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_listener_that_cannot_open_is_refused_then_retried(stack: ProductStack) -> None:
    guest = stack.add_guest()
    squatter = subprocess.Popen(["ip", "netns", "exec", stack.netns, PYTHON, "-c", SQUAT,
                                 guest.tap], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
        stack.put_server("i-id-l1", hostname="l1", ifname=guest.tap)
        # EADDRINUSE: the datapath refuses the tap (fast) instead of steering
        # its SYNs to somebody else's socket, and the node says so.
        wait_refused(guest, never="i-id-l1")
        text = stack.node_metrics()
        assert metric(text, "interceptor_node_tap_listeners_pending") == 1
        assert metric(text, "interceptor_node_tap_listener_failures_total",
                      reason="eaddrinuse") >= 1
    finally:
        assert squatter.stdin is not None
        squatter.stdin.close()
        squatter.wait(10)
    wait_for(guest, "i-id-l1", timeout=20.0)  # retried with backoff, ≤ 1 s apart at first
    assert metric(stack.node_metrics(), "interceptor_node_tap_listeners_pending") == 0


def test_taps_with_large_ifindexes_keep_their_identities(stack: ProductStack) -> None:
    # 4465 and 70000 shared a conntrack zone (ifindex mod 65535), and an
    # ifindex past 2**24 could not be marked at all.
    guests = [stack.add_guest(index=i) for i in (4465, 70000, (1 << 24) + 4465)]
    for n, guest in enumerate(guests):
        stack.put_server(f"i-id-x{n}", hostname=f"x{n}", ifname=guest.tap)
    for n, guest in enumerate(guests):
        wait_for(guest, f"i-id-x{n}")
    # Same address (10.0.0.2) and the same source port from every guest, at
    # once: a shared zone would mix up their conntrack entries.
    for attempt in range(3):
        port = str(40100 + attempt)
        with concurrent.futures.ThreadPoolExecutor(len(guests)) as pool:
            futures = [pool.submit(g.curl, f"http://169.254.169.254{PATH}", "--local-port",
                                   port) for g in guests]
            results = [f.result() for f in futures]
        for n, r in enumerate(results):
            body, _, tail = r.stdout.rpartition("\n")
            code, secs = tail.split()
            assert (code, body) == ("200", f"i-id-x{n}")
            assert float(secs) < 0.5, f"x{n}: {secs}s"
