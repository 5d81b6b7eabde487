"""Hostile guests for the end-to-end fuzzer and attack matrix
(``tests/e2e/test_hostile_guests.py``, ``bench/hostile.py``).

Raw bytes on real sockets created inside guest namespaces (the bench's
``Namespaces``: no helper process per request), so every byte enters the
node through the guest's own tap and the real datapath. Answers are read
until the node closes (or a deadline) and split by a strict HTTP/1.1
response parser: anything the node sends that is not a well-formed
response is reported, never skipped.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from bench.netns_client import Namespaces
from tests.e2e.stack import ProductStack, product
from tests.lab import Topology, mac_of, sh

METADATA = "169.254.169.254"
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [\x20-\x7e]*\r\n")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?([\x20-\x7e]*)\r\n")


class Malformed(AssertionError):
    """The node sent bytes that are not a well-formed HTTP/1.1 response."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes, methods: list[bytes] | None = None) -> list[Answer]:
    """Every response in ``data`` (a whole connection's worth); answer *i* is to
    a request with method ``methods[i]`` (HEAD: no body) when known."""
    answers: list[Answer] = []
    pos = 0
    while pos < len(data):
        line = _STATUS_LINE.match(data, pos)
        if line is None:
            raise Malformed(f"bad status line at {pos}: {data[pos:pos + 80]!r}")
        status = int(line.group(1))
        pos = line.end()
        headers: dict[str, str] = {}
        while not data.startswith(b"\r\n", pos):
            header = _HEADER.match(data, pos)
            if header is None:
                raise Malformed(f"bad header at {pos}: {data[pos:pos + 80]!r}")
            name = header.group(1).decode().lower()
            if name in headers:
                raise Malformed(f"repeated header {name}")
            headers[name] = header.group(2).decode()
            pos = header.end()
        pos += 2
        if status == 100:
            continue
        if status in (204, 304) or (methods is not None and len(answers) < len(methods)
                                     and methods[len(answers)] == b"HEAD"):
            length = 0
        else:
            if "content-length" not in headers or not headers["content-length"].isdigit():
                raise Malformed(f"{status} without a Content-Length")
            length = int(headers["content-length"])
        if pos + length > len(data):
            raise Malformed(f"truncated body: {len(data) - pos} of {length} bytes")
        answers.append(Answer(status, headers, data[pos:pos + length]))
        pos += length
    return answers


@dataclass
class Markers:
    """Strings that exist only in one instance's data; ``private`` never reaches a guest."""

    own: str = field(default_factory=lambda: "own-" + secrets.token_hex(6))
    private: str = field(default_factory=lambda: "PRIVATE-" + secrets.token_hex(6))


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    leaks: list[str] = field(default_factory=list)

    def check(self, answers: list[Answer], forbidden: list[str], context: str,
              count: bool = True) -> None:
        if count:
            self.requests += max(1, len(answers))
        for answer in answers:
            self.statuses[answer.status] += 1
            blob = answer.body + repr(answer.headers).encode()
            for marker in forbidden:
                if marker.encode() in blob:
                    self.leaks.append(f"{context}: {marker} in a {answer.status} answer")


class GuestSockets:
    """TCP sockets from inside guest namespaces to the metadata address."""

    def __init__(self) -> None:
        self.ns = Namespaces()

    def close(self) -> None:
        self.ns.close()

    def connect(self, netns: str, *, host: str = METADATA, port: int = 80,
                source: str | None = None, timeout: float = 3.0) -> socket.socket:
        sock = self.ns.socket(netns)
        sock.setblocking(True)
        sock.settimeout(timeout)
        try:
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def exchange(self, netns: str, data: bytes, cuts: list[int] | None = None, *,
                 timeout: float = 3.0, source: str | None = None) -> bytes:
        """Send ``data`` (in pieces cut at ``cuts``), half-close, read until the
        node closes; what arrived by then (a reset counts as a close)."""
        sock = self.connect(netns, source=source, timeout=timeout)
        received = bytearray()
        try:
            start = 0
            for cut in [*(cuts or []), len(data)]:
                if cut > start:
                    sock.sendall(data[start:cut])
                    start = cut
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                received += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node refused mid-send: what it answered is in ``received``
        finally:
            sock.close()
        return bytes(received)

    def pipeline(self, netns: str, requests: list[bytes], *, source: str | None = None,
                 timeout: float = 5.0) -> list[Answer]:
        """Send ``requests`` on one connection (the last should close it) and
        parse every answer."""
        data = self.exchange(netns, b"".join(requests), timeout=timeout, source=source)
        return parse_responses(data, [r.partition(b" ")[0] for r in requests])


