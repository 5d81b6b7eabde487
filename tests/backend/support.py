"""Helpers of the backend suite: tokens, a PostgreSQL server handle, an HTTP
client with signed node calls, and real backend processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import ClientSession
from multidict import CIMultiDict

from interceptor.backend.config import BackendConfig
from interceptor.common.signing import sign

ADMIN = "admin-" + "a" * 20
NODE_TOKENS = {"node-a": "tok-node-a-" + "x" * 16, "node-b": "tok-node-b-" + "y" * 16}
SIGNING_KEY = "k" * 32


def pg_bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh installs it)")
    return versions[-1].parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """Debian's PostgreSQL in a temporary directory, as user ``postgres``, on a
    Unix socket only (``start()``, then ``stop()``; ``restart()`` in between)."""

    sockdir: str
    port: int

    @classmethod
    def start(cls) -> PgServer:
        root = tempfile.mkdtemp(prefix="interceptor-pg-")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        server = cls(root, free_port())
        server._run("initdb", "-D", server.data, "-A", "trust", "-U", "postgres", "--no-sync")
        server._ctl("start")
        return server

    @property
    def data(self) -> str:
        return os.path.join(self.sockdir, "data")

    def _run(self, tool: str, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, str(pg_bindir() / tool), *args], check=True,
                       capture_output=True, timeout=120)

    def _ctl(self, action: str, mode: str = "fast") -> None:
        opts = (f"-k {self.sockdir} -p {self.port} -c listen_addresses='' "
                "-c max_connections=200")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.sockdir, "log"), "-w",
                  "-m", mode, "-o", opts, action)

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: sessions are disconnected) and start again."""
        self._ctl("restart", mode)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._ctl("stop", "immediate")
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@/{db}?host={self.sockdir}&port={self.port}"

    async def create_database(self) -> str:
        name = "t" + secrets.token_hex(6)
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)


def make_config(database: str, **overrides: Any) -> BackendConfig:
    values: dict[str, Any] = {"database": database, "admin_token": ADMIN,
                              "node_tokens": dict(NODE_TOKENS), "signing_key": SIGNING_KEY,
                              "operator_port": 0}
    values.update(overrides)
    return BackendConfig(**values)


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)

    @property
    def etag(self) -> str:
        return self.headers.get("ETag", "")


class Api:
    """An HTTP client for one backend: owner calls and signed node calls."""

    def __init__(self, session: ClientSession, base: str, app: Any = None) -> None:
        self.session = session
        self.base = base
        self.app = app  # the in-process application, when there is one

    async def call(self, method: str, path: str, token: str | None = ADMIN, *,
                   json_body: Any = None, data: bytes | str | None = None,
                   headers: dict[str, str] | None = None) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": hdrs}
        if json_body is not None:
            data = json.dumps(json_body)
            hdrs["Content-Type"] = "application/json"
        if data is not None:  # a file-like body: large bodies would warn as raw bytes
            kwargs["data"] = io.BytesIO(data.encode() if isinstance(data, str) else data)
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            raw = await resp.read()
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return Reply(resp.status, body, CIMultiDict(resp.headers))

    async def node(self, method: str, node: str, path: str, instance: str = "", *,
                   token: str | None = None, data: bytes | str | None = None,
                   headers: dict[str, str] | None = None, key: str = SIGNING_KEY,
                   timestamp: int | None = None) -> Reply:
        full = f"/v1/nodes/{node}{path}"
        body = data.encode() if isinstance(data, str) else (data or b"")
        hdrs = sign(key.encode(), node, instance, method, full, timestamp, body=body)
        hdrs.update(headers or {})
        return await self.call(method, full, NODE_TOKENS[node] if token is None else token,
                               data=data, headers=hdrs)

    # Conveniences for setting up a scene.
    async def customer(self, cid: str) -> str:
        r = await self.call("POST", "/v1/customers", json_body={"id": cid, "name": cid})
        assert r.status == 201, r.body
        t = await self.call("POST", f"/v1/customers/{cid}/tokens")
        assert t.status == 201, t.body
        return str(t.body["token"])

    async def server(self, sid: str, customer: str, *, node: str | None = "node-a",
                     ifname: str = "tap0", **spec: Any) -> Reply:
        """The platform creates server ``sid`` for ``customer`` and, unless
        ``node`` is None, binds it to ``ifname`` on ``node``."""
        body: dict[str, Any] = {"customer_id": customer, "hostname": sid, **spec}
        r = await self.call("PUT", f"/v1/servers/{sid}", ADMIN, json_body=body)
        assert r.status == 201, r.body
        if node is not None:
            await self.bind(sid, node, ifname)
        return r

    async def bind(self, sid: str, node: str, ifname: str, mac: str | None = None) -> Reply:
        """Plug: the platform binds one tap (``PUT …/bindings/{node}/{ifname}``)."""
        r = await self.call("PUT", f"/v1/servers/{sid}/bindings/{node}/{ifname}", ADMIN,
                            json_body={"mac": mac} if mac else None)
        assert r.status == 200, r.body
        return r

    async def document(self, sid: str, node: str = "node-a") -> dict[str, Any]:
        r = await self.node("GET", node, f"/instances/{sid}/document", sid)
        assert r.status == 200, r.body
        return dict(r.body)


@dataclass
class BackendProcess:
    """A real ``python -m interceptor.backend.cli`` process."""

    proc: subprocess.Popen[bytes]
    port: int
    operator_port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_backend(database: str, log: Path, **extra: str) -> BackendProcess:
    port, op_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPTOR_")}
    env.update({"INTERCEPTOR_BACKEND_ADMIN_TOKEN": ADMIN,
                "INTERCEPTOR_BACKEND_NODE_TOKENS": ",".join(
                    f"{n}={t}" for n, t in NODE_TOKENS.items()),
                "INTERCEPTOR_BACKEND_SIGNING_KEY": SIGNING_KEY})
    args = [sys.executable, "-m", "interceptor.backend.cli", "serve",
            "--database", database, "--listen-port", str(port),
            "--operator-port", str(op_port)]
    for key, value in extra.items():
        args += ["--" + key.replace("_", "-"), value]
    out = log.open("ab")
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=out)
    out.close()
    backend = BackendProcess(proc, port, op_port, log)
    async with ClientSession() as session:
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError(f"backend exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                async with session.get(f"http://127.0.0.1:{op_port}/readyz") as resp:
                    if resp.status == 200:
                        return backend
            await asyncio.sleep(0.05)
    stop_backend(backend)
    raise RuntimeError(f"backend did not become ready: {log.read_text()[-2000:]}")


def stop_backend(backend: BackendProcess) -> None:
    if backend.proc.poll() is None:
        backend.proc.terminate()
        try:
            backend.proc.wait(10)
        except subprocess.TimeoutExpired:
            backend.proc.kill()
            backend.proc.wait(10)
