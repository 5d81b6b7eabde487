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
import fnmatch
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute, IPRoute

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("tap*", "vnet*", "mdtap*")
DEFAULT_RESYNC_S = 30.0
DEFAULT_DEBOUNCE_S = 0.02
RTMGRP_LINK = 1
IFF_UP = 0x1
OPER_UP = 6  # IF_OPER_UP
_RCVBUF = 4 << 20


@dataclass(frozen=True)
class LinkInfo:
    """One managed link as the kernel sees it now."""

    ifindex: int
    bridge: str | None  # name of the Linux bridge it is enslaved to, if any
    mac: str
    oper_up: bool


Links = dict[str, LinkInfo]
OnChange = Callable[[Links], Awaitable[None] | None]


def matches(ifname: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(ifname, p) for p in patterns)


def _links_from(messages: Iterable[Any], patterns: Iterable[str]) -> Links:
    pats = tuple(patterns)
    rows = []
    by_index: dict[int, tuple[str, str | None]] = {}
    for msg in messages:
        name = msg.get("ifname")
        if not name:
            continue
        info = msg.get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info is not None else None
        by_index[int(msg["index"])] = (name, kind)
        rows.append(msg)
    out: Links = {}
    for msg in rows:
        name = msg.get("ifname")
        if not matches(name, pats):
            continue
        master = msg.get("master")
        bridge = None
        if master:
            mname, mkind = by_index.get(int(master), (None, None))
            bridge = mname if mkind == "bridge" else None
        out[name] = LinkInfo(
            ifindex=int(msg["index"]),
            bridge=bridge,
            mac=str(msg.get("address") or ""),
            oper_up=msg.get("operstate") == "UP" or (
                bool(msg["flags"] & IFF_UP) and msg.get("operstate") == "UNKNOWN"),
        )
    return out


def snapshot(patterns: Iterable[str] = DEFAULT_PATTERNS) -> Links:
    """The managed links now (blocking; for CLI tools and tests)."""
    with IPRoute() as ipr:
        return _links_from(ipr.get_links(), patterns)


async def dump_links(patterns: Iterable[str] = DEFAULT_PATTERNS) -> Links:
    """The managed links now, from a fresh RTM_GETLINK dump."""
    async with AsyncIPRoute() as ipr:
        msgs = [m async for m in await ipr.link("dump")]
    return _links_from(msgs, patterns)


class LinkWatcher:
    """Follows link changes and calls ``on_change(links)`` whenever the set of
    managed links (name, ifindex, bridge, MAC, oper state) changes.

    ``await start()`` subscribes, dumps, delivers the first state and starts
    the background task; ``await stop()`` cancels it and closes the netlink
    socket. The callback may be a plain function or a coroutine function; an
    exception in it is logged and the state is delivered again next round.
    """

    def __init__(self, on_change: OnChange, *, patterns: Iterable[str] = DEFAULT_PATTERNS,
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
        links = await dump_links(self.patterns)
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
