"""The node daemon's composition root: builds everything, runs, tears down.

Every long-lived resource is created here, in dependency order, and closed
in reverse order by one ``AsyncExitStack`` — also when start-up fails half
way, so a failed start leaves nothing in the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from functools import partial

from aiohttp import web

from interceptor.common import sdnotify
from interceptor.common.errors import DatapathError
from interceptor.formats.router import render_path
from interceptor.node.backend_client import BackendClient, BackendError
from interceptor.node.cache import DocumentCache
from interceptor.node.config import NodeConfig
from interceptor.node.datapath.base import HANDOVER_GRACE_S, HEARTBEAT_INTERVAL_S, Datapath
from interceptor.node.datapath.contract import options_from
from interceptor.node.datapath.links import Links, LinkWatcher
from interceptor.node.datapath.listeners import ListenerStore
from interceptor.node.desired_state import Link
from interceptor.node.guest_api import GuestApi, GuestApiSettings
from interceptor.node.http_server import GuestHttpServer
from interceptor.node.latches import FileLatches
from interceptor.node.limits import HttpLimits, RateLimiter
from interceptor.node.metrics import NodeMetrics
from interceptor.node.operator import OperatorState, datapath_metrics, operator_app
from interceptor.node.taps import TapManager
from interceptor.node.tokens import TokenIssuer
from interceptor.node.watcher import FeedWatcher

log = logging.getLogger(__name__)

NO_LIMIT = 1 << 31  # max_connections = 0: no limit, in the HTTP server as in the kernel


def make_datapath(config: NodeConfig) -> Datapath:
    """The configured datapath (options mapped by ``contract.options_from``);
    imports lazily so nft-only hosts need no BCC."""
    if config.datapath == "ebpf":
        from interceptor.node.datapath.ebpf import EbpfConfig, EbpfDatapath

        return EbpfDatapath(EbpfConfig(instance=config.bpf_instance, **options_from(config)))
    return _nft(config)


def _nft(config: NodeConfig) -> Datapath:
    from interceptor.node.datapath.nft import NftConfig, NftDatapath

    return NftDatapath(NftConfig(table=config.nft_table, **options_from(config)))


def all_datapaths(config: NodeConfig) -> list[Datapath]:
    """Both datapaths, for ``--cleanup`` (eBPF only where BCC is importable)."""
    found = [_nft(config)]
    try:
        found.append(make_datapath(dataclasses.replace(config, datapath="ebpf")))
    except DatapathError as exc:
        log.info("eBPF cleanup skipped: %s", exc)
    return found


class NodeDaemon:
    """One running node daemon. ``run(stop)`` returns after a clean shutdown."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.metrics = NodeMetrics()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        # Listeners the previous process left with the service manager (fd
        # store); taken first, so nothing else is opened onto fds 3, 4, ….
        listeners = ListenerStore.from_environment()
        async with contextlib.AsyncExitStack() as stack:
            datapath = make_datapath(cfg)
            await asyncio.to_thread(datapath.install)
            if not cfg.keep_datapath_on_exit:
                stack.push_async_callback(asyncio.to_thread, datapath.remove)
            if cfg.keep_datapath_on_exit:
                # Unwound last: listeners left with the service manager are
                # steered to while the next process starts (a killed daemon
                # gets no such grace: its guests get RSTs).
                stack.push_async_callback(_handover_grace, datapath, listeners)
            # Unwound late: the heartbeat lasts until the listeners are closed.
            heartbeat = asyncio.create_task(_heartbeat(datapath), name="datapath-heartbeat")
            stack.push_async_callback(_cancel, [heartbeat])
            self.metrics.register_collector(partial(datapath_metrics, datapath))

            client = BackendClient(cfg.backend_url, cfg.node_name, cfg.node_token,
                                   cfg.signing_key, metrics=self.metrics,
                                   ca_file=cfg.backend_ca_file or None,
                                   failback_after=cfg.backend_failback)
            stack.push_async_callback(client.close)
            cache = DocumentCache(client, ttl=cfg.cache_ttl, stale_if_error=cfg.stale_if_error,
                                  metrics=self.metrics)
            stack.push_async_callback(cache.close)
            api = GuestApi(cache, TokenIssuer(cfg.token_secret), client, render_path,
                           rate_limiter=RateLimiter(cfg.rate_limit, cfg.rate_burst),
                           settings=GuestApiSettings(token_hop_limit=cfg.token_hop_limit,
                                                     disabled_action=cfg.disabled_action),
                           metrics=self.metrics)
            server = GuestHttpServer(
                api.handle, metrics=self.metrics,
                limits=HttpLimits(max_connections_per_tap=cfg.max_connections or NO_LIMIT))
            stack.push_async_callback(server.close)

            forgetter = _InstanceForgetter(cache, api, self.metrics)
            latches = FileLatches(cfg.state_dir, cfg.node_name)
            latches.check()
            taps = TapManager(datapath, server, disabled_action=cfg.disabled_action,
                              address=cfg.metadata_address, port=cfg.metadata_port,
                              addresses6=tuple(cfg.metadata_address6),
                              on_instances_changed=forgetter.served,
                              latch_store=latches, metrics=self.metrics,
                              open_listener=listeners.open,
                              on_listener_released=listeners.released)
            stack.push_async_callback(taps.close)
            # Unwound first: stop accepting and let in-flight requests finish
            # (bounded), only then close the listeners and remove the datapath.
            stack.push_async_callback(server.shutdown, cfg.shutdown_grace)

            bindings = _BindingsLoader(client, taps)
            watcher = FeedWatcher(client, cache, bindings.reload, metrics=self.metrics)
            state = OperatorState(datapath=datapath, watcher=watcher, cache=cache,
                                  metrics=self.metrics, taps=taps)
            if cfg.operator_port:
                runner = web.AppRunner(operator_app(state), access_log=None)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                await web.TCPSite(runner, cfg.operator_host, cfg.operator_port).start()

            async def on_links(links: Links) -> None:
                await taps.update_links({
                    name: Link(name, info.ifindex, info.bridge, info.mac)
                    for name, info in links.items()})

            link_watcher = LinkWatcher(on_links, patterns=cfg.tap_patterns,
                                       resync_interval=cfg.reconcile_interval)
            # Bindings first, then links: the first apply has both, so taps a
            # previous process steered stay steered across a restart.
            if await bindings.load():
                # The backend answered: ready without waiting for the first
                # long-poll of the change feed to come back.
                watcher.healthy = True
            watcher.since = bindings.revision
            await link_watcher.start()
            stack.push_async_callback(link_watcher.stop)
            listeners.release_unclaimed()
            tasks = [
                asyncio.create_task(watcher.run(), name="feed-watcher"),
                asyncio.create_task(_guard_datapath(taps, cfg.datapath_check_interval),
                                    name="datapath-guard"),
            ]
            stack.push_async_callback(_cancel, tasks)
            watchdog = sdnotify.Watchdog.from_environment()
            if watchdog is not None:
                tasks.append(asyncio.create_task(watchdog.run(), name="watchdog"))
            self.ready.set()
            log.info("node %s: datapath %s installed, serving (%d tap listeners inherited)",
                     cfg.node_name, datapath.name, len(listeners.adopted))
            sdnotify.notify(f"READY=1\nSTATUS=serving {len(taps.served_instances())} VMs "
                            f"on the {datapath.name} datapath")
            stack.callback(sdnotify.notify, "STOPPING=1")
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in done:
                failure = None if task is stopper else task.exception()
                if failure is not None:
                    raise failure
            log.info("node %s: stopping", cfg.node_name)


