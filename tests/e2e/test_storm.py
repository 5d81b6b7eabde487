"""Boot storms and backend outages (issue 5, acceptance 1 and 2).

* 50 guest namespaces crawl ~40 paths each, all at once, from a cold cache:
  the backend counts exactly one document fetch per instance
  (``interceptor_backend_documents_served_total``, read from its operator
  port; every instance needs at least one fetch to answer, so a total of 50
  means exactly one each).
* The backend is stopped while guests with warm caches keep reading: none
  of their requests fails; a guest whose document was never fetched gets
  503 with ``Retry-After``; once the backend is back a change made through
  the API reaches the guests within one cache TTL.

The guests' HTTP clients are small Python programs (``GUEST_CLIENT``), one
per guest namespace, opening a new connection per request as metadata
clients do. Everything is bounded in count and time.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence

import pytest

from tests.e2e.stack import ProductStack, get, metric, product
from tests.lab import REPO, Guest, Topology, readline

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.slow]

SYSTEM_PYTHON = "/usr/bin/python3"

CRAWL_PATHS: tuple[str, ...] = (
    "/", "/latest/", "/latest/meta-data/", "/latest/meta-data/instance-id",
    "/latest/meta-data/ami-id", "/latest/meta-data/ami-launch-index",
    "/latest/meta-data/hostname", "/latest/meta-data/local-hostname",
    "/latest/meta-data/instance-type", "/latest/meta-data/instance-action",
    "/latest/meta-data/local-ipv4", "/latest/meta-data/mac",
    "/latest/meta-data/placement/", "/latest/meta-data/placement/availability-zone",
    "/latest/meta-data/placement/region", "/latest/meta-data/public-keys/",
    "/latest/meta-data/public-keys/0/", "/latest/meta-data/public-keys/0/openssh-key",
    "/latest/meta-data/network/interfaces/macs/", "/latest/user-data",
    "/latest/dynamic/instance-identity/document", "/2009-04-04/meta-data/instance-id",
    "/2016-09-02/meta-data/instance-id", "/2018-09-24/meta-data/instance-id",
    "/2021-03-23/meta-data/instance-id", "/2021-03-23/meta-data/hostname",
    "/openstack", "/openstack/latest/meta_data.json", "/openstack/latest/user_data",
    "/openstack/latest/vendor_data.json", "/openstack/latest/vendor_data2.json",
    "/openstack/latest/network_data.json", "/openstack/2018-08-27/meta_data.json",
    "/nocloud/meta-data", "/nocloud/user-data", "/nocloud/vendor-data",
    "/metadata", "/latest/meta-data/tags/", "/openstack/latest/password",
    "/latest/meta-data/no-such-entry",
)

# A guest's metadata client: "crawl THREADS" fetches every path once (new
# connection each) when a line arrives on stdin (the common start signal);
# "loop INTERVAL" fetches the paths round robin until stdin closes (at most
# 120 s). Prints one JSON summary.
GUEST_CLIENT = r"""
import http.client, json, sys, threading, time, select
mode, paths = sys.argv[1], json.loads(sys.argv[2])
def fetch(path):
    try:
        conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, body
    except Exception as exc:
        return 0, repr(exc).encode()
if mode == "crawl":
    threads = int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    results, lock, todo = {}, threading.Lock(), list(paths)
    def worker():
        while True:
            with lock:
                if not todo:
                    return
                path = todo.pop()
            status, body = fetch(path)
            with lock:
                results[path] = [status, body.decode("utf-8", "replace")[:200]]
    began = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool: t.start()
    for t in pool: t.join()
    print(json.dumps({"started": started, "seconds": time.monotonic() - began,
                      "results": results}), flush=True)
else:
    interval = float(sys.argv[3])
    print("ready", flush=True)
    stats, failures, i = {}, [], 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([sys.stdin], [], [], 0)[0]:
            break
        path = paths[i % len(paths)]
        i += 1
        status, body = fetch(path)
        stats[str(status)] = stats.get(str(status), 0) + 1
        if status not in (200, 404):
            failures.append([round(time.time(), 3), path, status,
                             body[:200].decode("utf-8", "replace")])
        time.sleep(interval)
    print(json.dumps({"stats": stats, "failures": failures, "requests": i}), flush=True)
