"""The TIME-WAIT drift, end to end on both datapaths: a plain server on
the node served the metadata address before the daemon (nginx-like, closing
first), leaving TIME-WAIT sockets of the guest's 4-tuples. nft's ``tproxy``
handles a SYN that meets one; the tc program used to assign it to nobody,
and the guest hung (curl: no answer in 5 s). tap_ingress.c,
``assign_own_socket``, has the fix and why."""

from __future__ import annotations

import json

import pytest

from tests.e2e.datapath_support import AGENT, MD, Nodes, body_and_time, steer
from tests.lab import Topology, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]


# Guest side: one request from each local port, read to the end (EOF) before closing.
SERVED_FROM = """
import json, socket, sys
bodies = []
for port in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(3)
    s.bind(("0.0.0.0", port))
    s.connect(("169.254.169.254", 80))
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    bodies.append(data.split(b"\\r\\n\\r\\n", 1)[1].decode())
print(json.dumps(bodies))
"""


def test_time_wait_of_an_earlier_server_does_not_hang_the_guest(
        topology: Topology, nodes: Nodes) -> None:
    """A plain server on the node served the metadata address before (the
    address on lo, the guest reaching it through its tap, the server closing
    first: ``Connection: close``), leaving TIME-WAIT sockets of the guest's
    4-tuples; then it stopped and the address went. The guest's next
    connections from the same ports are served at once on both datapaths."""
    guest = topology.add_guest()
    ports = list(range(40600, 40616))
    sh(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], netns=topology.node)
    sh(["ip", "route", "add", "10.0.0.2/32", "dev", guest.tap], netns=topology.node)
    plain = topology.rpc(AGENT, None)
    plain.call("host_service", "169.254.169.254", 80)
    # The client reads to the end before it closes: the server closes first,
    # so the TIME-WAIT sockets are the node's (the guest's ports stay free).
    out = guest.run(["python3", "-c", SERVED_FROM, json.dumps(ports)], timeout=60,
                    check=True).stdout
    assert json.loads(out) == ["host"] * len(ports)
    plain.call("stop_service", "169.254.169.254:80")
    sh(["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"], netns=topology.node)
    waits = sh(["ss", "-Htn", "state", "time-wait", "src", "169.254.169.254"],
               netns=topology.node).stdout
    waiting = sorted({int(line.split()[-1].rsplit(":", 1)[1]) for line in waits.splitlines()})
    assert waiting == ports, waits  # the state the bug needs

    node = nodes.start()
    steer(node, guest)
    for port in waiting:
        proc = guest.curl(MD, "--local-port", str(port), max_time=5)
        code, body, seconds = body_and_time(proc)
        assert code == 200, (port, body, proc.stderr)
        assert body.split()[:2] == [guest.tap, f"10.0.0.2:{port}"]
        assert seconds < 1.0, (port, seconds)  # no SYN retransmit, let alone a hang
