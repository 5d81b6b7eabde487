"""Fixtures of the backend suite: stores (SQLite and a real PostgreSQL), an
in-process backend with an HTTP client, and signed node requests.

Every store-backed test runs twice, once per store (``store_kind``). The
PostgreSQL server is Debian's, started in a temporary directory as user
``postgres`` on a Unix socket only, and removed at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, test_utils

from interceptor.backend.app import create_app
from tests.backend.support import Api, PgServer, make_config


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database(store_kind: str, tmp_path: Path,
                   request: pytest.FixtureRequest) -> str:
    if store_kind == "sqlite":
        return f"sqlite://{tmp_path}/backend.sqlite"
    server: PgServer = request.getfixturevalue("pg_server")
    return await server.create_database()


@pytest.fixture
async def api(database: str) -> AsyncIterator[Api]:
    app = create_app(make_config(database))
    server = test_utils.TestServer(app)
    await server.start_server()
    try:
        async with ClientSession() as session:
            yield Api(session, str(server.make_url("")).rstrip("/"), app)
    finally:
        await server.close()

