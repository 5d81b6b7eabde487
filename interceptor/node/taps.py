"""Keeps the kernel datapath and the per-tap listeners equal to the desired state.

Inputs change from two sides, links (netlink) and bindings (backend); every
change recomputes the whole desired state (pure, ``desired_state``) and
applies the difference. Ordering matters for guests mid-boot:

1. open listeners for newly steered taps *before* the datapath steers to them
   (a SYN steered to no socket is lost and costs the guest a retransmit);
2. sync the datapath (one atomic batch);
3. close listeners the datapath no longer steers to (their open connections,
   long-polls included, are aborted: a disabled VM keeps nothing open).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import Datapath, TapState
from interceptor.node.datapath.listeners import TapListenerError, open_tap_listener
from interceptor.node.desired_state import Link, desired_taps
from interceptor.node.http_server import GuestHttpServer, GuestListener, TapIdentity

log = logging.getLogger(__name__)


@dataclass
class _Served:
    identity: TapIdentity
    listener: GuestListener


class TapManager:
    """Owns the per-tap state of the node; call ``update_*`` from the event loop."""

    def __init__(self, datapath: Datapath, server: GuestHttpServer, *,
                 disabled_action: str, address: str, port: int,
                 on_instances_changed: Callable[[set[str]], None] | None = None,
                 open_listener: Callable[[str, str, int], socket.socket] = open_tap_listener
                 ) -> None:
        self._datapath = datapath
        self._server = server
        self._disabled_action = disabled_action
        self._address = address
        self._port = port
        self._on_instances_changed = on_instances_changed
        self._open_listener = open_listener
        self._links: dict[str, Link] = {}
        self._bindings: dict[str, Binding] = {}
        self._served: dict[str, _Served] = {}
        self._applied: dict[str, TapState] = {}
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self.bindings_known = False

    @property
    def taps(self) -> Mapping[str, TapState]:
        return self._applied

    def served_instances(self) -> set[str]:
        return {s.identity.instance_id for s in self._served.values()}

    async def update_links(self, links: Mapping[str, Link]) -> None:
        self._links = dict(links)
        await self.apply()

    async def update_bindings(self, bindings: Mapping[str, Binding]) -> None:
        self._bindings = dict(bindings)
        self.bindings_known = True
        await self.apply()

    async def repair(self) -> bool:
        """Reinstall the datapath if something removed it underneath us (an
        operator's ``nft flush ruleset``, a stray ``--cleanup``), then re-apply
        every tap. Returns True when it had to."""
        async with self._lock:
            if await asyncio.to_thread(self._datapath.installed):
                return False
            log.warning("datapath %s is missing from the kernel; reinstalling",
                        self._datapath.name)
            await asyncio.to_thread(self._datapath.install)
        await self.apply()
        return True

    async def apply(self) -> None:
        """Recompute and apply; concurrent calls are serialised."""
        async with self._lock:
            desired = desired_taps(self._links, self._bindings, self._disabled_action)
            await self._open_listeners(desired)
            await asyncio.to_thread(self._datapath.sync, desired)
            self._applied = desired
            await self._close_listeners(desired)
            if self._on_instances_changed is not None:
                self._on_instances_changed(self.served_instances())

    def _identity(self, tap: TapState) -> TapIdentity | None:
        if not tap.steer or tap.instance_id is None:
            return None
        return TapIdentity(tap.ifname, tap.ifindex, tap.instance_id)

    async def _open_listeners(self, desired: Mapping[str, TapState]) -> None:
        for name, tap in desired.items():
            identity = self._identity(tap)
            if identity is None:
                continue
            served = self._served.get(name)
            if served is not None and served.identity == identity:
                continue
            if served is not None:  # rebound or recreated: never reuse the old identity
                await self._server.remove_listener(served.listener)
                del self._served[name]
            try:
                sock = self._open_listener(name, self._address, self._port)
            except TapListenerError as exc:
                # The tap vanished between the netlink event and now; the
                # next link event or reconcile brings the state back in line.
                log.warning("tap %s: cannot listen: %s", name, exc)
                continue
            try:
                listener = await self._server.add_listener(sock, identity)
            except OSError:
                sock.close()
                raise
            self._served[name] = _Served(identity, listener)
            log.info("tap %s (ifindex %d) serves instance %s", name, tap.ifindex,
                     tap.instance_id)

    async def _close_listeners(self, desired: Mapping[str, TapState]) -> None:
        for name in list(self._served):
            tap = desired.get(name)
            identity = self._identity(tap) if tap is not None else None
            if identity == self._served[name].identity:
                continue
            served = self._served.pop(name)
            await self._server.remove_listener(served.listener)
            log.info("tap %s no longer serves instance %s", name, served.identity.instance_id)

    async def close(self) -> None:
        for served in self._served.values():
            await self._server.remove_listener(served.listener)
        self._served.clear()

