"""Fixtures for end-to-end tests: root is required (a test that cannot run
fails rather than skips), and every topology is removed after the test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab import Topology


@pytest.fixture
def topology() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, nft)")
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()
