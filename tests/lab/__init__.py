"""The lab: namespaces, links, guests and helper processes for every test
that touches the kernel, and for the bench (``bench/``). One place, so a
name is made unique, a namespace entered and a metric read the same way
everywhere.

* ``netns``: unique names, ``sh``/``ip``, entering and making namespaces, taps.
* ``topology``: a node namespace with guests (veth, real tap, bridge port).
* ``rpc``: Python objects run inside a namespace (``NetnsRpc``), tap pumps.
* ``metrics``: Prometheus text exposition, summed by name and labels.
"""

from tests.lab.metrics import metric_sum
from tests.lab.netns import (
    PYTHON,
    REPO,
    entered_netns,
    ifindex,
    ip,
    mac_of,
    netns,
    random_mac,
    setns,
    setns_fd,
    sh,
    tap_device,
    unique,
)
from tests.lab.rpc import NetnsRpc, RpcError, readline, stderr_tail, stop, terminate
from tests.lab.topology import Guest, Topology, topology

__all__ = [
    "PYTHON", "REPO", "Guest", "NetnsRpc", "RpcError", "Topology", "entered_netns",
    "ifindex", "ip", "mac_of", "metric_sum", "netns", "random_mac", "readline", "setns",
    "setns_fd", "sh", "stderr_tail", "stop", "tap_device", "terminate", "topology",
    "unique",
]
