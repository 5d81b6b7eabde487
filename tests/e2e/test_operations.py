"""Operations acceptance (issue 7) against the real processes.

* A real Prometheus (Debian's) inside the node namespace scrapes the node
  daemon and the backend; PromQL returns exactly the requests this test made.
* No secret (admin, node and customer tokens, the signing key, EC2 session
  tokens, request signatures) appears in any log line of either process
  during a run that exercises all of them, at debug level.
* ``/readyz`` turns unready when the datapath is removed underneath the
  daemon or the backend is unreachable with an empty cache, and ready again
  afterwards.
* SIGTERM: a long-poll in flight is answered or closed within the grace
  bound, and the daemon exits 0.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.stack import (
    BACKEND_OPERATOR_PORT,
    NODE_OPERATOR_PORT,
    ProductStack,
    get,
    product,
)
from tests.helpers.prometheus import prometheus_server
from tests.lab import PYTHON, Guest, Topology, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def _served(guest: Guest, iid: str, timeout: float = 15.0) -> list[int]:
    """Poll until the guest reads its instance id; every HTTP status it got
    on the way (0 = no HTTP answer at all)."""
    statuses = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body, _ = get(guest, "/latest/meta-data/instance-id", max_time=1.0)
        statuses.append(status)
        if (status, body) == (200, iid):
            return statuses
        time.sleep(0.05)
    raise AssertionError(f"{iid} not served within {timeout}s: {statuses[-5:]}")


def _readyz(stack: ProductStack) -> tuple[int, dict[str, Any]]:
    r = sh(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}",
            f"http://127.0.0.1:{NODE_OPERATOR_PORT}/readyz"], netns=stack.netns, check=False)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), (json.loads(body) if body.strip() else {})


def _wait_readyz(stack: ProductStack, want: Callable[[int, dict[str, Any]], bool],
                 timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status, body = _readyz(stack)
    while not want(status, body):
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz never became {what} within {timeout}s: "
                                 f"{status} {body}\n{stack.logs()[-3000:]}")
        time.sleep(0.1)
        status, body = _readyz(stack)
    return body


def _ready(status: int, body: dict[str, Any]) -> bool:
    return status == 200 and body.get("ready") is True


def _unready(status: int, body: dict[str, Any]) -> bool:
    return status == 503 and body.get("ready") is False


# -- 1. a real Prometheus counts exactly what the test did ----------------------------


def test_prometheus_scrape_counts_exactly_the_guest_requests(topology: Topology) -> None:
    with product(topology, datapath="nft") as stack:
        guest = topology.add_guest()
        iid = "i-ops-prom"
        stack.create_instance(iid, hostname="prom", ifname=guest.tap)
        statuses = _served(guest, iid)
        paths = ["/latest/meta-data/hostname", "/latest/meta-data/", "/openstack",
                 "/openstack/latest/meta_data.json", "/latest/meta-data/nope",
                 "/latest/user-data"]
        for i in range(23):
            statuses.append(get(guest, paths[i % len(paths)])[0])
        answered = [s for s in statuses if s != 0]
        not_found = answered.count(404)
        assert len(answered) >= 24 and not_found >= 6, statuses
        targets = {"node": [f"127.0.0.1:{NODE_OPERATOR_PORT}"],
                   "backend": [f"127.0.0.1:{BACKEND_OPERATOR_PORT}"]}
        with prometheus_server(targets, netns=stack.netns, scrape_interval="1s") as prom:
            up = prom.wait_for_targets_up(timeout=30)
            assert {t["labels"]["job"] for t in up} == {"node", "backend"}
            # The per-VM label is "instance_id": Prometheus's own "instance"
            # label names the scrape target.
            total = prom.wait_for_value(
                f'sum(interceptor_node_vm_requests_total{{job="node",instance_id="{iid}"}})',
                lambda v: v == len(answered), timeout=30)
            assert total == len(answered)
            by_status = prom.wait_for_value(
                'sum(interceptor_node_requests_total{job="node",status="404"})',
                lambda v: v == not_found, timeout=30)
            assert by_status == not_found
            assert prom.wait_for_value(
                'sum(interceptor_node_requests_total{job="node"})',
                lambda v: v == len(answered), timeout=30) == len(answered)
            # One cold miss, then everything from the cache: the backend sent
            # exactly one document to the node.
            assert prom.wait_for_value(
                'sum(interceptor_backend_documents_served_total{job="backend",'
                'result="served"})', lambda v: v == 1, timeout=30) == 1
            assert prom.query_value('up{job="backend"}') == 1
            assert prom.query_value('up{job="node"}') == 1


# -- 3. no secret in any log line ------------------------------------------------------


def test_no_token_key_or_signature_in_logs(topology: Topology) -> None:
    debug = {"log_level": "debug"}
    with product(topology, datapath="nft", node_options={**debug, "log_format": "json"},
                 backend_options=debug) as stack:
        guest = topology.add_guest()
        iid = "i-ops-secrets"
        stack.create_instance(iid, hostname="secrets", ifname=guest.tap,
                              user_data="#cloud-config\n")
        _served(guest, iid)
        secrets = {"admin token": stack.admin_token, "node token": stack.node_token,
                   "other node token": stack.other_node_token,
                   "signing key": stack.signing_key}
        # EC2 session tokens: issue two, use one, present a forged and a foreign one.
        for n in range(2):
            r = guest.curl("http://169.254.169.254/latest/api/token", "-X", "PUT", "-H",
                           "X-aws-ec2-metadata-token-ttl-seconds: 60")
            token, _, tail = r.stdout.rpartition("\n")
            assert tail.split()[0] == "200" and token, r.stdout
            secrets[f"ec2 token {n}"] = token
        status, body, _ = get(guest, "/latest/meta-data/instance-id",
                              f"X-aws-ec2-metadata-token: {secrets['ec2 token 0']}")
        assert (status, body) == (200, iid)
        forged = secrets["ec2 token 1"][:-4] + ("AAAA" if not secrets["ec2 token 1"]
                                                .endswith("AAAA") else "BBBB")
        secrets["forged ec2 token"] = forged
        assert get(guest, "/latest/meta-data/instance-id",
                   f"X-aws-ec2-metadata-token: {forged}")[0] == 401
        # A customer token, used; a wrong admin token and the other node's token, refused.
        created = stack.ctl("customer", "token", "cust-e2e")
        secrets["customer token"] = created["token"]
        status, _ = stack.api("GET", f"/v1/servers/{iid}", token=created["token"])
        assert status == 200
        secrets["wrong admin token"] = "f" * 31 + "e"
        assert stack.api("GET", "/v1/servers", token=secrets["wrong admin token"])[0] == 401
        status, _ = stack.api("GET", "/v1/nodes/node-a/bindings",
                              token=stack.other_node_token)
        assert status in (401, 403)
        # A change the node learns through the (signed) feed, and a guest write.
        stack.ctl("server", "set-keys", iid, "k=ssh-ed25519 AAAAC3Nza k@x")
        r = guest.curl("http://169.254.169.254/openstack/latest/password", "-X", "POST",
                       "--data-binary", "not-a-secret-password")
        assert r.stdout.rsplit("\n", 1)[1].split()[0] in ("200", "201"), r.stdout
        logs = {name: (stack.work / f"{name}.log").read_text(errors="replace")
                for name in ("backend", "node")}
    assert all(logs.values()), "both processes must have logged something"
    for proc, text in logs.items():
        lines = text.splitlines()
        assert len(lines) >= 5, f"{proc} log is nearly empty: {text!r}"
        for what, value in secrets.items():
            hits = [ln for ln in lines if value in ln]
            assert not hits, f"{what} appears in the {proc} log: {hits[0][:300]}"
        # Signatures are HMAC-SHA256 hex digests (64 hex digits) sent as a header.
        sig_lines = [ln for ln in lines if re.search(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])",
                                                      ln)
                     or "x-interceptor-signature:" in ln.lower()]
        assert not sig_lines, f"a signature-like value in the {proc} log: {sig_lines[0][:300]}"


# -- 4. readiness follows the datapath and the backend ---------------------------------


@pytest.mark.parametrize("removal", ["nft delete table", "node --cleanup"])
def test_readyz_follows_the_datapath(topology: Topology, removal: str) -> None:
    with product(topology, datapath="nft", node_options={"reconcile_interval": 2.0}) as stack:
        guest = topology.add_guest()
        iid = "i-ops-dp"
        stack.create_instance(iid, hostname="dp", ifname=guest.tap)
        _served(guest, iid)
        _wait_readyz(stack, _ready, 10, "ready")
        if removal == "nft delete table":
            sh(["nft", "delete", "table", "inet", "interceptor"], netns=stack.netns)
        else:
            sh([PYTHON, "-m", "interceptor", "node", "--cleanup", "--datapath", "nft"],
               netns=stack.netns, timeout=60)
        body = _wait_readyz(stack, _unready, 10, "unready")
        assert body["datapath"] is False
        # The daemon's periodic reconcile (every 2 s here) must put the
        # datapath back: ready again, and the guest served again.
        _wait_readyz(stack, _ready, 15, "ready again (datapath reinstalled)")
        _served(guest, iid, timeout=10)


def test_readyz_is_ready_promptly_after_start(topology: Topology) -> None:
    """Backend reachable, datapath installed: ready within seconds of start,
    not only after the first change-feed long-poll (30 s) returns."""
    with product(topology, datapath="nft") as stack:
        _wait_readyz(stack, _ready, 10, "ready after start")


@pytest.mark.slow
def test_readyz_backend_unreachable_with_empty_cache(topology: Topology) -> None:
    with product(topology, datapath="nft") as stack:
        # Up to the feed's 30 s long-poll: see test_readyz_is_ready_promptly_after_start.
        _wait_readyz(stack, _ready, 40, "ready")
        stack.stop_backend()
        body = _wait_readyz(stack, _unready, 30, "unready (backend down, cache empty)")
        assert body["backend"] is False and body["cached_documents"] == 0
        stack.start_backend()
        # The feed retries with backoff, then its first poll long-polls (30 s).
        _wait_readyz(stack, _ready, 70, "ready again (backend back)")


def test_readyz_stays_ready_on_a_usable_cache(topology: Topology) -> None:
    with product(topology, datapath="nft") as stack:
        guest = topology.add_guest()
        iid = "i-ops-cache"
        stack.create_instance(iid, hostname="cache", ifname=guest.tap)
        _served(guest, iid)
        stack.stop_backend()
        # The feed's failure is seen within its poll; readiness must not drop.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, body = _readyz(stack)
            if body.get("backend") is False:
                break
            time.sleep(0.2)
        status, body = _readyz(stack)
        assert body.get("backend") is False, body
        assert (status, body["ready"], body["cached_documents"]) == (200, True, 1), body
        assert get(guest, "/latest/meta-data/instance-id")[:2] == (200, iid)
        stack.start_backend()


# -- graceful SIGTERM -------------------------------------------------------------------


def test_sigterm_finishes_or_closes_a_longpoll_within_grace(topology: Topology) -> None:
    grace = 2.0
    with product(topology, datapath="nft", node_options={"shutdown_grace": grace}) as stack:
        guest = topology.add_guest()
        iid = "i-ops-term"
        stack.create_instance(iid, hostname="term", ifname=guest.tap)
        _served(guest, iid)
        longpoll = subprocess.Popen(
            ["ip", "netns", "exec", guest.netns, "curl", "-s", "--max-time", "60", "-w",
             "\n%{http_code}",
             "http://169.254.169.254/latest/meta-data/hostname?wait_for_change=true"
             "&timeout_sec=50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            while "interceptor_node_longpoll_waiters 1.0" not in stack.node_metrics():
                assert time.monotonic() < deadline, "the long-poll never started waiting"
                assert longpoll.poll() is None, longpoll.communicate()
                time.sleep(0.1)
            assert stack.node is not None
            node = stack.node
            started = time.monotonic()
            node.send_signal(signal.SIGTERM)
            out, _ = longpoll.communicate(timeout=grace + 10)
            client_done = time.monotonic() - started
            code = node.wait(timeout=grace + 20)
            exited = time.monotonic() - started
        finally:
            if longpoll.poll() is None:
                longpoll.kill()
                longpoll.wait(5)
        stack.node = None  # stopped here; close() must not signal it again
        assert code == 0, stack.logs()
        # Answered (200 with the unchanged value) or closed (curl: no status),
        # but never left hanging past the grace period.
        assert client_done <= grace + 1.5, f"long-poll ended {client_done:.1f}s after SIGTERM"
        body, _, status = out.rpartition("\n")
        assert status in ("200", "000"), out
        if status == "200":
            assert body == "term"
        assert exited <= grace + 10, f"daemon took {exited:.1f}s to exit"
