"""Restarts guests never notice, and crashes they notice at once.

* Restart hand-over: the node runs under a service manager's fd store
  (tests/e2e/fdstore.py speaks systemd's protocol; the Debian VM test uses
  systemd itself). A guest polls every 10 ms, one new connection per
  request, across several SIGTERM + start cycles: no request fails, the new
  process inherits the tap listeners and the datapath stays in place.
* kill -9 without a hand-over: the tap's listener dies with the process.
  The guest's next connection is refused (RST) instead of hanging, no other
  host service sees it, and a restarted daemon serves again promptly.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from interceptor.node.datapath.listeners import fdname_for
from tests.e2e.datapath_support import EC2, LL, v6_guest, wait_no_tentative
from tests.e2e.poller import GuestPoller
from tests.e2e.stack import ProductStack, product, seconds_until_served
from tests.lab import Topology

pytestmark = [pytest.mark.root, pytest.mark.e2e]

RESTARTS = 4


def _served(stack: ProductStack, guest_tap: str, iid: str, timeout: float = 30.0) -> float:
    """Seconds until the guest on ``guest_tap`` reads its instance id."""
    guest = next(g for g in stack.topo.guests if g.tap == guest_tap)
    return seconds_until_served(stack, guest, iid, timeout)


@pytest.mark.slow
@pytest.mark.parametrize("datapath", ["nft", "ebpf"])
def test_restart_hands_listeners_over_without_guest_failures(
        topology: Topology, datapath: str) -> None:
    """An IPv4 guest and an IPv6-only guest poll across the restarts: each of
    a tap's listeners (169.254.169.254 and both IPv6 addresses) is handed over."""
    with product(topology, datapath=datapath, fdstore=True,
                 node_options={"keep_datapath_on_exit": True}) as stack:
        assert stack.fdstore is not None
        guest = stack.add_guest()
        guest6 = v6_guest(topology, mode="ll")
        iid = f"i-restart-{datapath}"
        stack.create_instance(iid, hostname="restart", ifname=guest.tap)
        stack.create_instance(iid + "-6", hostname="restart6", ifname=guest6.tap)
        wait_no_tentative(topology, guest6)
        _served(stack, guest.tap, iid)
        seconds_until_served(stack, guest6, iid + "-6", host=f"[{EC2}]")
        assert stack.fdstore.ready.wait(10), "the node never sent READY=1"
        stored = {fdname_for(g.tap, a): 1 for g in (guest, guest6)
                  for a in ("169.254.169.254", EC2, LL)}
        assert _eventually(stack.fdstore.stored, stored)
        path = "/latest/meta-data/instance-id"
        with GuestPoller(guest, path, period=0.01, timeout=60.0) as poller, \
                GuestPoller(guest6, path, period=0.01, timeout=60.0, address=EC2) as poller6:
            time.sleep(0.5)
            for _ in range(RESTARTS):
                assert stack.stop_node(signal.SIGTERM) == 0, stack.logs()
                stack.start_node(wait_ready=False, timeout=120)
                assert stack.fdstore.ready.wait(60), stack.logs()[-4000:]
                time.sleep(0.3)
            results = poller.stop(), poller6.stop()
        for result in results:
            assert len(result.samples) > 50, result.samples
            assert result.failures == [], (result.failures[:10], stack.logs()[-4000:])
        # Every new process took the listeners over instead of opening them.
        log = (stack.work / "node.log").read_text()
        assert log.count("(2 tap listeners inherited)") == RESTARTS, log[-4000:]
        assert stack.fdstore.stored() == stored
        # WATCHDOG_USEC=1 s: a ping every 0.5 s from every process's event loop.
        assert stack.fdstore.count("WATCHDOG") >= 4, stack.fdstore.messages[-20:]
        assert stack.fdstore.count("STOPPING") == RESTARTS
        print(f"{datapath}: {len(results[0].samples)} IPv4 and {len(results[1].samples)} "
              f"IPv6 requests across {RESTARTS} restarts, 0 failures, slowest "
              f"{max(r.slowest for r in results):.2f}s")


def _eventually(read: Callable[[], object], want: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while read() != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return read() == want


@pytest.mark.parametrize("datapath", ["nft", "ebpf"])
def test_kill9_fails_closed_and_fast_then_serves_again(topology: Topology,
                                                       datapath: str) -> None:
    with product(topology, datapath=datapath) as stack:
        guest = stack.add_guest()
        iid = f"i-kill-{datapath}"
        stack.create_instance(iid, hostname="kill", ifname=guest.tap)
        _served(stack, guest.tap, iid)
        assert stack.node is not None
        killed_at = time.monotonic()
        stack.stop_node(signal.SIGKILL)
        # A wildcard host service on the metadata port (it can bind now that
        # the tap's listener is gone): a guest must never reach it.
        service = stack.topo.rpc("tests.e2e.hostservice:HostService", 80, 7081)
        try:
            # nft learns of the death from the missing heartbeat (3 s); eBPF
            # sees the missing socket itself. Either way the guest then fails
            # fast: a refused connection, not a timeout.
            deadline = killed_at + 8.0
            fast: tuple[int, float] | None = None
            attempts = []
            while time.monotonic() < deadline:
                r = guest.curl("http://169.254.169.254/latest/meta-data/instance-id",
                               max_time=3.0)
                code = r.stdout.rpartition("\n")[2].split(" ")
                attempts.append((r.returncode, code))
                assert r.returncode != 0, f"answered with no daemon: {r.stdout}"
                # curl's exit code 7: connection refused (the RST); 28: timeout.
                if r.returncode == 7 and float(code[-1] or 0) < 0.5:
                    fast = (r.returncode, time.monotonic() - killed_at)
                    break
            assert fast is not None, f"never refused fast after kill -9: {attempts}"
            print(f"{datapath}: refused {fast[1]:.2f}s after kill -9")
            assert service.call("seen") == {"tcp": 0, "udp": 0}
        finally:
            service.close()  # it holds *:80, which the next daemon's listener needs
        started = time.monotonic()
        stack.start_node(wait_ready=False, timeout=120)
        _served(stack, guest.tap, iid)
        took = time.monotonic() - started
        print(f"{datapath}: served again {took:.2f}s after the restart began")
        if datapath == "nft":
            # 3 s is the target (bench/ measures it); the margin is for a loaded CI.
            assert took <= 5.0, f"served {took:.1f}s after restart"

