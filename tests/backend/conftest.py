"""Fixtures of the backend suite: stores (SQLite and a real PostgreSQL), an
in-process backend with an HTTP client, and signed node requests.

Every store-backed test runs twice, once per store (``store_kind``). The
PostgreSQL server is Debian's, started in a temporary directory as user
``postgres`` on a Unix socket only, and removed at teardown.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, test_utils

from interceptor.backend.app import create_app
from tests.backend.support import Api, PgServer, free_port, make_config, pg_bindir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = pg_bindir()
    root = tempfile.mkdtemp(prefix="interceptor-pg-")
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, log = os.path.join(root, "data"), os.path.join(root, "log")
    port = free_port()
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", data, "-A", "trust",
                    "-U", "postgres", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", data, "-l", log, "-w",
                    "-o", f"-k {root} -p {port} -c listen_addresses='' -c max_connections=200",
                    "start"], check=True, capture_output=True)
    try:
        yield PgServer(root, port)
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


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

