"""Keeps the kernel datapath and the per-tap listeners equal to the desired state.

Inputs change from two sides, links (netlink) and bindings (backend); every
change recomputes the whole desired state (pure, ``desired_state``) and
applies the difference. Ordering matters for guests mid-boot:

1. persist the latches (which tap incarnation each binding serves) before
   anything is served under them;
2. open listeners for newly steered taps *before* the datapath steers to them
   (a SYN steered to no socket is lost and costs the guest a retransmit); a
   tap whose listener cannot be opened (EADDRINUSE, EMFILE, …) is refused by
   the datapath instead, and retried with backoff until it opens;
3. sync the datapath (one atomic batch);
4. close listeners the datapath no longer steers to (their open connections,
   long-polls included, are aborted: a disabled VM keeps nothing open).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import Datapath, TapState
from interceptor.node.datapath.listeners import (
    TapGoneError,
    TapListenerError,
    open_tap_listener,
)
from interceptor.node.desired_state import REASONS, Desired, Latches, Link, desired_taps
from interceptor.node.http_server import GuestHttpServer, GuestListener, TapIdentity
from interceptor.node.latches import LatchStore, MemoryLatches
from interceptor.node.metrics import NodeMetrics

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0


@dataclass
class _Served:
    identity: TapIdentity
    listener: GuestListener
    listeners6: tuple[GuestListener, ...] = ()  # one per IPv6 metadata address

    @property
    def all(self) -> tuple[GuestListener, ...]:
        return (self.listener, *self.listeners6)


class TapManager:
    """Owns the per-tap state of the node; call ``update_*`` from the event loop."""

    def __init__(self, datapath: Datapath, server: GuestHttpServer, *,
                 disabled_action: str, address: str, port: int,
                 on_instances_changed: Callable[[set[str]], None] | None = None,
                 open_listener: Callable[[str, str, int], socket.socket] = open_tap_listener,
                 latch_store: LatchStore | None = None,
                 metrics: NodeMetrics | None = None,
                 ifindex_of: Callable[[str], int] | None = socket.if_nametoindex,
                 addresses6: Sequence[str] = (),
                 on_listener_released: Callable[[str], None] | None = None) -> None:
        self._datapath = datapath
        self._server = server
        self._disabled_action = disabled_action
        self._address = address
        self._port = port
        self._on_instances_changed = on_instances_changed
        self._open_listener = open_listener
        self._addresses6 = tuple(addresses6)
        self._ifindex_of = ifindex_of
        # Restart hand-over (datapath/listeners.py ListenerStore): told when a
        # tap's listener is closed for good; not at daemon exit, where the
        # listeners stay with the service manager for the next process.
        self._on_listener_released = on_listener_released
        self._links_known = False
        self._links: dict[str, Link] = {}
        self._bindings: dict[str, Binding] = {}
        self._served: dict[str, _Served] = {}
        self._applied: dict[str, TapState] = {}
        self._lock = asyncio.Lock()
        self._latch_store: LatchStore = latch_store or MemoryLatches()
        self._latches: Latches = self._latch_store.load()
        self._metrics = metrics
        self._failed: dict[str, str] = {}  # ifname -> why its listener did not open
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_INITIAL_S
        self._retry_task: asyncio.Task[None] | None = None
        self.refused: dict[str, str] = {}
        self._bindings_known = False

    @property
    def taps(self) -> Mapping[str, TapState]:
        return self._applied

    def served_instances(self) -> set[str]:
        return {s.identity.instance_id for s in self._served.values()}

    async def update_links(self, links: Mapping[str, Link]) -> None:
        self._links = dict(links)
        self._links_known = True
        await self.apply()

    async def update_bindings(self, bindings: Mapping[str, Binding]) -> None:
        self._bindings = dict(bindings)
        self._bindings_known = True
        await self.apply()

    @property
    def failed_listeners(self) -> Mapping[str, str]:
        return self._failed

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
            if not self._links_known:
                # Bindings before the first link dump: applying now would
                # unsteer every tap the previous process left steered.
                return
            wanted = self._desired(frozenset())
            if wanted.latches != self._latches:
                await asyncio.to_thread(self._latch_store.save, wanted.latches)
                self._latches = wanted.latches
            failed = await self._open_listeners(wanted.taps)
            final = self._desired(frozenset(failed)) if failed else wanted
            self._note_failures(failed)
            desired = final.taps
            await asyncio.to_thread(self._datapath.sync, desired)
            self._applied = desired
            await self._close_listeners(desired)
            self._note_refusals(final)
            if self._on_instances_changed is not None:
                self._on_instances_changed(self.served_instances())

    def _desired(self, unlistened: frozenset[str]) -> Desired:
        return desired_taps(self._links, self._bindings, self._disabled_action,
                            self._latches, unlistened, bindings_known=self._bindings_known)

    def _note_refusals(self, desired: Desired) -> None:
        for name, reason in desired.refused.items():
            if reason != "unbound" and self.refused.get(name) != reason:
                log.warning("tap %s (ifindex %d) refused: %s", name,
                            desired.taps[name].ifindex, _EXPLAIN.get(reason, reason))
        self.refused = dict(desired.refused)
        if self._metrics is not None:
            counts = dict.fromkeys(REASONS, 0)
            for reason in desired.refused.values():
                counts[reason] += 1
            for reason, count in counts.items():
                self._metrics.taps_refused.labels(reason).set(count)
            self._metrics.listeners_pending.set(len(self._failed))

    def _note_failures(self, failed: dict[str, str]) -> None:
        """Remember listeners that did not open and schedule a retry (backoff)."""
        self._failed = failed
        if not failed:
            self._retry_delay = RETRY_INITIAL_S
            return
        if self._retry is None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(self._retry_delay, self._retry_now)
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)

    def _retry_now(self) -> None:
        self._retry = None
        self._retry_task = asyncio.get_running_loop().create_task(self._apply_logged())

    async def _apply_logged(self) -> None:
        try:
            await self.apply()
        except Exception:  # a retry must never die silently; the next one follows
            log.exception("retrying tap listeners failed")

    def _identity(self, tap: TapState) -> TapIdentity | None:
        if not tap.steer or tap.instance_id is None:
            return None
        return TapIdentity(tap.ifname, tap.ifindex, tap.instance_id)

    async def _open_listeners(self, desired: Mapping[str, TapState]) -> dict[str, str]:
        """Open the listeners ``desired`` needs; return the taps that failed."""
        failed: dict[str, str] = {}
        for name, tap in desired.items():
            identity = self._identity(tap)
            if identity is None:
                continue
            served = self._served.get(name)
            if served is not None and served.identity == identity:
                continue
            if served is not None:  # rebound or recreated: never reuse the old identity
                await self._remove(served)
                del self._served[name]
                self._released(name)
            socks: list[socket.socket] = []
            listeners: list[GuestListener] = []
            try:
                for address in (self._address, *self._addresses6):
                    socks.append(self._open_listener(name, address, self._port))
                # The name may now belong to another tap than the one we saw
                # (deleted and recreated in between): never serve that one.
                if self._ifindex_of is not None and self._ifindex_of(name) != tap.ifindex:
                    raise TapGoneError(f"listener: {name} was recreated meanwhile")
                for sock in socks:
                    listeners.append(await self._server.add_listener(sock, identity))
            except (TapListenerError, OSError) as exc:
                for listener in listeners:  # all of the tap's listeners or none
                    await self._server.remove_listener(listener)
                for sock in socks[len(listeners):]:
                    sock.close()
                reason = _reason(exc)
                failed[name] = reason
                if self._metrics is not None:
                    self._metrics.listener_failures.labels(reason).inc()
                if self._failed.get(name) != reason:
                    log.warning("tap %s: cannot listen (%s), refusing it and retrying: %s",
                                name, reason, exc)
                continue
            self._served[name] = _Served(identity, listeners[0], tuple(listeners[1:]))
            log.info("tap %s (ifindex %d) serves instance %s", name, tap.ifindex,
                     tap.instance_id)
        return failed

    async def _close_listeners(self, desired: Mapping[str, TapState]) -> None:
        for name in list(self._served):
            tap = desired.get(name)
            identity = self._identity(tap) if tap is not None else None
            if identity == self._served[name].identity:
                continue
            served = self._served.pop(name)
            await self._remove(served)
            self._released(name)
            log.info("tap %s no longer serves instance %s", name, served.identity.instance_id)

    def _released(self, name: str) -> None:
        if self._on_listener_released is not None:
            self._on_listener_released(name)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._retry_task is not None:
            self._retry_task.cancel()
        for served in self._served.values():
            await self._remove(served)
        self._served.clear()

    async def _remove(self, served: _Served) -> None:
        for listener in served.all:
            await self._server.remove_listener(listener)



_EXPLAIN = {
    "mac_mismatch": "its MAC is not the one the platform bound (another VM's tap?)",
    "recreated": "the tap was recreated since the platform bound it; bind it again",
    "ifindex_taken": "this tap is already serving another binding (renamed?)",
    "no_listener": "its listener could not be opened (retrying)",
}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TapGoneError):
        return "gone"
    cause = exc.__cause__ or exc.__context__
    for err in (exc, cause):
        number = getattr(err, "errno", None)
        if isinstance(number, int) and number in errno.errorcode:
            return errno.errorcode[number].lower()
    text = str(exc)
    if "already bound" in text:
        return "eaddrinuse"
    return "error"
