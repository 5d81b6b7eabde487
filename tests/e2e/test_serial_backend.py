"""The serial channel through the real backend (issue 11 with issue 10's serial bindings).

A real backend process, and a real ``interceptor serial --driver backend``
process running as node-a (its token, signing key and change feed). The
platform binds serial socket names through the REST API; a real QEMU guest
on the socket prints its own instance id; values changed through the API
read the same on the serial line and on the config drive; disabling,
unbinding and rebinding take effect without restarting anything.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession

from tests.backend.support import (
    ADMIN,
    NODE_TOKENS,
    SIGNING_KEY,
    Api,
    BackendProcess,
    start_backend,
    stop_backend,
)
from tests.channels.daemon import SerialProcess, serial_daemon
from tests.channels.support import Client
from tests.guest import boot_guest_async, serial_socket_args
from tests.helpers.iso import read_iso

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def shortdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="chb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[BackendProcess]:
    proc = await start_backend(f"sqlite://{tmp_path}/b.sqlite", tmp_path / "backend.log")
    try:
        yield proc
    finally:
        stop_backend(proc)


@pytest.fixture
async def api(backend: BackendProcess) -> AsyncIterator[Api]:
    async with ClientSession() as session:
        yield Api(session, backend.base)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _server(api: Api, sid: str, user: str) -> None:
    await api.server(sid, "c-ser", node=None, user_data=[
        {"name": "user", "content_type": "text/cloud-config", "data": _b64(user)}])


async def _bind(api: Api, sid: str, node: str, name: str, method: str = "PUT") -> None:
    r = await api.call(method, f"/v1/servers/{sid}/serial/{node}/{name}", ADMIN)
    assert r.status in (200, 204), r.body


@pytest.fixture
def daemon(backend: BackendProcess, shortdir: Path) -> Iterator[SerialProcess]:
    config = shortdir / "node.toml"
    config.write_text(
        "[node]\n"
        f'node_name = "node-a"\nbackend_url = "{backend.base}"\n'
        f'node_token = "{NODE_TOKENS["node-a"]}"\nsigning_key = "{SIGNING_KEY}"\n'
        "[serial]\ndriver = \"backend\"\nlog_level = \"debug\"\n")
    config.chmod(0o600)
    with serial_daemon(shortdir / "sock", shortdir / "serial.log", "--config",
                       str(config)) as proc:
        yield proc


async def _eventually(check: Callable[[], Awaitable[bool]], what: str,
                      timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def test_serial_through_the_backend(api: Api, daemon: SerialProcess) -> None:
    await api.customer("c-ser")
    await _server(api, "vm-one", "#cloud-config\n# one\n")
    await _server(api, "vm-two", "#cloud-config\n# two\n")
    await _server(api, "vm-far", "#cloud-config\n# far\n")
    await _bind(api, "vm-one", "node-a", "ser-one")
    await _bind(api, "vm-far", "node-b", "ser-far")  # another node's: never served here
    path = await asyncio.to_thread(daemon.wait_socket, "ser-one")
    assert not daemon.socket("ser-far").exists()

    # A real guest on the socket prints its own instance id.
    result = await boot_guest_async(None, None, "", {"mode": "serial",
                                                     "codes": ["REQUEST_METADATA"]}, 120,
                                    qemu_args=serial_socket_args(str(path)))
    assert result.completed, result.tail()
    assert result.instance_id == "vm-one", result.tail() + daemon.logs()

    client = await Client.unix(path)
    try:
        # A change through the API reads the same on the serial line and the drive.
        r = await api.call("PATCH", "/v1/servers/vm-one", ADMIN, json_body={
            "user_data": [{"name": "user", "content_type": "text/cloud-config",
                           "data": _b64("#cloud-config\n# changed\n")}]})
        assert r.status == 200, r.body

        async def changed() -> bool:
            return (await client.request("REQUEST_USERDATA"))[1] == (
                b"#cloud-config\n# changed\n")

        await _eventually(changed, "the serial line shows the new user-data")
        async with api.session.get(f"{api.base}/v1/servers/vm-one/configdrive?format=nocloud",
                                   headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            drive = read_iso(await resp.read()).files
        assert drive["/user-data"] == b"#cloud-config\n# changed\n"
        code, meta = await client.request("REQUEST_METADATA")
        assert json.loads(meta)["instance-id"] == yaml.safe_load(drive["/meta-data"])[
            "instance-id"] == "vm-one"

        # Disabled by the platform: an error packet, nothing else.
        r = await api.call("PATCH", "/v1/servers/vm-one", ADMIN,
                           json_body={"metadata_enabled": False})
        assert r.status == 200, r.body

        async def disabled() -> bool:
            code, data = await client.request("REQUEST_METADATA")
            return code == "ERROR" and json.loads(data)["error"] == "disabled"

        await _eventually(disabled, "metadata disabled on the serial line")
        r = await api.call("PATCH", "/v1/servers/vm-one", ADMIN,
                           json_body={"metadata_enabled": True})
        assert r.status == 200

        # Unbound: the socket goes and the live connection is closed.
        await _bind(api, "vm-one", "node-a", "ser-one", "DELETE")
        await asyncio.to_thread(daemon.wait_socket, "ser-one", False)
        assert await client.closed_without_data(timeout=10)
    finally:
        await client.close()

    # The name bound to another server serves that server only.
    await _bind(api, "vm-two", "node-a", "ser-one")
    await asyncio.to_thread(daemon.wait_socket, "ser-one")
    again = await Client.unix(daemon.socket("ser-one"))
    try:
        code, meta = await again.request("REQUEST_METADATA")
        assert code == "RESPONSE_METADATA" and json.loads(meta)["instance-id"] == "vm-two"
        await again.send(b"<\n/uuid\n>")
        assert json.loads(await again.line()) == "vm-two"
    finally:
        await again.close()
