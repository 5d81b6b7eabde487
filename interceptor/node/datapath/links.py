"""The link watcher: which managed taps exist, with which ifindex, right now.

Datapath-agnostic. It subscribes to RTM_NEWLINK/RTM_DELLINK *before* it dumps
the links, so no change between the dump and the subscription is missed,
then re-dumps after every burst of link events and on a fixed interval
(the periodic full reconcile also repairs a lost event, e.g. after a netlink
buffer overrun). Events are only a trigger: the state handed to the callback
always comes from a complete dump, which costs about a millisecond per
thousand links. A tap deleted and recreated under the same name shows up with
its new ifindex, so the consumer sees a change and cannot carry enablement
over by accident.

Works in the network namespace the process (thread) runs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from interceptor.node.datapath.contract import DEFAULT_TAP_PATTERNS, matches
from interceptor.node.datapath.netlink import NetLink, dump_links

log = logging.getLogger(__name__)

DEFAULT_RESYNC_S = 30.0
DEFAULT_DEBOUNCE_S = 0.02
RTMGRP_LINK = 1
_RCVBUF = 4 << 20


@dataclass(frozen=True)
class LinkInfo:
    """One managed link as the kernel sees it now."""

    ifindex: int
    bridge: str | None  # name of the Linux bridge it is enslaved to, if any
    mac: str
    up: bool = True  # administratively up; a change re-syncs (IPv6 routes need it)


Links = dict[str, LinkInfo]
OnChange = Callable[[Links], Awaitable[None] | None]


def _managed(links: Mapping[int, NetLink], patterns: Iterable[str]) -> Links:
    pats = tuple(patterns)
    out: Links = {}
    for index, link in links.items():
        if not link.name or not matches(link.name, pats):
            continue
        master = links.get(link.master) if link.master else None
        bridge = master.name if master is not None and master.kind == "bridge" else None
        out[link.name] = LinkInfo(ifindex=index, bridge=bridge, mac=link.mac, up=link.up)
    return out


def snapshot(patterns: Iterable[str] = DEFAULT_TAP_PATTERNS) -> Links:
    """The managed links now (blocking; for CLI tools and tests)."""
    return _managed(dump_links(), patterns)


async def managed_links(patterns: Iterable[str] = DEFAULT_TAP_PATTERNS) -> Links:
    """The managed links now, from a fresh RTM_GETLINK dump.

    The dump is parsed by a small hand-written reader in a worker thread:
    pyroute2's parser took 0.5-1.5 s for 1,000 links on the event loop, and
    every guest request waited for it (measured by the bench suite).
    """
    return await asyncio.to_thread(snapshot, patterns)


class LinkWatcher:
    """Follows link changes and calls ``on_change(links)`` whenever the set of
    managed links (name, ifindex, bridge, MAC, administrative state) changes.

    ``await start()`` subscribes, dumps, delivers the first state and starts
    the background task; ``await stop()`` cancels it and closes the netlink
    socket. The callback may be a plain function or a coroutine function; an
    exception in it is logged and the state is delivered again next round.
    """

    def __init__(self, on_change: OnChange, *, patterns: Iterable[str] = DEFAULT_TAP_PATTERNS,
                 resync_interval: float = DEFAULT_RESYNC_S,
                 debounce: float = DEFAULT_DEBOUNCE_S) -> None:
        self._on_change = on_change
        self.patterns = tuple(patterns)
        self.resync_interval = resync_interval
        self.debounce = debounce
        self._sock: socket.socket | None = None
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._current: Links | None = None
        self.rounds = 0  # completed dumps, for tests and metrics

    @property
    def current(self) -> Mapping[str, LinkInfo]:
        return dict(self._current or {})

    async def start(self) -> Links:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._drain)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        try:
            await self._reconcile()
        except BaseException:
            self._close_socket()
            raise
        self._task = asyncio.create_task(self._run(), name="link-watcher")
        return dict(self._current or {})

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_socket()

    async def resync(self) -> Links:
        """Dump now (outside the schedule) and deliver a change if any."""
        await self._reconcile()
        return dict(self._current or {})

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _drain(self) -> None:
        """Read every pending notification; contents do not matter (we re-dump)."""
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                if not sock.recv(65536):
                    break
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overrun: events lost, a dump fixes it
                    log.warning("links: netlink receive failed: %s", exc)
                    break
        self._event.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), self.resync_interval)
            if self._event.is_set():
                await asyncio.sleep(self.debounce)  # coalesce a burst of events
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep watching; the next round retries
                log.warning("links: reconcile failed: %s", exc)

    async def _reconcile(self) -> None:
        self._event.clear()
        links = await managed_links(self.patterns)
        self.rounds += 1
        if links == self._current:
            return
        try:
            result = self._on_change(dict(links))
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("links: change callback failed")
            return  # _current unchanged: delivered again on the next round
        self._current = links
