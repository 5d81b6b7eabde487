"""The product under test: real backend and node daemon in a node namespace.

Reuses the end-to-end harness (``tests/lab`` (``Topology``) for the
namespaces, ``tests/e2e/stack.ProductStack`` for the processes), adds bulk
instance creation over the owner API, and the node options the capacity
benchmarks run with (``UNLIMITED``: limits lifted through the daemon's own
options, nothing changed behind its back). ``bench_stack`` removes
everything on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.netns_client import AdminApi, Namespaces, fetch, metric_value
from tests.e2e.stack import (
    BACKEND_OPERATOR_PORT,
    BACKEND_PORT,
    NODE_OPERATOR_PORT,
    ProductStack,
    product,
)
from tests.lab import Topology

CUSTOMER = "cust-bench"
NO_VM_LIMIT: dict[str, Any] = {"rate_limit": 0.0}
"""Node options without the per-VM request rate limit (429); the per-tap
connection guards as the product ships them."""
UNLIMITED: dict[str, Any] = {**NO_VM_LIMIT, "syn_rate": 0, "max_connections": 0}
"""Node options for capacity runs: no per-VM rate limit and no per-tap SYN
rate or connection limit (0 = no limit on both datapaths), so throughput
measures the server and not the guards (README, "Findings")."""


@dataclass
class Bench:
    topo: Topology
    stack: ProductStack
    ns: Namespaces
    admin: AdminApi

    @property
    def node_pid(self) -> int:
        assert self.stack.node is not None
        return self.stack.node.pid

    async def ensure_customer(self) -> None:
        reply = await self.admin.call("GET", f"/v1/customers/{CUSTOMER}")
        if reply.status == 404:
            await self.admin.ok("POST", "/v1/customers", {"id": CUSTOMER, "name": CUSTOMER})

    async def create_instances(self, pairs: list[tuple[str, str | None]],
                               concurrency: int = 8) -> None:
        """Create servers (instance id, tap to bind or None), ``concurrency`` at a time."""
        await self.ensure_customer()
        sem = asyncio.Semaphore(concurrency)

        async def one(iid: str, tap: str | None) -> None:
            body: dict[str, Any] = {"customer_id": CUSTOMER, "hostname": f"h-{iid}"}
            async with sem:
                await self.admin.ok("PUT", f"/v1/servers/{iid}", body,
                                    {"If-None-Match": "*"})
                if tap is not None:
                    await self.bind(iid, tap)

        await asyncio.gather(*(one(iid, tap) for iid, tap in pairs))

    async def serve_fleet(self, taps: list[str], prefix: str) -> list[str]:
        """One bound instance per tap (``i-bench-<prefix><n>``), returned once
        the node has a listener on every one of them."""
        iids = [f"i-bench-{prefix}{i}" for i in range(len(taps))]
        await self.create_instances(list(zip(iids, taps, strict=True)))
        await self.wait_taps(len(taps))
        return iids

    async def bind(self, iid: str, tap: str) -> None:
        """The platform plugs ``tap`` into ``iid``."""
        await self.admin.ok("PUT", f"/v1/servers/{iid}/bindings/{self.stack.node_name}/{tap}",
                            None)

    async def set_hostname(self, iid: str, hostname: str) -> None:
        await self.admin.ok("PATCH", f"/v1/servers/{iid}", {"hostname": hostname})

    async def backend_documents(self) -> float:
        """Documents the backend has sent to nodes (200s and 304s)."""
        return await metric_value(self.ns, self.topo.node, BACKEND_OPERATOR_PORT,
                                  "interceptor_backend_documents_served")

    async def node_metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return await metric_value(self.ns, self.topo.node, NODE_OPERATOR_PORT, name, labels)

    async def readyz(self) -> Any:
        """The node's ``/readyz`` JSON (whatever its status)."""
        reply = await fetch(self.ns, self.topo.node, "/readyz", host="127.0.0.1",
                            port=NODE_OPERATOR_PORT)
        return reply.json()

    async def unbind(self, iid: str) -> None:
        """The platform unplugs every tap of ``iid``."""
        await self.admin.ok("DELETE", f"/v1/servers/{iid}/bindings", None)

    async def wait_taps(self, count: int, timeout: float = 120.0) -> float:
        """Wait until the node has ``count`` guest listeners; seconds waited."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            have = await self.node_metric("interceptor_node_managed_taps")
            if have >= count:
                return loop.time() - start
            if loop.time() - start > timeout:
                raise TimeoutError(f"node serves {have} taps, wanted {count}, after {timeout}s")
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def bench_stack(datapath: str = "nft", node_options: dict[str, Any] | None = None
                ) -> Iterator[Bench]:
    topo = Topology()
    ns = Namespaces()
    # The e2e harness reconciles every 5 s; the bench measures the product default.
    options = {"reconcile_interval": 30.0, **(node_options or {})}
    try:
        with product(topo, datapath=datapath, node_options=options) as stack:
            admin = AdminApi(ns, topo.node, BACKEND_PORT, stack.admin_token)
            yield Bench(topo, stack, ns, admin)
    finally:
        ns.close()
        topo.close()
