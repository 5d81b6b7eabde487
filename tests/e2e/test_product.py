"""The walking skeleton end to end: real backend and node daemon processes,
real namespaces, veth pairs and taps, the real nft/eBPF datapath, curl as the
guest. Parameterised over both datapaths."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.stack import ProductStack, get, product
from tests.lab import Guest, Topology, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlicesKeyForTheE2eTestOnly alice@example"


@pytest.fixture(params=[("nft", "routed"), ("nft", "bridged"),
                        ("ebpf", "routed"), ("ebpf", "bridged")],
                ids=["nft-routed", "nft-bridged", "ebpf-routed", "ebpf-bridged"])
def stack(request: pytest.FixtureRequest, topology: Topology) -> Iterator[ProductStack]:
    datapath, taps = request.param
    with product(topology, datapath=datapath, taps=taps) as s:
        yield s


def _wait_served(guest: Guest, path: str = "/latest/meta-data/instance-id",
                 timeout: float = 10.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    status, body = 0, ""
    while time.monotonic() < deadline:
        status, body, _ = get(guest, path, max_time=1.0)
        if status == 200:
            return status, body
        time.sleep(0.05)
    return status, body


@pytest.mark.parametrize("route", ["onlink", "gateway"])
def test_guest_reads_its_own_metadata(stack: ProductStack, route: str) -> None:
    guest = stack.add_guest(route=route)
    stack.create_instance("i-e2e-a", hostname="vm-a", ifname=guest.tap,
                          keys={"alice": KEY_A}, user_data="#cloud-config\nhostname: vm-a\n")
    assert _wait_served(guest) == (200, "i-e2e-a")
    assert get(guest, "/latest/meta-data/hostname")[:2] == (200, "vm-a")
    assert get(guest, "/latest/meta-data/local-hostname")[:2] == (200, "vm-a")
    assert get(guest, "/latest/meta-data/public-keys/")[:2] == (200, "0=alice")
    assert get(guest, "/latest/meta-data/public-keys/0/openssh-key")[:2] == (200, KEY_A)
    assert get(guest, "/latest/user-data")[:2] == (200, "#cloud-config\nhostname: vm-a\n")
    status, listing, _ = get(guest, "/latest/meta-data/")
    assert status == 200 and "instance-id" in listing.splitlines()
    versions = get(guest, "/")[1].splitlines()
    assert "2009-04-04" in versions and "latest" in versions
    assert get(guest, "/latest/meta-data/no-such-thing")[0] == 404
    deleted = guest.curl("http://169.254.169.254/latest/meta-data/", "-X", "DELETE")
    assert deleted.stdout.rsplit("\n", 1)[1].split()[0] == "405"


def test_user_data_unset_is_404(stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.create_instance("i-e2e-nud", hostname="vm-nud", ifname=guest.tap)
    assert _wait_served(guest)[0] == 200
    assert get(guest, "/latest/user-data")[0] == 404


def test_same_ip_same_source_port_each_get_their_own(stack: ProductStack) -> None:
    g1 = stack.add_guest(ip="10.9.0.2/24")
    g2 = stack.add_guest(ip="10.9.0.2/24")
    stack.create_instance("i-e2e-one", hostname="one", ifname=g1.tap)
    stack.create_instance("i-e2e-two", hostname="two", ifname=g2.tap)
    assert _wait_served(g1)[0] == 200 and _wait_served(g2)[0] == 200
    for attempt in range(3):
        port = str(41000 + attempt)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(g.curl, "http://169.254.169.254/latest/meta-data/hostname",
                                   "--local-port", port) for g in (g1, g2)]
            results = [f.result() for f in futures]
        for r, want in zip(results, ("one", "two"), strict=True):
            body, _, tail = r.stdout.rpartition("\n")
            code, secs = tail.split()
            assert (code, body) == ("200", want)
            # A SYN that hit the other VM's socket would wait ~1 s for a retransmit.
            assert float(secs) < 0.5, f"{want}: {secs}s"


def test_spoofed_source_ip_and_mac_still_gets_own_data(stack: ProductStack) -> None:
    victim = stack.add_guest(ip="10.9.1.2/24")
    attacker = stack.add_guest(ip="10.9.1.3/24")
    stack.create_instance("i-e2e-victim", hostname="victim", ifname=victim.tap)
    stack.create_instance("i-e2e-attacker", hostname="attacker", ifname=attacker.tap)
    assert _wait_served(attacker)[0] == 200
    victim_mac = sh(["cat", "/sys/class/net/eth0/address"], netns=victim.netns).stdout.strip()
    attacker.run(["ip", "link", "set", "eth0", "down"], check=True)
    attacker.run(["ip", "link", "set", "eth0", "address", victim_mac], check=True)
    attacker.run(["ip", "link", "set", "eth0", "up"], check=True)
    attacker.run(["ip", "addr", "flush", "dev", "eth0"], check=True)
    attacker.run(["ip", "addr", "add", "10.9.1.2/24", "dev", "eth0"], check=True)
    attacker.run(["ip", "route", "replace", "169.254.169.254", "dev", "eth0"], check=True)
    assert _wait_served(attacker, "/latest/meta-data/hostname") == (200, "attacker")
    assert get(attacker, "/latest/meta-data/instance-id")[:2] == (200, "i-e2e-attacker")


def test_unbound_tap_gets_nothing_and_fails_fast(stack: ProductStack) -> None:
    bound = stack.add_guest()
    unbound = stack.add_guest()
    stack.create_instance("i-e2e-bound", hostname="bound", ifname=bound.tap)
    assert _wait_served(bound)[0] == 200
    started = time.monotonic()
    status, body, _ = get(unbound, "/latest/meta-data/instance-id", max_time=5.0)
    elapsed = time.monotonic() - started
    assert status == 0 and body == ""
    assert elapsed < 2.0, f"unbound tap took {elapsed:.2f}s to fail"


def test_guest_identity_headers_change_nothing(stack: ProductStack) -> None:
    g1 = stack.add_guest()
    g2 = stack.add_guest()
    stack.create_instance("i-e2e-h1", hostname="h1", ifname=g1.tap)
    stack.create_instance("i-e2e-h2", hostname="h2", ifname=g2.tap)
    assert _wait_served(g1)[0] == 200
    hostile = ("X-Forwarded-For: 10.9.0.99", "X-Instance-ID: i-e2e-h2",
               "X-Instance-ID-Signature: deadbeef", "X-Neutron-Router-ID: r",
               "Forwarded: for=10.9.0.99", "X-Interceptor-Instance: i-e2e-h2",
               "X-Interceptor-Node: node-a")
    status, body, _ = get(g1, "/latest/meta-data/instance-id", *hostile)
    assert (status, body) == (200, "i-e2e-h1")


def test_guest_cannot_reach_host_services(stack: ProductStack) -> None:
    guest = stack.add_guest(route="gateway")
    stack.create_instance("i-e2e-iso", hostname="iso", ifname=guest.tap)
    assert _wait_served(guest)[0] == 200
    # A host service listening on every address of the node (TCP 7070 and
    # UDP 7071), plus the backend and the node's operator port on loopback:
    # none may answer a guest, on any address the guest can name.
    service = stack.topo.rpc("tests.e2e.hostservice:HostService", 7070, 7071)
    try:
        for addr in ("169.254.169.254", guest.gateway):
            for port in (7070, 8700, 8701, 9100, 22):
                r = guest.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               "--max-time", "2", f"http://{addr}:{port}/"])
                assert r.stdout in ("000", ""), f"{addr}:{port} answered {r.stdout}"
            guest.run(["python3", "-c", "import socket; s=socket.socket(socket.AF_INET, "
                       f"socket.SOCK_DGRAM); s.sendto(b'x', ('{addr}', 7071))"])
        assert service.call("seen") == {"tcp": 0, "udp": 0}
    finally:
        service.close()


def test_garbage_closes_only_that_connection(stack: ProductStack) -> None:
    g1 = stack.add_guest()
    g2 = stack.add_guest()
    stack.create_instance("i-e2e-g1", hostname="g1", ifname=g1.tap)
    stack.create_instance("i-e2e-g2", hostname="g2", ifname=g2.tap)
    assert _wait_served(g1)[0] == 200 and _wait_served(g2)[0] == 200
    script = ("import socket,os\n"
              "s=socket.create_connection(('169.254.169.254',80),timeout=3)\n"
              "s.sendall(os.urandom(4096)+b'\\r\\n\\r\\n')\n"
              "data=s.recv(65536)\n"
              "print(len(data), s.recv(10)==b'')\n")
    r = g1.run(["python3", "-c", script], timeout=10)
    assert r.returncode == 0, r.stderr
    assert get(g2, "/latest/meta-data/hostname")[:2] == (200, "g2")
    assert get(g1, "/latest/meta-data/hostname")[:2] == (200, "g1")
    assert stack.node is not None and stack.node.poll() is None


def test_recreated_tap_is_served_only_through_its_binding(stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.create_instance("i-e2e-re", hostname="re", ifname=guest.tap)
    assert _wait_served(guest)[0] == 200
    stack.ctl("server", "unbind", "i-e2e-re")
    stack.topo.recreate_veth(guest)
    status, _, _ = get(guest, "/latest/meta-data/instance-id", max_time=2.0)
    assert status == 0, "an unbound recreated tap must not be served by leftover state"
    stack.ctl("server", "bind", "i-e2e-re", "--node", stack.node_name, "--ifname", guest.tap)
    assert _wait_served(guest) == (200, "i-e2e-re")


def _kernel_state(netns: str) -> dict[str, str]:
    rules = sh(["ip", "rule", "list"], netns=netns).stdout
    return {
        "tables": sh(["nft", "list", "tables"], netns=netns).stdout.strip(),
        "rules": "\n".join(r for r in rules.splitlines()
                           if not r.startswith(("0:", "32766:", "32767:"))),
        "routes": sh(["ip", "route", "show", "table", "all"], netns=netns).stdout,
        "listeners": sh(["ss", "-Hltn", "sport", "=", ":80"], netns=netns).stdout.strip(),
        "filters": sh(["tc", "filter", "show", "dev", "lo", "ingress"], netns=netns,
                      check=False).stdout.strip(),
    }


def _assert_clean(stack: ProductStack) -> None:
    state = _kernel_state(stack.netns)
    assert state["tables"] == "", state["tables"]
    assert state["rules"] == "", state["rules"]
    assert "table 4711" not in state["routes"], state["routes"]
    assert state["listeners"] == "", state["listeners"]
    for guest in stack.topo.guests:
        tc = sh(["tc", "filter", "show", "dev", guest.tap, "ingress"], netns=stack.netns,
                check=False).stdout.strip()
        assert tc == "", tc
    pins = sh(["ls", "-A", stack.pin_dir], check=False)
    assert pins.returncode != 0 or pins.stdout.strip() == "", pins.stdout


def test_sigterm_removes_everything(stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.create_instance("i-e2e-term", hostname="term", ifname=guest.tap)
    assert _wait_served(guest)[0] == 200
    assert _kernel_state(stack.netns)["listeners"] != ""
    assert stack.stop_node(signal.SIGTERM) == 0, stack.logs()
    _assert_clean(stack)


def test_cleanup_after_kill_removes_everything(stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.create_instance("i-e2e-kill", hostname="kill", ifname=guest.tap)
    assert _wait_served(guest)[0] == 200
    stack.stop_node(signal.SIGKILL)
    assert _kernel_state(stack.netns)["tables"] != "" or stack.datapath == "ebpf"
    r = sh([*_interceptor(), "node", "--cleanup", "--datapath", stack.datapath,
            "--bpf-instance", stack.bpf_instance], netns=stack.netns, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    _assert_clean(stack)


def _interceptor() -> list[str]:
    from tests.lab import PYTHON

    return [PYTHON, "-m", "interceptor"]


def test_metrics_count_guest_requests(stack: ProductStack) -> None:
    guest = stack.add_guest()
    stack.create_instance("i-e2e-met", hostname="met", ifname=guest.tap)
    assert _wait_served(guest)[0] == 200
    for _ in range(5):
        assert get(guest, "/latest/meta-data/hostname")[0] == 200
    text = stack.node_metrics()
    lines = [ln for ln in text.splitlines()
             if ln.startswith("interceptor_node_requests_total{") and 'status="200"' in ln]
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in lines) >= 6, text[:2000]
    assert json.loads(sh(["curl", "-s", "http://127.0.0.1:9100/readyz"],
                         netns=stack.netns).stdout)["ready"] is True

