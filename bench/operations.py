"""Operations figures (issue 16): restarts, kill -9, backend fail-over and a
PostgreSQL restart, measured on the real processes with the end-to-end
harness (tests/e2e/stack.py, tests/e2e/poller.py, tests/e2e/fdstore.py,
tests/backend/support.py), as the tests of the same names do.

* ``restart``: a guest polls every 10 ms (one new connection per request,
  20 s client timeout) across N ``SIGTERM`` + start cycles of a node under
  a service manager's fd store (the systemd protocol); failures counted.
* ``kill9``: time from ``kill -9`` until the guest's connection is refused
  (instead of hanging), and from the restart until the guest is served.
* ``failover``: two backends on one PostgreSQL, N guests boot at once, the
  first backend is killed 50 ms in; guest failures and document fetches.
* ``pgrestart``: writers through a backend while PostgreSQL restarts;
  acknowledged writes lost, time until writes succeed again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from bench.suites_base import Options, Row, verdict
from tests.backend.support import Api, PgServer, start_backend, stop_backend
from tests.e2e.poller import GuestPoller
from tests.e2e.stack import BACKEND_PORT, ProductStack, get, metric, product
from tests.e2e.test_storm import CRAWL_PATHS, _client, _create_many, _finish
from tests.lab import Guest, Topology, readline

RESTART_SERVE_TARGET_S = 3.0
CLIENT_TIMEOUT_S = 20.0  # the polling guest's per-request timeout


def _served_after(stack: ProductStack, guest: Guest, iid: str, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, body, _ = get(guest, "/latest/meta-data/instance-id", max_time=1.0)
        if (status, body) == (200, iid):
            return time.monotonic() - started
        time.sleep(0.02)
    raise RuntimeError(f"{iid} not served within {timeout}s")


def _restarts(datapath: str, count: int) -> Row:
    topo = Topology()
    try:
        with product(topo, datapath=datapath, fdstore=True,
                     node_options={"keep_datapath_on_exit": True}) as stack:
            assert stack.fdstore is not None
            guest = stack.add_guest()
            iid = f"i-bench-restart-{datapath}"
            stack.create_instance(iid, hostname="restart", ifname=guest.tap)
            _served_after(stack, guest, iid)
            stack.fdstore.ready.wait(30)
            gaps = []
            with GuestPoller(guest, "/latest/meta-data/instance-id", 0.01,
                             CLIENT_TIMEOUT_S) as poller:
                time.sleep(0.5)
                for _ in range(count):
                    began = time.monotonic()
                    stack.stop_node(signal.SIGTERM)
                    stack.start_node(wait_ready=False, timeout=120)  # BCC compiles
                    stack.fdstore.ready.wait(60)
                    gaps.append(time.monotonic() - began)
                    time.sleep(0.3)
                result = poller.stop()
    finally:
        topo.close()
    failures = len(result.failures)
    return Row(f"node restarts under 10 ms guest polling ({datapath})",
               f"{count} restarts, {len(result.samples)} requests, **{failures} failed**, "
               f"slowest request {result.slowest:.2f} s (restart median "
               f"{sorted(gaps)[len(gaps) // 2]:.2f} s)",
               "0 failures", verdict(failures == 0),
               {"requests": len(result.samples), "failures": failures,
                "slowest_s": result.slowest})


def _kill9(datapath: str) -> Row:
    topo = Topology()
    try:
        with product(topo, datapath=datapath) as stack:
            guest = stack.add_guest()
            iid = f"i-bench-kill-{datapath}"
            stack.create_instance(iid, hostname="kill", ifname=guest.tap)
            _served_after(stack, guest, iid)
            killed = time.monotonic()
            stack.stop_node(signal.SIGKILL)
            refused_after = None
            while time.monotonic() - killed < 10:
                r = guest.curl("http://169.254.169.254/latest/meta-data/instance-id",
                               max_time=3.0)
                took = float(r.stdout.rpartition(" ")[2] or 0)
                if r.returncode == 7 and took < 0.5:  # refused (RST), not a timeout
                    refused_after = time.monotonic() - killed
                    break
            started = time.monotonic()
            stack.start_node(wait_ready=False, timeout=120)
            _served_after(stack, guest, iid)
            serve_after = time.monotonic() - started
    finally:
        topo.close()
    refused = "never" if refused_after is None else f"{refused_after:.2f} s"
    ok = refused_after is not None and serve_after <= RESTART_SERVE_TARGET_S
    return Row(f"kill -9 of the node ({datapath})",
               f"guest refused (RST) {refused} after the kill; served again "
               f"**{serve_after:.2f} s** after the restart began",
               "fail fast; serve ≤ 3 s after start", verdict(ok),
               {"refused_s": refused_after, "serve_s": serve_after})


def _failover(guests: int) -> Row:
    pg = PgServer.start()
    topo = Topology()
    try:
        dsn = asyncio.run(pg.create_database())
        urls = [f"http://127.0.0.1:{BACKEND_PORT}", "http://127.0.0.1:8710"]
        with product(topo, datapath="nft", backend_options={"database": dsn},
                     node_options={"backend_url": urls}) as stack:
            stack.start_extra_backend("backend-b", 8710, 8711)
            members = [topo.add_guest(ip="10.42.0.2/24") for _ in range(guests)]
            _create_many(stack, members, "bfo")
            stack.wait_listeners(guests)
            procs = [_client(g, "crawl", json.dumps(CRAWL_PATHS), "4") for g in members]
            for proc in procs:
                readline(proc, 30.0)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            time.sleep(0.05)
            stack.stop_backend(signal.SIGKILL)
            summaries = [_finish(p) for p in procs]
            failed = len([r for s in summaries
                          for r in s["results"].values()  # type: ignore[attr-defined]
                          if r[0] not in (200, 404)])
            fetched = metric(stack.node_metrics(), "interceptor_node_backend_requests_total",
                             op="document", outcome="200")
    finally:
        topo.close()
        pg.stop()
    ok = failed == 0 and fetched == guests
    return Row("backend killed during a boot storm (2 backends, one PostgreSQL)",
               f"{guests} VMs x {len(CRAWL_PATHS)} paths: **{failed} guest failures**, "
               f"{fetched:.0f} document fetches", f"0 failures, {guests} fetches",
               verdict(ok), {"failures": failed, "fetches": fetched})


async def _pg_restart(seconds: float) -> Row:
    pg = PgServer.start()
    work = Path(pg.sockdir)
    try:
        dsn = await pg.create_database()
        backend = await start_backend(dsn, work / "backend.log")
        try:
            from aiohttp import ClientSession

            async with ClientSession() as session:
                api = Api(session, backend.base)
                tok = await api.customer("c1")
                await api.server("s1", "c1")
                acked: dict[str, int] = {}
                refused = 0
                stop = asyncio.Event()

                async def writer(w: int) -> None:
                    nonlocal refused
                    n = 0
                    while not stop.is_set():
                        r = await api.call("PATCH", "/v1/servers/s1/metadata/restricted", tok,
                                           json_body={f"w{w}n{n}": n})
                        if 200 <= r.status < 300:
                            acked[f"w{w}n{n}"] = n
                        else:
                            refused += 1
                            await asyncio.sleep(0.05)
                        n += 1

                tasks = [asyncio.create_task(writer(w)) for w in range(8)]
                await asyncio.sleep(seconds / 2)
                before = len(acked)
                await asyncio.to_thread(pg.restart)
                back = time.monotonic()
                while len(acked) <= before + 20 and time.monotonic() - back < 30:
                    await asyncio.sleep(0.02)
                resumed = time.monotonic() - back
                await asyncio.sleep(seconds / 2)
                stop.set()
                await asyncio.gather(*tasks)
                final = await api.call("GET", "/v1/servers/s1/metadata/restricted", tok)
                lost = sum(1 for k, v in acked.items() if final.body.get(k) != v)
        finally:
            stop_backend(backend)
    finally:
        pg.stop()
    return Row("PostgreSQL restarted under 8 writers",
               f"{len(acked)} writes acknowledged, **{lost} lost**, {refused} refused (5xx) "
               f"while it was down; writes resumed {resumed:.2f} s after it was back",
               "0 acknowledged writes lost, resumes by itself",
               verdict(lost == 0 and resumed < 30), {"acked": len(acked), "lost": lost})


async def operations(opts: Options) -> list[Row]:
    rows = []
    restarts = int(opts.pick(20, 5))
    for datapath in opts.datapaths:
        rows.append(await asyncio.to_thread(_restarts, datapath, restarts))
        rows.append(await asyncio.to_thread(_kill9, datapath))
    rows.append(await asyncio.to_thread(_failover, int(opts.pick(50, 20))))
    rows.append(await _pg_restart(opts.pick(4.0, 2.0)))
    return rows
