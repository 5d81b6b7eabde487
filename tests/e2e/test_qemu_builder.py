"""The QEMU test guest boots on a tap and fetches from 169.254.169.254:80.

The tap's host side holds 169.254.169.254/32 (and the guest subnet's first
address) inside a private netns, where a small HTTP server listens; no
interceptor code is involved: this proves the guest tooling other tests use.
"""

from __future__ import annotations

import json
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.guest import boot_guest, boot_guest_async, build_guest
from tests.lab import ip, netns, random_mac, tap_device

pytestmark = [pytest.mark.qemu, pytest.mark.root, pytest.mark.e2e, pytest.mark.slow]

FIXTURE_SERVER = Path(__file__).parents[1] / "guest" / "http_fixture.py"
BOOT_TIMEOUT = 90.0


@contextmanager
def http_server(ns: str, routes: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(FIXTURE_SERVER),
         "169.254.169.254", "80", json.dumps(routes)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "READY", f"fixture server did not start: {line!r}"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def guest_link() -> Iterator[tuple[str, str]]:
    with netns() as ns, tap_device(ns) as tap:
        ip("addr", "add", "10.0.0.1/24", "dev", tap, netns=ns)
        ip("addr", "add", "169.254.169.254/32", "dev", tap, netns=ns)
        yield ns, tap


def served_log(proc: subprocess.Popen[str]) -> list[str]:
    proc.kill()
    out, _ = proc.communicate(timeout=10)
    return [line for line in out.splitlines() if line.startswith("REQ ")]


def test_guest_fetches_paths_over_onlink_route_with_token() -> None:
    assert build_guest().initrd.stat().st_size > 0
    iid = "i-" + secrets.token_hex(8)
    hostname = "vm-" + secrets.token_hex(4)
    token = secrets.token_urlsafe(24)
    routes = {"/latest/meta-data/instance-id": iid,
              "/latest/meta-data/hostname": hostname + "\nsecond line",
              "/q?a=1&b=2": "query " + iid,
              "__token__": token}
    with guest_link() as (ns, tap), http_server(ns, routes) as server:
        result = boot_guest(ns, tap, random_mac(),
                            {"ip": "10.0.0.2/24", "route": "onlink", "token": 60,
                             "paths": ["/latest/meta-data/instance-id",
                                       "/latest/meta-data/hostname",
                                       "/latest/meta-data/missing", "/q?a=1&b=2"]},
                            timeout=BOOT_TIMEOUT)
        log = served_log(server)
    assert result.completed, result.tail()
    assert result.net_ok, result.net_detail
    put = result.response("/latest/api/token", "PUT")
    assert (put.status, put.body) == (200, token.encode())
    got = result.response("/latest/meta-data/instance-id")
    assert (got.status, got.body) == (200, iid.encode())
    assert got.headers["x-token-seen"] == "yes"
    assert result.body("/latest/meta-data/hostname") == (hostname + "\nsecond line").encode()
    assert result.response("/latest/meta-data/missing").status == 404
    assert result.body("/q?a=1&b=2") == ("query " + iid).encode()
    # Requests came from the guest's address, in the order the guest made them.
    assert log == ["REQ PUT /latest/api/token 10.0.0.2",
                   "REQ GET /latest/meta-data/instance-id 10.0.0.2",
                   "REQ GET /latest/meta-data/hostname 10.0.0.2",
                   "REQ GET /latest/meta-data/missing 10.0.0.2",
                   "REQ GET /q?a=1&b=2 10.0.0.2"]


async def test_guest_boot_time_over_default_route_async() -> None:
    iid = "i-" + secrets.token_hex(8)
    with guest_link() as (ns, tap), http_server(ns, {"/x": iid}):
        started = time.monotonic()
        result = await boot_guest_async(ns, tap, random_mac(),
                            {"ip": "10.0.0.7/24", "gw": "10.0.0.1", "route": "default",
                             "http": "1.1", "paths": ["/x"]},
                            timeout=BOOT_TIMEOUT)
        wall = time.monotonic() - started
    assert result.completed, result.tail()
    assert result.body("/x") == iid.encode()
    assert result.init_uptime is not None and result.done_uptime is not None
    # Recorded for the report; bounded loosely because TCG speed varies with load.
    print(f"guest: userspace at {result.init_uptime:.2f}s guest uptime, "
          f"done at {result.done_uptime:.2f}s, whole run {wall:.2f}s wall")
    assert wall < 60
