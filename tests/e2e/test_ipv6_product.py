"""IPv6 through the product (backend + node daemon, both datapaths): a guest
with no IPv4 address at all reads its instance id from ``[fd00:ec2::254]``
and ``[fe80::a9fe:a9fe%eth0]``, gets an EC2 token over IPv6 whose response
segment arrives with hop limit 1 (captured in the guest with an AF_PACKET
socket), and a node configured with ``metadata_address6 = []`` serves no
IPv6 at all."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.datapath_support import EC2, LL, url, v6_guest, wait_no_tentative
from tests.e2e.stack import ProductStack, product
from tests.lab import PYTHON, REPO, Guest, Topology, readline, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

TOKEN_HEADER = "X-aws-ec2-metadata-token"

SNIFFER6 = r"""
import json, select, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
seen = []
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    ready, _, _ = select.select([s, sys.stdin], [], [], 0.5)
    if sys.stdin in ready:
        break
    if s in ready:
        frame, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x86\xdd":
            continue
        ip = frame[14:]
        if ip[6] != 6:
            continue
        src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
        tcp = ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
        payload = tcp[(tcp[12] >> 4) * 4:]
        seen.append({"hops": ip[7], "src": src, "payload": payload.decode("latin-1")})
print(json.dumps(seen), flush=True)
"""


@pytest.fixture(params=["nft", "ebpf"])
def stack(request: pytest.FixtureRequest) -> Iterator[tuple[ProductStack, Topology]]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, nft)")
    topo = Topology()
    try:
        with product(topo, datapath=request.param) as s:
            yield s, topo
    finally:
        topo.close()


def _read(guest: Guest, address: str, path: str, *extra: str) -> tuple[int, str]:
    r = guest.curl(url(address, guest).replace("/latest/meta-data/", path), *extra)
    body, _, tail = r.stdout.rpartition("\n")
    return int(tail.split()[0] or 0), body


def _wait(guest: Guest, address: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _read(guest, address, "/latest/meta-data/instance-id")[0] == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{guest.netns} not served over {address}")


def test_ipv6_only_guests_read_their_own_data(stack: tuple[ProductStack, Topology]) -> None:
    s, topo = stack
    a = v6_guest(topo, mode="ll")
    b = v6_guest(topo, mode="global", address="2001:db8:6::2/64")
    assert not a.run(["ip", "-4", "addr", "show", "dev", a.ifname]).stdout  # no IPv4
    s.put_server("i-v6-a", hostname="v6-a", ifname=a.tap)
    s.put_server("i-v6-b", hostname="v6-b", ifname=b.tap)
    wait_no_tentative(topo, a, b)
    for guest, iid in ((a, "i-v6-a"), (b, "i-v6-b")):
        _wait(guest, EC2)
        for address in (EC2, LL):
            assert _read(guest, address, "/latest/meta-data/instance-id") == (200, iid)
        status, body = _read(guest, LL, "/openstack/latest/meta_data.json")
        assert status == 200 and json.loads(body)["uuid"] == iid


def test_tap_down_and_up_is_served_over_ipv6_again(
        stack: tuple[ProductStack, Topology]) -> None:
    """The kernel drops a link's IPv6 routes (the per-tap link-local route
    among them) when it goes down and refuses them while it is down: the
    node re-adds them when the tap comes back up."""
    s, topo = stack
    guest = v6_guest(topo, mode="ll")
    s.put_server("i-v6-updown", hostname="v6-updown", ifname=guest.tap)
    wait_no_tentative(topo, guest)
    _wait(guest, LL)
    sh(["ip", "link", "set", guest.tap, "down"], netns=topo.node)
    assert _read(guest, LL, "/latest/meta-data/instance-id", "--max-time", "1")[0] != 200
    sh(["ip", "link", "set", guest.tap, "up"], netns=topo.node)
    wait_no_tentative(topo, guest)
    _wait(guest, LL, timeout=5.0)
    assert _read(guest, LL, "/latest/meta-data/instance-id") == (200, "i-v6-updown")


def test_token_response_over_ipv6_leaves_with_hop_limit_1(
        stack: tuple[ProductStack, Topology]) -> None:
    s, topo = stack
    guest = v6_guest(topo, mode="ll")
    s.put_server("i-v6-tok", hostname="v6-tok", ifname=guest.tap)
    wait_no_tentative(topo, guest)
    _wait(guest, EC2)
    proc = subprocess.Popen(["ip", "netns", "exec", guest.netns, PYTHON, "-c", SNIFFER6,
                             guest.ifname], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert readline(proc, 10.0).strip() == "ready"
        status, token = _read(guest, EC2, "/latest/api/token", "-X", "PUT", "-H",
                              "X-aws-ec2-metadata-token-ttl-seconds: 60")
        assert status == 200 and token
        status, iid = _read(guest, EC2, "/latest/meta-data/instance-id", "-H",
                            f"{TOKEN_HEADER}: {token}")
        assert (status, iid) == (200, "i-v6-tok")
        time.sleep(0.2)
        out, _ = proc.communicate("", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    packets = json.loads(out.strip().splitlines()[-1])
    carrying = [p for p in packets if token in p["payload"]]
    normal = [p for p in packets if "i-v6-tok" in p["payload"]]
    assert carrying and normal, packets
    assert all(p["src"] == EC2 for p in carrying + normal)
    assert {p["hops"] for p in carrying} == {1}
    assert all(p["hops"] > 1 for p in normal)
    print(f"IPv6 hop limits: token {[p['hops'] for p in carrying]}, "
          f"ordinary {[p['hops'] for p in normal]}")


def test_ipv6_turned_off_serves_no_ipv6() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, nft)")
    topo = Topology()
    try:
        with product(topo, node_options={"metadata_address6": []}) as s:
            v4 = topo.add_guest(ip="10.40.0.2/24")
            v6 = v6_guest(topo, mode="ll")
            s.put_server("i-v4", hostname="v4", ifname=v4.tap)
            s.put_server("i-v6", hostname="v6", ifname=v6.tap)
            wait_no_tentative(topo, v6)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                r = v4.curl("http://169.254.169.254/latest/meta-data/instance-id", max_time=1)
                if r.stdout.startswith("i-v4"):
                    break
                time.sleep(0.2)
            assert r.stdout.startswith("i-v4"), r.stdout
            for address in (EC2, LL):
                r = v6.curl(url(address, v6), max_time=2)
                assert r.returncode != 0 and "i-v6" not in r.stdout, (address, r.stdout)
    finally:
        topo.close()
