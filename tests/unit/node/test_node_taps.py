"""TapManager: listeners open before the datapath steers to them and close
after it stops; a rebound or recreated tap never keeps its old identity."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import TapCounters, TapState
from interceptor.node.desired_state import Link
from interceptor.node.http_server import GuestListener, TapIdentity
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


def manager(journal: Journal, action: str = "reset") -> tuple[TapManager, list[set[str]]]:
    served: list[set[str]] = []
    taps = TapManager(FakeDatapath(journal), FakeServer(journal),  # type: ignore[arg-type]
                      disabled_action=action, address="169.254.169.254", port=80,
                      on_instances_changed=served.append,
                      open_listener=lambda *_: socket.socket())
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