def request(method: str, path: str, headers: dict[str, str] | None = None, *,
            body: bytes = b"", close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {METADATA}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def node_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# -- the attack matrix ---------------------------------------------------------------------

PATHS = [
    "/latest/meta-data/instance-id", "/latest/meta-data/hostname", "/latest/meta-data/",
    "/latest/user-data", "/latest/dynamic/instance-identity/document",
    "/2009-04-04/meta-data/public-keys/", "/openstack/latest/meta_data.json",
    "/openstack/latest/user_data", "/openstack/latest/vendor_data.json",
    "/openstack/latest/network_data.json", "/openstack/latest/password",
    "/nocloud/meta-data", "/nocloud/user-data", "/nocloud/vendor-data", "/metadata",
    "/latest/meta-data/../../latest/meta-data/instance-id", "/%6catest/user-data",
    "//openstack//latest//meta_data.json", "/latest/meta-data/instance-id?instance={victim}",
    "/openstack/latest/meta_data.json;{victim}",
]


@dataclass
class Party:
    """One guest of the scene and what only its instance has."""

    netns: str
    iid: str
    ip: str
    markers: Markers
    source: str | None = None  # a spoofed source address (added to its eth0)


@dataclass
class MatrixResult:
    requests: int
    cross_reads: list[str]
    statuses: Counter[int]
    host_reached: int
    identity_errors: list[str]

    @property
    def summary(self) -> str:
        return f"cross-instance reads: {len(self.cross_reads)} of {self.requests}"


def _forged_headers(victim: Party, victim_token: str) -> list[dict[str, str]]:
    return [
        {}, {"X-Forwarded-For": victim.ip}, {"X-Real-IP": victim.ip},
        {"X-Instance-ID": victim.iid, "X-Instance-ID-Signature": "00" * 32},
        {"X-Tenant-ID": "cust-victim"}, {"Forwarded": f"for={victim.ip};by=169.254.169.254"},
        {"X-Interceptor-Instance": victim.iid, "X-Interceptor-Node": "node-a"},
        {"X-Neutron-Router-ID": "r", "X-Neutron-Network-ID": "n"},
        {"X-aws-ec2-metadata-token": victim_token},
        {"Host-Override": victim.ip},
    ]


def _host(headers: dict[str, str], victim: Party) -> bytes:
    return b"Host: " + victim.ip.encode() + b"\r\n" if "Host-Override" in headers else b""


def attack_matrix(sockets: GuestSockets, victim: Party, attackers: list[Party],
                  min_requests: int = 10_000, batch: int = 50) -> MatrixResult:
    """Forged identity and forwarding headers, the victim's own tokens,
    spoofed sources and twins (same IP and MAC on another tap), on every
    surface, until ``min_requests`` answers have been checked. Every answer
    to an attacker must be its own data or a refusal."""
    token = sockets.pipeline(victim.netns, [request(
        "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
        close=True)])[0].body.decode()
    tally = Tally()
    identity_errors: list[str] = []
    forged = _forged_headers(victim, token)
    everyone = [victim, *attackers]
    while tally.requests < min_requests:
        for attacker in attackers:
            forbidden = [p.markers.own for p in everyone if p.iid != attacker.iid]
            forbidden += [p.markers.private for p in everyone]
            reqs: list[tuple[bytes, bool]] = []
            for headers in forged:
                extra = {k: v for k, v in headers.items() if k != "Host-Override"}
                for path in PATHS:
                    path = path.format(victim=victim.iid)
                    for method in ("GET", "HEAD"):
                        raw = request(method, path, extra)
                        if "Host-Override" in headers:
                            raw = raw.replace(b"Host: 169.254.169.254\r\n", _host(headers, victim))
                        reqs.append((raw, "X-aws-ec2-metadata-token" in headers))
            for start in range(0, len(reqs), batch):
                chunk = reqs[start:start + batch]
                wire = [r for r, _ in chunk]
                wire[-1] = wire[-1].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
                try:
                    answers = sockets.pipeline(attacker.netns, wire, source=attacker.source)
                except (TimeoutError, ConnectionError, OSError):
                    tally.requests += len(chunk)  # not even answered: nothing read
                    continue
                tally.requests += len(chunk)
                for (raw, with_victim_token), answer in zip(chunk, answers, strict=False):
                    line, _, rest = raw.partition(b"\r\n")
                    tally.check([answer], forbidden, f"{attacker.iid} from {attacker.source}: "
                                f"{line.decode('latin-1')} {rest[:120]!r}", count=False)
                    if with_victim_token and answer.status != 401:
                        identity_errors.append(f"victim token gave {answer.status}")
                    if (raw.startswith(b"GET /latest/meta-data/instance-id ")
                            and answer.status == 200 and answer.body != attacker.iid.encode()):
                        identity_errors.append(f"instance-id {answer.body!r} for {attacker.iid}")
    return MatrixResult(tally.requests, tally.leaks, tally.statuses, 0, identity_errors)


def probe_host_ports(sockets: GuestSockets, netns: str, targets: list[tuple[str, int]],
                     wait: float = 2.0) -> tuple[int, int]:
    """Non-blocking connects from ``netns`` to every target at once:
    (attempts, how many connected)."""
    import select
    pending: list[socket.socket] = []
    for host, port in targets:
        sock = sockets.ns.socket(netns)
        with contextlib.suppress(BlockingIOError):
            sock.connect((host, port))
        pending.append(sock)
    connected = 0
    deadline = time.monotonic() + wait
    try:
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending, [], 0.1)
            for sock in writable:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected += 1
                sock.close()
                pending.remove(sock)
    finally:
        for sock in pending:
            sock.close()
    return len(targets), connected


