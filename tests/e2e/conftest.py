"""Fixtures for end-to-end tests: root is required (a test that cannot run
fails rather than skips), every topology is removed after the test, and
``nodes`` runs a datapath test once per datapath (datapath_support.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.datapath_support import DATAPATHS, HOST_PORT, Nodes
from tests.lab import NetnsRpc, Topology


@pytest.fixture
def topology() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, nft)")
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()


@pytest.fixture(params=DATAPATHS)
def nodes(request: pytest.FixtureRequest, topology: Topology) -> Iterator[Nodes]:
    """Starts nodes of one datapath kind (each test runs once per kind);
    removes what they left in the kernel afterwards."""
    started = Nodes(topology, request.param)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def node(nodes: Nodes) -> NetnsRpc:
    """A node of the parametrised kind, guests allowed to ``HOST_PORT`` on it."""
    return nodes.start(input_allow_tcp=[HOST_PORT])
