"""Fixtures of the serial-channel tests: a short socket directory and a running server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import tests.helpers.hypothesis_home  # noqa: F401 - caches out of the work tree
from interceptor.channels.serial_server import SerialServer, SessionLimits
from tests.channels.support import FakeSource

TOKEN = "concentrator-" + "t" * 20


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # UNIX socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="ser-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def limits() -> SessionLimits:
    return SessionLimits(packet_rate=50.0, packet_burst=50, partial_timeout=0.5,
                         write_timeout=1.0, registration_timeout=0.5)


@pytest.fixture
async def server(source: FakeSource, sockdir: Path,
                 limits: SessionLimits) -> AsyncIterator[SerialServer]:
    srv = SerialServer(source, sockdir / "sock", limits=limits, socket_mode=0o600,
                       concentrator_token=TOKEN)
    try:
        yield srv
    finally:
        await srv.close()
