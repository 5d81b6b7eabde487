"""The product under test: real backend and node daemon in a node namespace.

Reuses the end-to-end harness (``tests/e2e/netns.Topology`` for the
namespaces, ``tests/e2e/stack.ProductStack`` for the processes), adds bulk
instance creation over the owner API and the per-VM limit lifting the
throughput benchmarks need. ``bench_stack`` removes everything on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.netns_client import AdminApi, Namespaces, fetch, metric_value
from tests.e2e.netns import Topology, sh
from tests.e2e.stack import (
    BACKEND_OPERATOR_PORT,
    BACKEND_PORT,
    NODE_OPERATOR_PORT,
    ProductStack,
    product,
)

CUSTOMER = "cust-bench"
UNLIMITED = {"rate_limit": 0.0}
"""Node options for capacity runs: no per-VM request rate limit (429)."""


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
        await self.admin.ok("PATCH", f"/v1/servers/{iid}", {"bindings": []})

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


def lift_syn_limit(bench: Bench) -> bool:
    """Lift the per-tap new-connection guards of the bench's own daemon, so
    new-connection throughput measures the server and not the guards. They
    are not configurable in NodeConfig (see README).

    * nft: delete the SYN rate limit rule (20/s, burst 40) and the per-tap
      ``ct count over 64`` rule from the daemon's table in the bench's node
      namespace. The second one has to go too: under thousands of new
      connections a second its connection count runs ahead of the open
      connections (closed ones are collected lazily), so it drops SYNs with
      only 32 connections open and every drop costs the client a 1 s
      retransmit (README, "Findings").
    * eBPF: set ``syn_interval_ns`` to 0 (no limit) in the pinned config map
      (the eBPF datapath has no connection count).

    True when the guards are off."""
    if bench.stack.datapath == "ebpf":
        # The daemon's bpffs is in its own mount namespace (ip netns exec
        # remounts /sys): reach the pin through the process's root.
        return _lift_ebpf(f"/proc/{bench.node_pid}/root{bench.stack.pin_dir}/config")
    listing = sh(["nft", "-a", "list", "chain", "inet", "interceptor", "steer"],
                 netns=bench.topo.node).stdout
    removed = 0
    for line in listing.splitlines():
        if ("@syn_rl" in line or "@conn_ct" in line) and "# handle" in line:
            handle = line.rsplit("# handle", 1)[1].strip()
            sh(["nft", "delete", "rule", "inet", "interceptor", "steer", "handle", handle],
               netns=bench.topo.node)
            removed += 1
    return removed == 2 or ("@syn_rl" not in listing and "@conn_ct" not in listing)


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_SYN_INTERVAL_OFFSET = 16  # struct dp_config in bpf/tap_ingress.c


def _lift_ebpf(config_pin: str) -> bool:
    from interceptor.node.datapath import ebpf_syscall

    fd = ebpf_syscall.obj_get(config_pin)
    try:
        size = ebpf_syscall.map_info(fd).value_size
        key = ctypes.c_uint32(0)
        value = ctypes.create_string_buffer(size)
        attr = _ElemAttr(map_fd=fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
        ebpf_syscall._bpf(_BPF_MAP_LOOKUP_ELEM, attr)
        struct.pack_into("<Q", value, _SYN_INTERVAL_OFFSET, 0)
        ebpf_syscall._bpf(_BPF_MAP_UPDATE_ELEM, attr)
    finally:
        os.close(fd)
    return True


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
