"""Restarts guests never notice, and crashes they notice at once (issue 16).

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

import pytest

from tests.e2e.poller import GuestPoller
from tests.e2e.stack import ProductStack, get, product
from tests.lab import Topology

pytestmark = [pytest.mark.root, pytest.mark.e2e]

RESTARTS = 4


def _served(stack: ProductStack, guest_tap: str, iid: str, timeout: float = 30.0) -> float:
    """Seconds until the guest on ``guest_tap`` reads its instance id."""
    guest = next(g for g in stack.topo.guests if g.tap == guest_tap)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, body, _ = get(guest, "/latest/meta-data/instance-id", max_time=1.0)
        if (status, body) == (200, iid):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{iid} not served within {timeout}s\n{stack.logs()[-4000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("datapath", ["nft", "ebpf"])
def test_restart_hands_listeners_over_without_guest_failures(
        topology: Topology, datapath: str) -> None:
    with product(topology, datapath=datapath, fdstore=True,
                 node_options={"keep_datapath_on_exit": True}) as stack:
        assert stack.fdstore is not None
        guest = stack.add_guest()
        iid = f"i-restart-{datapath}"
        stack.create_instance(iid, hostname="restart", ifname=guest.tap)
        _served(stack, guest.tap, iid)
        assert stack.fdstore.ready.wait(10), "the node never sent READY=1"
        assert stack.fdstore.stored() == {"tap." + guest.tap.encode().hex(): 1}
        with GuestPoller(guest, "/latest/meta-data/instance-id", period=0.01,
                         timeout=60.0) as poller:
            time.sleep(0.5)
            for _ in range(RESTARTS):
                assert stack.stop_node(signal.SIGTERM) == 0, stack.logs()
                # eBPF compiles its program (BCC) at every start: slow on a loaded machine.
                stack.start_node(wait_ready=False, timeout=120)
                assert stack.fdstore.ready.wait(60), stack.logs()[-4000:]
                time.sleep(0.3)
            result = poller.stop()
        assert len(result.samples) > 50, result.samples
        assert result.failures == [], (result.failures[:10], stack.logs()[-4000:])
        # Every new process took the listener over instead of opening one.
        log = (stack.work / "node.log").read_text()
        assert log.count("(1 tap listeners inherited)") == RESTARTS, log[-4000:]
        assert stack.fdstore.stored() == {"tap." + guest.tap.encode().hex(): 1}
        # WATCHDOG_USEC=1 s: a ping every 0.5 s from every process's event loop.
        assert stack.fdstore.count("WATCHDOG") >= 4, stack.fdstore.messages[-20:]
        assert stack.fdstore.count("STOPPING") == RESTARTS
        print(f"{datapath}: {len(result.samples)} requests across {RESTARTS} restarts, "
              f"0 failures, slowest {result.slowest:.2f}s")


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

