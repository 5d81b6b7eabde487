"""Composition root of ``interceptor serial``: source, server, listeners; torn down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from interceptor.channels.serial_config import SerialConfig
from interceptor.channels.serial_server import SerialServer, SessionLimits
from interceptor.channels.sources import SerialSource
from interceptor.common.errors import ConfigError, InterceptorError
from interceptor.node.config import NodeConfig

log = logging.getLogger(__name__)


def prepare_socket_dir(cfg: SerialConfig) -> None:
    """Create the socket directory before serving (ConfigError when it cannot be)."""
    try:
        Path(cfg.socket_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"config: socket_dir {cfg.socket_dir}: {exc.strerror}") from None


def limits_of(cfg: SerialConfig) -> SessionLimits:
    return SessionLimits(max_line=cfg.max_line, packet_rate=cfg.packet_rate,
                         packet_burst=cfg.packet_burst, read_rate=cfg.read_rate,
                         partial_timeout=cfg.partial_timeout, write_timeout=cfg.write_timeout,
                         max_connections=cfg.max_connections)


class SerialDaemon:
    """One running serial daemon; ``run(stop)`` returns after a clean shutdown."""

    def __init__(self, cfg: SerialConfig, node: NodeConfig | None = None) -> None:
        self.cfg = cfg
        self.node = node
        self.ready = asyncio.Event()
        self.tcp_port: int | None = None
        self.server: SerialServer | None = None

    async def _source(self, stack: contextlib.AsyncExitStack) -> SerialSource:
        if self.cfg.driver == "file":
            from interceptor.channels.file_source import FileSource

            assert self.cfg.directory is not None  # validated
            return FileSource(self.cfg.directory, poll_interval=self.cfg.poll_interval)
        from interceptor.channels.backend_source import BackendSource
        from interceptor.node.backend_client import BackendClient
        from interceptor.node.cache import DocumentCache

        node = self.node
        assert node is not None  # the CLI loads it for the backend driver
        client = BackendClient(node.backend_url, node.node_name, node.node_token,
                               node.signing_key)
        stack.push_async_callback(client.close)
        cache = DocumentCache(client, ttl=node.cache_ttl, stale_if_error=node.stale_if_error)
        stack.push_async_callback(cache.close)
        return BackendSource(client, cache)

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            source = await self._source(stack)
            server = SerialServer(source, self.cfg.socket_dir, limits=limits_of(self.cfg),
                                  socket_mode=self.cfg.mode, socket_gid=self.cfg.gid,
                                  concentrator_token=self.cfg.concentrator_token)
            self.server = server
            stack.push_async_callback(server.close)
            if self.cfg.tcp_enabled:
                try:
                    self.tcp_port = await server.start_tcp(self.cfg.tcp_host,
                                                           self.cfg.tcp_port)
                except OSError as exc:
                    raise InterceptorError(
                        f"cannot listen on {self.cfg.tcp_host}:{self.cfg.tcp_port}: "
                        f"{exc.strerror or exc}") from None
            elif self.cfg.tcp_port:
                log.info("serial: no concentrator_token, the concentrator port stays closed")
            if self.cfg.operator_port:
                from aiohttp import web

                from interceptor.channels.serial_operator import operator_app

                runner = web.AppRunner(operator_app(server), access_log=None)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                try:
                    await web.TCPSite(runner, self.cfg.operator_host,
                                      self.cfg.operator_port).start()
                except OSError as exc:
                    raise InterceptorError(
                        f"cannot listen on {self.cfg.operator_host}:{self.cfg.operator_port}"
                        f": {exc.strerror or exc}") from None
            await server.refresh()  # a source that is down now: the feed resyncs later

            async def on_change() -> None:
                await server.refresh()

            follower = asyncio.create_task(source.follow(on_change), name="serial-follow")
            stack.push_async_callback(_cancel, follower)
            self.ready.set()
            log.info("serial: %s driver, sockets in %s", self.cfg.driver, self.cfg.socket_dir)
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, follower],
                                         return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            failure = follower.exception() if follower in done else None
            if failure is not None:
                raise failure
            log.info("serial: stopping")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