class _InstanceForgetter:
    """Drops per-VM state (cached document, rate bucket, metric labels) once no
    tap serves the VM any more, so memory and label sets stay bounded by the
    VMs this node hosts now."""

    def __init__(self, cache: DocumentCache, api: GuestApi, metrics: NodeMetrics) -> None:
        self._cache = cache
        self._api = api
        self._metrics = metrics
        self._served: set[str] = set()

    def served(self, instances: set[str]) -> None:
        for iid in self._served - instances:
            self._cache.forget(iid)
            self._api.forget_instance(iid)
            self._metrics.forget_instance(iid)
        self._served = set(instances)


class _BindingsLoader:
    """Reads this node's bindings from the backend and hands them to the taps.

    If the backend is down at start the node serves nobody (fail closed) and
    the watcher's resync after the outage reloads the bindings.
    """

    def __init__(self, client: BackendClient, taps: TapManager) -> None:
        self._client = client
        self._taps = taps
        self.revision = 0

    async def reload(self) -> None:
        await self.load()

    async def load(self) -> bool:
        """Fetch and apply the bindings; False when the backend did not answer."""
        try:
            answer = await self._client.bindings()
        except BackendError as exc:
            log.warning("bindings: backend unavailable (%s); keeping the last known", exc)
            return False
        self.revision = answer.revision
        await self._taps.update_bindings({b.ifname: b for b in answer.bindings})
        return True


async def _guard_datapath(taps: TapManager, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await taps.repair()
        except DatapathError as exc:
            log.error("reinstalling the datapath failed: %s", exc)


async def _handover_grace(datapath: Datapath, listeners: ListenerStore) -> None:
    if listeners.handed_over:
        try:
            await asyncio.to_thread(datapath.heartbeat, HANDOVER_GRACE_S)
        except DatapathError as exc:
            log.warning("could not extend the datapath heartbeat for the hand-over: %s", exc)


async def _heartbeat(datapath: Datapath) -> None:
    while True:
        try:
            await asyncio.to_thread(datapath.heartbeat)
        except DatapathError as exc:  # removed underneath: the guard reinstalls it
            log.debug("datapath heartbeat failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
