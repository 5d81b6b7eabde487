"""TapManager: listeners open before the datapath steers to them and close
after it stops; a rebound or recreated tap never keeps its old identity."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import TapCounters, TapState
from interceptor.node.datapath.listeners import TapListenerError
from interceptor.node.desired_state import Link
from interceptor.node.http_server import GuestListener, TapIdentity
from interceptor.node.latches import MemoryLatches
from interceptor.node.metrics import NodeMetrics
from interceptor.node.taps import TapManager


@dataclass
class Journal:
    events: list[tuple[str, str]] = field(default_factory=list)


class FakeDatapath:
    name = "fake"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.state: dict[str, TapState] = {}

    def install(self) -> None: ...

    def sync(self, taps: Mapping[str, TapState]) -> None:
        self.state = dict(taps)
        steered = ",".join(sorted(n for n, t in taps.items() if t.steer))
        self.journal.events.append(("sync", steered))

    def installed(self) -> bool:
        return True

    def counters(self) -> dict[str, TapCounters]:
        return {}

    def remove(self) -> None: ...


class FakeServer:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.listeners: dict[int, TapIdentity] = {}

    async def add_listener(self, sock: socket.socket, identity: TapIdentity) -> GuestListener:
        listener = GuestListener(identity, sock)
        self.listeners[id(listener)] = identity
        self.journal.events.append(("open", f"{identity.ifname}:{identity.instance_id}"))
        return listener

    async def remove_listener(self, listener: GuestListener) -> None:
        identity = self.listeners.pop(id(listener))
        listener.sock.close()
        self.journal.events.append(("close", f"{identity.ifname}:{identity.instance_id}"))


def manager(journal: Journal, action: str = "reset", *,
            open_listener: Callable[[str, str, int], socket.socket] | None = None,
            latches: MemoryLatches | None = None, metrics: NodeMetrics | None = None
            ) -> tuple[TapManager, list[set[str]]]:
    served: list[set[str]] = []
    taps = TapManager(FakeDatapath(journal), FakeServer(journal),  # type: ignore[arg-type]
                      disabled_action=action, address="169.254.169.254", port=80,
                      on_instances_changed=served.append,
                      open_listener=open_listener or (lambda *_: socket.socket()),
                      latch_store=latches, metrics=metrics, ifindex_of=None)
    return taps, served


async def test_listener_opens_before_steering_and_closes_after() -> None:
    journal = Journal()
    taps, served = manager(journal)
    await taps.update_links({"tap1": Link("tap1", 5)})
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", True)})
    assert journal.events[-2:] == [("open", "tap1:i-1"), ("sync", "tap1")]
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", False)})
    assert journal.events[-2:] == [("sync", ""), ("close", "tap1:i-1")]
    assert served[-2:] == [{"i-1"}, set()]


async def test_rebinding_a_tap_replaces_its_identity() -> None:
    journal = Journal()
    taps, _ = manager(journal)
    await taps.update_links({"tap1": Link("tap1", 5)})
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", True)})
    await taps.update_bindings({"tap1": Binding("tap1", "i-2", True)})
    assert ("close", "tap1:i-1") in journal.events
    assert journal.events[-2:] == [("open", "tap1:i-2"), ("sync", "tap1")]


async def test_disabled_keeps_its_listener_in_403_mode() -> None:
    journal = Journal()
    taps, served = manager(journal, "403")
    await taps.update_links({"tap1": Link("tap1", 5)})
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", False)})
    assert ("open", "tap1:i-1") in journal.events and served[-1] == {"i-1"}


async def test_vanished_tap_closes_its_listener() -> None:
    journal = Journal()
    taps, served = manager(journal)
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", True)})
    await taps.update_links({"tap1": Link("tap1", 5)})
    await taps.update_links({})
    assert journal.events[-2:] == [("sync", ""), ("close", "tap1:i-1")]
    assert served[-1] == set()


async def test_failed_listener_is_refused_retried_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """EADDRINUSE/EMFILE: the datapath must not steer to a tap with no socket
    (the guest would hang); the manager retries until the listener opens."""
    import interceptor.node.taps as taps_module

    monkeypatch.setattr(taps_module, "RETRY_INITIAL_S", 0.01)
    journal = Journal()
    attempts: list[str] = []

    def flaky(ifname: str, address: str, port: int) -> socket.socket:
        attempts.append(ifname)
        if len(attempts) < 3:
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError as exc:
                raise TapListenerError(f"listener: {ifname}: {exc.strerror}") from exc
        return socket.socket()

    metrics = NodeMetrics()
    taps, _ = manager(journal, open_listener=flaky, metrics=metrics)
    try:
        await taps.update_links({"tap1": Link("tap1", 5)})
        await taps.update_bindings({"tap1": Binding("tap1", "i-1", True)})
        assert journal.events[-1] == ("sync", "")  # refused, not steered to nothing
        assert taps.failed_listeners == {"tap1": "emfile"}
        assert taps.refused == {"tap1": "no_listener"}
        text = metrics.render().decode()
        assert 'interceptor_node_tap_listener_failures_total{reason="emfile"} 1.0' in text
        assert "interceptor_node_tap_listeners_pending 1.0" in text
        for _ in range(200):
            if journal.events[-1] == ("sync", "tap1"):
                break
            await asyncio.sleep(0.01)
        assert journal.events[-2:] == [("open", "tap1:i-1"), ("sync", "tap1")]
        assert len(attempts) == 3 and taps.refused == {}
        assert "interceptor_node_tap_listeners_pending 0.0" in metrics.render().decode()
    finally:
        await taps.close()


async def test_latches_survive_a_restart_of_the_manager() -> None:
    """A tap recreated while the daemon was down is not served on restart."""
    store = MemoryLatches()
    journal = Journal()
    taps, _ = manager(journal, latches=store)
    await taps.update_links({"tap1": Link("tap1", 5)})
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", True, generation=7)})
    assert store.latches == {("tap1", 7): 5}
    await taps.close()
    # "Restart": a new manager over the same store; tap1 now has ifindex 6.
    journal2 = Journal()
    again, served = manager(journal2, latches=store)
    await again.update_links({"tap1": Link("tap1", 6)})
    await again.update_bindings({"tap1": Binding("tap1", "i-1", True, generation=7)})
    assert ("open", "tap1:i-1") not in journal2.events and served[-1] == set()
    assert again.refused == {"tap1": "recreated"}


async def test_ipv6_listeners_open_and_close_with_the_tap_all_or_none() -> None:
    journal = Journal()
    opened: list[tuple[str, str]] = []
    fail6 = {"on": True}

    def open_any(name: str, address: str, port: int) -> socket.socket:
        if fail6["on"] and address.startswith("fe80"):
            raise TapListenerError("listener: [fe80::a9fe:a9fe]:80 is already bound on tap1")
        opened.append((name, address))
        return socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)

    server = FakeServer(journal)
    taps = TapManager(FakeDatapath(journal), server,  # type: ignore[arg-type]
                      disabled_action="reset", address="169.254.169.254", port=80,
                      open_listener=open_any, ifindex_of=None,
                      addresses6=("fd00:ec2::254", "fe80::a9fe:a9fe"))
    await taps.update_links({"tap1": Link("tap1", 5)})
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", True)})
    # One IPv6 listener failed: the tap is refused, and none of its listeners stays.
    assert taps.failed_listeners.keys() == {"tap1"}
    assert server.listeners == {} and journal.events[-1] == ("sync", "")
    fail6["on"] = False
    await taps.apply()
    assert len(server.listeners) == 3 and journal.events[-1] == ("sync", "tap1")
    assert opened[-3:] == [("tap1", "169.254.169.254"), ("tap1", "fd00:ec2::254"),
                           ("tap1", "fe80::a9fe:a9fe")]
    await taps.update_bindings({"tap1": Binding("tap1", "i-1", False)})
    assert server.listeners == {}
    assert [e for e in journal.events if e[0] == "close"][-3:] == [("close", "tap1:i-1")] * 3