"""


def _client(guest: Guest, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", guest.netns, SYSTEM_PYTHON, "-I", "-c", GUEST_CLIENT, *args],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, object]:
    try:
        out, err = proc.communicate("", timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err[-2000:]
    summary: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return summary


def _documents_served(stack: ProductStack, result: str = "served") -> float:
    return metric(stack.backend_metrics(), "interceptor_backend_documents_served_total",
                  result=result)


def _create_many(stack: ProductStack, guests: Sequence[Guest], prefix: str) -> list[str]:
    stack.ensure_customer()
    ids = []
    for n, guest in enumerate(guests):
        iid = f"i-{prefix}-{n:03d}"
        key = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIStormKey{n:03d} storm{n}@example"
        status, body = stack.api("PUT", f"/v1/servers/{iid}", {
            "customer_id": "cust-e2e", "hostname": f"{prefix}-{n:03d}",
            "ssh_keys": [{"name": "storm", "key": key}],
            "user_data": [{"name": "user", "content_type": "text/cloud-config",
                           "data": "I2Nsb3VkLWNvbmZpZwo="}]})
        assert status == 201, body
        stack.bind(iid, guest.tap)
        ids.append(iid)
    return ids


def test_boot_storm_costs_one_document_fetch_per_instance(topology: Topology) -> None:
    count = 50
    with product(topology, datapath="nft") as stack:
        guests = [topology.add_guest(ip="10.40.0.2/24") for _ in range(count)]
        ids = _create_many(stack, guests, "storm")
        stack.wait_listeners(count)
        served_before = _documents_served(stack)
        revalidated_before = _documents_served(stack, "not_modified")
        assert served_before == 0, "a document was fetched before any guest asked"

        procs = [_client(g, "crawl", json.dumps(CRAWL_PATHS), "4") for g in guests]
        for proc in procs:
            assert readline(proc, 30.0).strip() == "ready"
        for proc in procs:  # go: every guest starts its crawl now
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        summaries = [_finish(p) for p in procs]
        served = _documents_served(stack) - served_before
        revalidated = _documents_served(stack, "not_modified") - revalidated_before
        node = stack.node_metrics()

    starts = [float(s["started"]) for s in summaries]  # type: ignore[arg-type]
    spread = max(starts) - min(starts)
    assert spread < 1.0, f"the crawls did not start together ({spread:.2f}s apart)"
    slowest = max(float(s["seconds"]) for s in summaries)  # type: ignore[arg-type]
    for iid, summary in zip(ids, summaries, strict=True):
        results = summary["results"]
        assert isinstance(results, dict)
        assert len(results) == len(CRAWL_PATHS)
        bad = {p: r for p, r in results.items() if r[0] not in (200, 404)}
        assert not bad, f"{iid}: {bad}"
        assert results["/latest/meta-data/instance-id"] == [200, iid]
        assert results["/latest/meta-data/no-such-entry"][0] == 404
    requests = count * len(CRAWL_PATHS)
    misses = metric(node, "interceptor_node_cache_misses_total")
    joins = metric(node, "interceptor_node_cache_singleflight_joins_total")
    syn_limited = metric(node, "interceptor_node_datapath_syn_rate_limited_packets_total")
    print(f"\nstorm: {count} guests x {len(CRAWL_PATHS)} paths = {requests} requests, "
          f"started within {spread:.2f}s, slowest crawl {slowest:.2f}s; "
          f"backend documents served {served:.0f}, "
          f"revalidated {revalidated:.0f}; node cache misses {misses:.0f}, "
          f"single-flight joins {joins:.0f}, SYNs rate-limited {syn_limited:.0f}")
    assert served == count, f"{served} document fetches for {count} instances"
    assert revalidated == 0
    assert misses == count


def _wait_served(guest: Guest, iid: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    seen: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        seen = get(guest, "/latest/meta-data/instance-id", max_time=2.0)[:2]
        if seen == (200, iid):
            return
        time.sleep(0.1)
    raise AssertionError(f"{iid} not served within {timeout}s; last answer {seen}")


def _get_headers(guest: Guest, path: str) -> tuple[int, dict[str, str], str]:
    r = guest.run(["curl", "-sS", "-i", "--max-time", "3", f"http://169.254.169.254{path}"],
                  timeout=8)
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    if not lines:
        return 0, {}, r.stderr
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def test_backend_outage_warm_guests_never_fail(topology: Topology) -> None:
    ttl = 3.0
    with product(topology, datapath="nft",
                 node_options={"cache_ttl": ttl, "stale_if_error": 300.0}) as stack:
        warm = [topology.add_guest(ip="10.41.0.2/24") for _ in range(5)]
        cold = topology.add_guest(ip="10.41.0.3/24")
        ids = _create_many(stack, [*warm, cold], "out")
        stack.wait_listeners(len(ids))
        for guest, iid in zip(warm, ids, strict=False):
            _wait_served(guest, iid)
        paths = json.dumps(CRAWL_PATHS[:20])
        loads = [_client(g, "loop", paths, "0.02") for g in warm]
        for proc in loads:
            assert readline(proc, 15.0).strip() == "ready"
        try:
            time.sleep(1.0)  # load against a healthy backend first
            stack.stop_backend()
            stopped_at = time.monotonic()
            # Past the TTL: every warm document is now served stale.
            time.sleep(ttl + 1.0)
            status, headers, body = _get_headers(cold, "/latest/meta-data/instance-id")
            assert status == 503, (status, body)
            assert int(headers.get("retry-after", "0")) > 0, headers
            assert ids[-1] not in body
            outage = time.monotonic() - stopped_at
            stack.start_backend()
            back_at = time.monotonic()
            # A change made right after the return reaches the guests within one TTL.
            status, payload = stack.api("PATCH", f"/v1/servers/{ids[0]}",
                                        {"hostname": "out-renamed"})
            assert status == 200, payload
            changed_at = time.monotonic()
            seen_after = None
            while time.monotonic() - changed_at < 3 * ttl:
                if get(warm[0], "/latest/meta-data/hostname")[:2] == (200, "out-renamed"):
                    seen_after = time.monotonic() - changed_at
                    break
                time.sleep(0.05)
            assert seen_after is not None, "the change never arrived"
            assert seen_after <= ttl, f"fresh data after {seen_after:.2f}s (TTL {ttl}s)"
            deadline = time.monotonic() + 10
            while get(cold, "/latest/meta-data/instance-id")[:2] != (200, ids[-1]):
                assert time.monotonic() < deadline, "the cold guest is not served after return"
                time.sleep(0.1)
            recovered = time.monotonic() - back_at
            time.sleep(1.0)  # and a little load against the returned backend
        finally:
            summaries = [_finish(p) for p in loads]
        stale = metric(stack.node_metrics(), "interceptor_node_cache_stale_serves_total")
    total = sum(int(s["requests"]) for s in summaries)  # type: ignore[call-overload]
    failures = [f for s in summaries for f in s["failures"]]  # type: ignore[attr-defined]
    print(f"\noutage: {total} requests from {len(warm)} warm guests over a "
          f"{outage:.1f}s outage, {len(failures)} failed, {stale:.0f} stale serves; "
          f"change visible {seen_after:.2f}s after the API call; cold guest served "
          f"{recovered:.2f}s after the backend returned")
    assert not failures, failures[:10]
    assert total > 100
    assert stale > 0


def test_stale_if_error_is_bounded(topology: Topology) -> None:
    """Stale documents are served for ``stale_if_error`` seconds past their TTL,
    then the guest gets 503 + Retry-After; the node recovers by itself."""
    ttl, stale = 1.0, 2.0
    with product(topology, datapath="nft",
                 node_options={"cache_ttl": ttl, "stale_if_error": stale}) as stack:
        guest = topology.add_guest(ip="10.42.0.2/24")
        (iid,) = _create_many(stack, [guest], "bound")
        stack.wait_listeners(1)
        _wait_served(guest, iid)
        stack.stop_backend()
        stopped = time.monotonic()
        timeline: list[tuple[float, int]] = []
        while time.monotonic() - stopped < ttl + stale + 3.0:
            status = get(guest, "/latest/meta-data/instance-id", max_time=2.0)[0]
            timeline.append((time.monotonic() - stopped, status))
            if status == 503:
                break
            time.sleep(0.1)
        status, headers, _ = _get_headers(guest, "/latest/meta-data/instance-id")
        stack.start_backend()
        back = time.monotonic()
        while get(guest, "/latest/meta-data/instance-id", max_time=2.0)[:2] != (200, iid):
            assert time.monotonic() - back < 10, "not served again after the backend returned"
            time.sleep(0.1)
        recovered = time.monotonic() - back
    first_503 = next((t for t, s in timeline if s == 503), None)
    print(f"\nstale-if-error (ttl {ttl}s + {stale}s): stale 200s until "
          f"{max(t for t, s in timeline if s == 200):.2f}s, first 503 at "
          f"{first_503}s after the stop; served again {recovered:.2f}s after the return")
    assert first_503 is not None, timeline
    assert all(s == 200 for t, s in timeline if s != 503), timeline
    assert ttl + stale - 0.5 <= first_503 <= ttl + stale + 1.5, timeline
    assert status == 503 and int(headers.get("retry-after", "0")) > 0
