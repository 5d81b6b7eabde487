"""The node's backend client over TLS with a private CA, and its bound on
backend answers (issue 15). The CA and the server certificate are made with
``openssl`` for each test; the server is the contract server of
``test_node_backend_client.py`` (token + signature checks) behind TLS."""

from __future__ import annotations

import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from interceptor.common.errors import ConfigError
from interceptor.node.backend_client import BackendClient, BackendUnavailable
from interceptor.node.config import NodeConfig
from tests.unit.node.test_node_backend_client import KEY, NODE, TOKEN, Contract, make_app


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(work: Path, name: str = "ca") -> Path:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN=interceptor test {name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             cwd=work)
    return work / f"{name}.pem"


def make_server_cert(work: Path, ca: str = "ca") -> tuple[Path, Path]:
    (work / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=work)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem",
             cwd=work)
    return work / "server.pem", work / "server.key"


async def _serve(app: web.Application, tls: ssl.SSLContext | None
                 ) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def https_backend(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    ca = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    runner, port = await _serve(make_app(Contract()), tls)
    yield f"https://127.0.0.1:{port}", ca
    await runner.cleanup()


async def test_https_backend_with_private_ca(https_backend: tuple[str, Path]) -> None:
    url, ca = https_backend
    client = BackendClient(url, NODE, TOKEN, KEY, ca_file=str(ca))
    try:
        bindings = await client.bindings()
        assert bindings.revision == 7 and bindings.bindings
        await client.set_password(bindings.bindings[0].instance_id, b"pw")  # signed body
    finally:
        await client.close()


async def test_https_backend_refused_without_its_ca(https_backend: tuple[str, Path],
                                                    tmp_path: Path) -> None:
    url, _ = https_backend
    other = tmp_path / "other"
    other.mkdir()
    for ca_file in (None, str(make_ca(other))):
        client = BackendClient(url, NODE, TOKEN, KEY, ca_file=ca_file)
        try:
            with pytest.raises(BackendUnavailable, match=r"(?i)certificate"):
                await client.bindings()
        finally:
            await client.close()


def test_backend_ca_file_config_is_checked(tmp_path: Path) -> None:
    base: dict[str, Any] = {"node_name": "n", "node_token": "t", "signing_key": "k"}
    with pytest.raises(ConfigError, match="https"):
        NodeConfig(backend_url=["http://b:8700"], backend_ca_file=str(tmp_path), **base).validate()
    with pytest.raises(ConfigError, match="readable"):
        NodeConfig(backend_url=["https://b:8700"], backend_ca_file=str(tmp_path / "none.pem"),
                   **base).validate()
    pem = make_ca(tmp_path)
    NodeConfig(backend_url=["https://b:8700"], backend_ca_file=str(pem), **base).validate()


async def test_backend_answer_is_bounded_after_decompression() -> None:
    """A gzip bomb (or an endless answer) from the backend is cut off."""
    bomb = gzip.compress(b"{" + b" " * (4 << 20) + b"}")

    async def bindings(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip",
                                                "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/v1/nodes/{node}/bindings", bindings)
    runner, port = await _serve(app, None)
    client = BackendClient(f"http://127.0.0.1:{port}", NODE, TOKEN, KEY,
                           max_answer_bytes=1 << 20)
    try:
        with pytest.raises(BackendUnavailable, match="exceeds"):
            await client.bindings()
    finally:
        await client.close()
        await runner.cleanup()
