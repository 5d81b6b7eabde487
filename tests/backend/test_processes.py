"""Real backend processes: durability across kill -9, PostgreSQL scale-out, CLI, signals."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from tests.backend.support import (
    ADMIN,
    Api,
    BackendProcess,
    PgServer,
    start_backend,
    stop_backend,
)


async def _with(backend: BackendProcess) -> tuple[ClientSession, Api]:
    session = ClientSession()
    return session, Api(session, backend.base)


async def test_kill_9_after_2xx_loses_nothing(database: str, tmp_path: Path) -> None:
    log = tmp_path / "backend.log"
    backend = await start_backend(database, log)
    try:
        session, api = await _with(backend)
        async with session:
            await api.customer("c1")
            await api.server("s1", "c1")
            statuses = []
            for i in range(15):
                r = await api.call("PATCH", "/v1/servers/s1/metadata/public",
                                   json_body={f"k{i}": i})
                statuses.append(r.status)
            r = await api.call("POST", "/v1/servers/s1/start")
            statuses.append(r.status)
            backend.proc.send_signal(signal.SIGKILL)  # right after the last 2xx
            backend.proc.wait(10)
        assert statuses == [200] * 16
    finally:
        stop_backend(backend)
    again = await start_backend(database, log)
    try:
        session, api = await _with(again)
        async with session:
            r = await api.call("GET", "/v1/servers/s1/metadata/public")
            assert r.body == {f"k{i}": i for i in range(15)}
            assert (await api.call("GET", "/v1/servers/s1")).body["running"] is True
    finally:
        stop_backend(again)


async def _metric(session: ClientSession, backend: BackendProcess, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{backend.operator_port}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.postgres
async def test_two_processes_on_postgres_wake_each_other(pg_server: PgServer,
                                                         tmp_path: Path) -> None:
    dsn = await pg_server.create_database()
    a = await start_backend(dsn, tmp_path / "a.log")
    b = await start_backend(dsn, tmp_path / "b.log")
    try:
        async with ClientSession() as session:
            api_a, api_b = Api(session, a.base), Api(session, b.base)
            tok = await api_a.customer("c1")
            await api_a.server("s1", "c1")
            # Both processes serve the same data.
            assert (await api_b.call("GET", "/v1/servers/s1", tok)).status == 200
            rev = (await api_b.node("GET", "node-a", "/bindings")).body["revision"]
            for _ in range(3):  # repeat: one lucky run proves little
                watch = asyncio.create_task(
                    api_b.node("GET", "node-a", f"/watch?since={rev}&timeout=20"))
                for _ in range(400):
                    if await _metric(session, b, "interceptor_backend_watchers") >= 1:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("watcher on B never started waiting")
                start = time.monotonic()
                w = await api_a.call("PATCH", "/v1/servers/s1/metadata/public", tok,
                                     json_body={"t": str(start)})
                assert w.status == 200
                result = await asyncio.wait_for(watch, 10)
                elapsed = time.monotonic() - start
                assert result.status == 200
                assert result.body["instances"] == ["s1"]
                assert elapsed < 1.0, elapsed
                rev = result.body["revision"]
            # Concurrent writers through both processes lose nothing.
            async def write(api: Api, i: int) -> int:
                r = await api.call("PATCH", "/v1/servers/s1/metadata/restricted", tok,
                                   json_body={f"k{i}": i})
                return r.status
            statuses = await asyncio.gather(*(write(api_a if i % 2 else api_b, i)
                                              for i in range(10)))
            assert statuses == [200] * 10
            final = await api_a.call("GET", "/v1/servers/s1/metadata/restricted", tok)
            assert final.body == {f"k{i}": i for i in range(10)}
    finally:
        stop_backend(a)
        stop_backend(b)


async def test_sigterm_exits_cleanly_with_a_long_poll_open(tmp_path: Path) -> None:
    backend = await start_backend(f"sqlite://{tmp_path}/db.sqlite", tmp_path / "log")
    try:
        async with ClientSession() as session:
            api = Api(session, backend.base)
            watch = asyncio.create_task(api.node("GET", "node-a", "/watch?since=0&timeout=60"))
            for _ in range(400):
                if await _metric(session, backend, "interceptor_backend_watchers") >= 1:
                    break
                await asyncio.sleep(0.01)
            start = time.monotonic()
            backend.proc.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(
                None, backend.proc.wait, 15)
            assert code == 0
            assert time.monotonic() - start < 5
            result = await watch
            assert result.status == 200
    finally:
        stop_backend(backend)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interceptor.backend.cli", *args],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = _cli("--listen-port", "abc")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "listen_port" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[backend]\nlisten_prot = 1\n')
    r = _cli("--config", str(bad))
    assert r.returncode == 2 and "listen_prot" in r.stderr
    r = _cli("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    r = _cli(env={"INTERCEPTOR_BACKEND_NODE_TOKENS": "node-a"})
    assert r.returncode == 2 and "node_tokens" in r.stderr
    r = _cli("--node-tokens", "a=b")
    assert r.returncode == 2 and "signing_key" in r.stderr
    r = _cli("--no-such-flag")
    assert r.returncode == 2


async def test_admin_cli_creates_customers_and_tokens(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path}/db.sqlite"
    config = tmp_path / "backend.toml"
    config.write_text(f'[backend]\ndatabase = "{db}"\n')
    r = _cli("create-customer", "--config", str(config), "--id", "acme", "--name", "Acme",
             "--token")
    assert r.returncode == 0, r.stderr
    made: dict[str, Any] = json.loads(r.stdout)
    assert made["id"] == "acme" and made["token"]
    r = _cli("create-customer", "--config", str(config), "--id", "acme")
    assert r.returncode == 1 and "exists" in r.stderr
    r = _cli("create-token", "--config", str(config), "--customer", "acme")
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)["token"]
    r = _cli("create-token", "--config", str(config), "--admin")
    admin = json.loads(r.stdout)["token"]
    # The store holds digests only.
    assert made["token"].encode() not in (tmp_path / "db.sqlite").read_bytes()
    backend = await start_backend(db, tmp_path / "log")
    try:
        async with ClientSession() as session:
            api = Api(session, backend.base)
            for token in (made["token"], second):
                got = await api.call("GET", "/v1/customers/acme", token)
                assert got.status == 200 and got.body["name"] == "Acme"
            assert (await api.call("GET", "/v1/customers", admin)).status == 200
            assert (await api.call("GET", "/v1/customers", ADMIN)).status == 200
    finally:
        stop_backend(backend)
    log = (tmp_path / "log").read_text()
    for secret in (made["token"], second, admin, ADMIN):
        assert secret not in log


async def test_json_logs_one_line_per_request_without_secrets(tmp_path: Path) -> None:
    log = tmp_path / "log"
    backend = await start_backend(f"sqlite://{tmp_path}/db.sqlite", log, log_format="json")
    try:
        async with ClientSession() as session:
            api = Api(session, backend.base)
            tok = await api.customer("c1")
            await api.server("s1", "c1")
            await api.node("GET", "node-a", "/instances/s1/document", "s1",
                           headers={"X-Request-Id": "trace-42"})
            await api.call("GET", "/v1/servers/s1", "not-a-valid-token")
    finally:
        stop_backend(backend)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    requests = [entry for entry in lines if "route" in entry]
    assert len(requests) >= 5
    doc = [e for e in requests if e.get("request_id") == "trace-42"]
    assert doc and doc[0]["route"] == "/v1/nodes/{node}/instances/{iid}/document"
    assert doc[0]["status"] == 200 and doc[0]["method"] == "GET"
    text = log.read_text()
    from tests.backend.support import NODE_TOKENS, SIGNING_KEY
    for secret in (tok, ADMIN, SIGNING_KEY, "not-a-valid-token", *NODE_TOKENS.values()):
        assert secret not in text
    assert "Authorization" not in text and "Signature" not in text
