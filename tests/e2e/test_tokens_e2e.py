"""EC2 session tokens (IMDSv2) end to end (issue 4, acceptance 3).

Real backend and node daemon, nft datapath, curl in guest namespaces. Every
status code of the token protocol, expiry, a token of instance A refused on
instance B, the per-instance "require tokens" mode, and the IP TTL of the
token response as it arrives at the guest (captured with an AF_PACKET socket
inside the guest namespace): 1 for the segment carrying the token, the
default for ordinary responses.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.stack import ProductStack, get, metric, product
from tests.lab import PYTHON, REPO, Guest, Topology, readline

pytestmark = [pytest.mark.root, pytest.mark.e2e]

TOKEN_URL = "http://169.254.169.254/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


@dataclass
class Tokens:
    stack: ProductStack
    a: Guest
    b: Guest
    required: Guest  # its instance requires tokens


def _wait_status(guest: Guest, wanted: tuple[int, ...], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        status = get(guest, "/latest/meta-data/instance-id", max_time=1.0)[0]
        if status in wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"{guest.netns}: status {status}, wanted {wanted}")


@pytest.fixture(scope="module")
def tokens() -> Iterator[Tokens]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, nft)")
    topo = Topology()
    try:
        with product(topo, datapath="nft") as stack:
            a = topo.add_guest(ip="10.30.0.2/24")
            b = topo.add_guest(ip="10.30.0.3/24", route="gateway", gateway="10.30.0.1")
            required = topo.add_guest(ip="10.30.0.4/24")
            stack.put_server("i-tok-a", hostname="tok-a", ifname=a.tap)
            stack.put_server("i-tok-b", hostname="tok-b", ifname=b.tap)
            stack.put_server("i-tok-req", hostname="tok-req", ifname=required.tap,
                             require_token=True, user_data=[
                                 {"name": "user", "content_type": "text/plain",
                                  "data": "c2VjcmV0IHVzZXItZGF0YQo="}])
            _wait_status(a, (200,))
            _wait_status(b, (200,))
            _wait_status(required, (401,))
            yield Tokens(stack, a, b, required)
    finally:
        topo.close()


def put_token(guest: Guest, *headers: str, url: str = TOKEN_URL) -> tuple[int, str]:
    extra = ["-X", "PUT"]
    for h in headers:
        extra += ["-H", h]
    r = guest.curl(url, *extra)
    body, _, tail = r.stdout.rpartition("\n")
    return int(tail.split()[0] or 0), body


def token_for(guest: Guest, ttl: int = 60) -> str:
    status, token = put_token(guest, f"{TTL_HEADER}: {ttl}")
    assert status == 200 and token, (status, token)
    return token


@pytest.mark.parametrize("ttl", ["1", "60", "21600"])
def test_valid_ttls_give_a_token(tokens: Tokens, ttl: str) -> None:
    status, token = put_token(tokens.a, f"{TTL_HEADER}: {ttl}")
    assert status == 200 and len(token) > 20
    assert get(tokens.a, "/latest/meta-data/instance-id",
               f"{TOKEN_HEADER}: {token}")[:2] == (200, "i-tok-a")


@pytest.mark.parametrize("ttl", [None, "0", "21601", "-1", "abc", "1.5", ""])
def test_missing_or_invalid_ttl_is_400(tokens: Tokens, ttl: str | None) -> None:
    headers = () if ttl is None else (f"{TTL_HEADER}: {ttl}",)
    if ttl == "":
        headers = (f"{TTL_HEADER};",)  # curl's syntax for an empty header
    assert put_token(tokens.a, *headers)[0] == 400


def test_token_put_through_a_proxy_is_refused(tokens: Tokens) -> None:
    status, body = put_token(tokens.a, f"{TTL_HEADER}: 60", "X-Forwarded-For: 10.30.0.99")
    assert status == 403 and "." not in body.strip()  # no token in the answer


@pytest.mark.parametrize("version", ["2021-03-23", "2009-04-04", "2016-09-02"])
def test_versioned_token_path_is_refused(tokens: Tokens, version: str) -> None:
    status, body = put_token(tokens.a, f"{TTL_HEADER}: 60",
                             url=f"http://169.254.169.254/{version}/api/token")
    assert status == 403 and "." not in body.strip()


def test_get_of_the_token_path_is_405(tokens: Tokens) -> None:
    assert get(tokens.a, "/latest/api/token")[0] == 405


@pytest.mark.parametrize("bad", ["garbage", "AAAA.BBBB", "x" * 200])
def test_invalid_token_is_401(tokens: Tokens, bad: str) -> None:
    assert get(tokens.a, "/latest/meta-data/instance-id", f"{TOKEN_HEADER}: {bad}")[0] == 401


def test_tampered_token_is_401(tokens: Tokens) -> None:
    token = token_for(tokens.a)
    payload, _, mac = token.partition(".")
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    assert get(tokens.a, "/latest/meta-data/instance-id",
               f"{TOKEN_HEADER}: {payload}.{flipped}")[0] == 401


def test_expired_token_is_401(tokens: Tokens) -> None:
    token = token_for(tokens.a, ttl=1)
    assert get(tokens.a, "/latest/meta-data/hostname", f"{TOKEN_HEADER}: {token}")[:2] == \
        (200, "tok-a")
    time.sleep(2.0)  # the token's own lifetime is the event we wait for
    assert get(tokens.a, "/latest/meta-data/hostname", f"{TOKEN_HEADER}: {token}")[0] == 401


def test_token_of_instance_a_is_refused_on_instance_b(tokens: Tokens) -> None:
    token_a = token_for(tokens.a)
    assert get(tokens.a, "/latest/meta-data/instance-id", f"{TOKEN_HEADER}: {token_a}")[:2] \
        == (200, "i-tok-a")
    assert get(tokens.b, "/latest/meta-data/instance-id", f"{TOKEN_HEADER}: {token_a}")[0] \
        == 401
    token_b = token_for(tokens.b)
    assert get(tokens.b, "/latest/meta-data/instance-id", f"{TOKEN_HEADER}: {token_b}")[:2] \
        == (200, "i-tok-b")
    rejected = metric(tokens.stack.node_metrics(), "interceptor_node_tokens_rejected_total",
                      reason="bad_signature")
    assert rejected >= 1


@pytest.mark.parametrize("path", ["/latest/meta-data/instance-id", "/latest/user-data",
                                  "/openstack/latest/meta_data.json", "/nocloud/meta-data",
                                  "/metadata"])
def test_required_mode_refuses_tokenless_reads(tokens: Tokens, path: str) -> None:
    status, body, _ = get(tokens.required, path)
    assert status == 401 and "tok-req" not in body and "i-tok-req" not in body
    token = token_for(tokens.required)
    status, body, _ = get(tokens.required, path, f"{TOKEN_HEADER}: {token}")
    assert status == 200
    if path.endswith("instance-id"):
        assert body == "i-tok-req"


# -- the IP TTL of token responses, seen by the guest -----------------------------------

SNIFFER = r"""
import json, select, socket, struct, sys, time
ETH_P_ALL = 0x0003
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
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
        if addr[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6 or socket.inet_ntoa(ip[12:16]) != "169.254.169.254":
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport = struct.unpack("!H", tcp[0:2])[0]
        payload = tcp[(tcp[12] >> 4) * 4:]
        seen.append({"ttl": ip[8], "sport": sport, "flags": tcp[13],
                     "payload": payload.decode("latin-1")})
print(json.dumps(seen), flush=True)
"""


def _capture(guest: Guest, action: object) -> list[dict[str, object]]:
    """Packets from 169.254.169.254 received by the guest while ``action()`` runs."""
    proc = subprocess.Popen(["ip", "netns", "exec", guest.netns, PYTHON, "-c", SNIFFER,
                             guest.ifname], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert readline(proc, 10.0).strip() == "ready"
        assert callable(action)
        action()
        time.sleep(0.2)  # let the last segments arrive before the capture stops
        out, err = proc.communicate("", timeout=10)
        assert proc.returncode == 0, err
        packets: list[dict[str, object]] = json.loads(out.strip().splitlines()[-1])
        return packets
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("which", ["onlink", "gateway"])
def test_token_response_leaves_with_ttl_1(tokens: Tokens, which: str) -> None:
    guest = tokens.a if which == "onlink" else tokens.b
    iid = "i-tok-a" if which == "onlink" else "i-tok-b"
    got: dict[str, str] = {}

    def action() -> None:
        got["token"] = token_for(guest, ttl=300)
        status, body, _ = get(guest, "/latest/meta-data/instance-id",
                              f"{TOKEN_HEADER}: {got['token']}")
        assert (status, body) == (200, iid)

    packets = _capture(guest, action)
    token = got["token"]
    carrying = [p for p in packets if token in str(p["payload"])]
    normal = [p for p in packets if iid in str(p["payload"])
              and str(p["payload"]).startswith("HTTP/1.1 200")]
    assert carrying, f"no captured segment carries the token: {packets}"
    assert normal, f"no captured segment carries the instance id: {packets}"
    assert {p["ttl"] for p in carrying} == {1}, carrying
    assert {p["ttl"] for p in normal} == {64}, normal
    # The handshake of the token connection is not affected either.
    synacks = [p for p in packets if p["flags"] == 0x12]
    assert synacks and {p["ttl"] for p in synacks} == {64}
    print(f"captured TTLs: token segment {[p['ttl'] for p in carrying]}, "
          f"normal response {[p['ttl'] for p in normal]}, "
          f"SYN-ACK {[p['ttl'] for p in synacks]}")
