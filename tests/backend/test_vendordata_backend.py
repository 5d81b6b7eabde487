"""Vendor data through the backend: static files and a real dynamic target on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, test_utils, web

from interceptor.backend.app import create_app
from tests.backend.support import Api, PgServer, make_config


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), **body})
        return web.json_response({"greeting": f"hello {body['hostname']}"})

    app = web.Application()
    app.router.add_post("/vd", handler)
    server = test_utils.TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/vd")), seen
    finally:
        await server.close()


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_vendor_data_in_documents(database: str, tmp_path: Path,
                                        target: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = target
    static = tmp_path / "vendor.json"
    static.write_text(json.dumps({"cloud": "example"}))
    cfg = make_config(database, vendordata_static_files=[str(static)],
                      vendordata_dynamic_targets=[f"greeter@{url}",
                                                  "broken@http://127.0.0.1:9/x"],
                      vendordata_service_token="svc-token", vendordata_connect_timeout=1.0,
                      vendordata_read_timeout=1.0)
    server = test_utils.TestServer(create_app(cfg))
    await server.start_server()
    try:
        async with ClientSession() as session:
            api = Api(session, str(server.make_url("")).rstrip("/"))
            await api.customer("c1")
            await api.server("s1", "c1")
            await api.call("PATCH", "/v1/servers/s1/metadata/public", json_body={"m": "1"})
            doc = await api.document("s1")
            assert doc["vendor_data"]["static"] == {"cloud": "example"}
            assert doc["vendor_data"]["dynamic"] == {"greeter": {"greeting": "hello s1"}}
            assert seen[-1]["project-id"] == "c1" and seen[-1]["instance-id"] == "s1"
            assert seen[-1]["metadata"] == {"m": "1"}
            assert seen[-1]["auth"] == "Bearer svc-token"
            calls = len(seen)
            await api.document("s1")
            assert len(seen) == calls  # cached per instance
            await api.call("PATCH", "/v1/servers/s1", json_body={"hostname": "renamed"})
            doc = await api.document("s1")  # the change invalidated the cache
            assert doc["vendor_data"]["dynamic"]["greeter"] == {"greeting": "hello renamed"}
    finally:
        await server.close()


async def test_unreadable_static_file_is_a_config_error(tmp_path: Path) -> None:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "interceptor.backend.cli",
                        "--database", f"sqlite://{tmp_path}/db.sqlite",
                        "--vendordata-static-files", str(tmp_path / "missing.json"),
                        "--operator-port", "0", "--listen-port", "0"],
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert "missing.json" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.postgres
async def test_change_through_one_process_refreshes_vendor_data_in_another(
        pg_server: PgServer, target: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = target
    dsn = await pg_server.create_database()
    cfg = make_config(dsn, vendordata_dynamic_targets=[f"greeter@{url}"],
                      vendordata_ttl=3600.0)
    one, two = (test_utils.TestServer(create_app(cfg)), test_utils.TestServer(create_app(cfg)))
    await one.start_server()
    await two.start_server()
    try:
        async with ClientSession() as session:
            api1 = Api(session, str(one.make_url("")).rstrip("/"))
            api2 = Api(session, str(two.make_url("")).rstrip("/"))
            await api1.customer("c1")
            await api1.server("s1", "c1")
            doc = await api2.document("s1")
            assert doc["vendor_data"]["dynamic"]["greeter"] == {"greeting": "hello s1"}
            await api1.call("PATCH", "/v1/servers/s1", json_body={"hostname": "moved"})
            for _ in range(100):  # the NOTIFY reaches process two asynchronously
                doc = await api2.document("s1")
                if doc["hostname"] == "moved" and \
                        doc["vendor_data"]["dynamic"]["greeter"]["greeting"] == "hello moved":
                    break
                await asyncio.sleep(0.02)
            assert doc["vendor_data"]["dynamic"]["greeter"] == {"greeting": "hello moved"}
    finally:
        await two.close()
        await one.close()
