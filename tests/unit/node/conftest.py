"""Fixtures for the node unit tests (fakes live in node_fakes.py)."""

from __future__ import annotations

import pytest

from tests.unit.node.node_fakes import FakeClock, FakeSource, load_doc


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source() -> FakeSource:
    src = FakeSource()
    src.put(load_doc())
    return src