# -- the scene: a victim, an attacker, a twin ------------------------------------------------

LIFTED = {"rate_limit": 0.0, "syn_rate": 100_000, "syn_burst": 100_000}
"""Node options that let a fuzzer try thousands of inputs (one connection each)."""


@dataclass
class Scene:
    stack: ProductStack
    sockets: GuestSockets
    victim: Party
    attacker: Party
    twin: Party  # same IP and MAC as the victim, on another tap
    spoofer: Party  # the attacker again, sending from the victim's address


def _instance(stack: ProductStack, iid: str, tap: str, markers: Markers) -> None:
    user_data = base64.b64encode(f"#cloud-config\n# {markers.own}\n".encode()).decode()
    stack.put_server(iid, hostname=iid.replace("i-", "h-"), ifname=tap, user_data=[
        {"name": "user", "content_type": "text/cloud-config", "data": user_data}])
    for cls in ("public", "restricted", "private"):
        value = markers.private if cls == "private" else f"{cls}-{markers.own}"
        status, body = stack.api("PUT", f"/v1/servers/{iid}/metadata/{cls}", {"mark": value})
        assert status == 200, body


def _wait_own(sockets: GuestSockets, party: Party, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, Malformed, IndexError):
            answers = sockets.pipeline(party.netns, [request(
                "GET", "/latest/meta-data/instance-id", close=True)], source=party.source,
                timeout=1.0)
            if answers[0].status == 200 and answers[0].body == party.iid.encode():
                return
        time.sleep(0.1)
    raise AssertionError(f"{party.iid} not served within {timeout}s")


@contextlib.contextmanager
def scene(node_options: Mapping[str, object]) -> Iterator[Scene]:
    """A stack with three guests: the victim, an attacker (also sending from
    the victim's address: ``spoofer``) and a twin with the victim's IP and MAC."""
    topo = Topology()
    sockets = GuestSockets()
    try:
        with product(topo, datapath="nft", node_options=node_options) as stack:
            v = topo.add_guest(ip="10.44.0.2/24")
            a = topo.add_guest(ip="10.44.0.3/24", route="gateway", gateway="10.44.0.1")
            t = topo.add_guest(ip="10.44.0.2/24", mac=mac_of(v.netns, "eth0"))
            parties = {}
            for name, guest in (("victim", v), ("attacker", a), ("twin", t)):
                markers = Markers()
                _instance(stack, f"i-hostile-{name}", guest.tap, markers)
                parties[name] = Party(guest.netns, f"i-hostile-{name}", "10.44.0.2"
                                      if name != "attacker" else "10.44.0.3", markers)
            # The attacker also claims the victim's address (and sends from it).
            sh(["ip", "addr", "add", "10.44.0.2/32", "dev", "eth0"], netns=a.netns)
            attacker = parties["attacker"]
            spoofer = Party(attacker.netns, attacker.iid, attacker.ip, attacker.markers,
                            source="10.44.0.2")
            for party in (*parties.values(), spoofer):
                _wait_own(sockets, party)
            yield Scene(stack, sockets, parties["victim"], attacker, parties["twin"], spoofer)
    finally:
        sockets.close()
        topo.close()


