"""Real QEMU guests without the network path (issue 11, acceptance 1, 2 and 4).

* A guest boots with the config drive the backend built (fetched with
  ``interceptor ctl configdrive``) as its CD-ROM, mounts it and prints its
  instance id and user-data from it — both formats.
* Two guests whose second serial port (ttyS1) is a UNIX socket of a real
  ``interceptor serial --driver file`` process ask ``!!REQUEST_METADATA#``
  (and the other codes, and CloudSigma requests in Cepko's framing) at the
  same time; each prints its own instance id.
* A guest reaches the daemon through a concentrator on the TCP port (the
  concentrator registers the VM's name, then relays the guest's bytes).

No tap, no root: the guests have no NIC at all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from interceptor import ctl
from tests.backend.support import ADMIN, Api, free_port, start_backend, stop_backend
from tests.channels.daemon import SerialProcess, serial_daemon
from tests.guest import (
    GuestResult,
    boot_guest,
    boot_guest_async,
    cdrom_args,
    serial_socket_args,
)

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, pytest.mark.slow]

CONCENTRATOR_TOKEN = "qemu-concentrator-" + "z" * 16
VMS = {
    "vm-a": ("i-serial-a-41f0", "#cloud-config\n# for a\n"),
    "vm-b": ("i-serial-b-93c2", "#!/bin/sh\necho b\n"),
    "vm-c": ("i-serial-c-5d77", "#cloud-config\n# for c\n"),
}


@pytest.fixture
def shortdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="chq-", dir="/tmp"))  # UNIX socket paths are short
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def backend_api(tmp_path: Path) -> AsyncIterator[Api]:
    from aiohttp import ClientSession

    backend = await start_backend(f"sqlite://{tmp_path}/b.sqlite", tmp_path / "backend.log")
    try:
        async with ClientSession() as session:
            yield Api(session, backend.base)
    finally:
        stop_backend(backend)


@pytest.mark.parametrize("fmt", ["openstack", "nocloud"])
async def test_guest_reads_the_config_drive_the_backend_built(
        backend_api: Api, tmp_path: Path, fmt: str) -> None:
    api = backend_api
    await api.customer("c-cd")
    user_data = f"#cloud-config\n# drive {fmt}\n".encode()
    await api.server("vm-cd", "c-cd", node=None, user_data=[
        {"name": "user", "content_type": "text/cloud-config",
         "data": base64.b64encode(user_data).decode()}])
    r = await api.call("PATCH", "/v1/servers/vm-cd/metadata/private", ADMIN,
                       json_body={"secret": "private-never-on-the-drive"})
    assert r.status == 200
    iso = tmp_path / "vm-cd.iso"
    code = await asyncio.to_thread(ctl.main, ["--url", api.base, "--token", ADMIN,
                                              "configdrive", "vm-cd", "-o", str(iso),
                                              "--format", fmt])
    assert code == 0
    assert b"private-never-on-the-drive" not in iso.read_bytes()
    user_file = "/openstack/latest/user_data" if fmt == "openstack" else "/user-data"
    result = await asyncio.to_thread(
        boot_guest, None, None, "", {"mode": "cdrom", "files": [user_file]}, 120,
        None, cdrom_args(str(iso)))
    assert result.completed, result.tail()
    assert result.cdrom_mounted and result.cdrom_read_only, result.tail()
    assert result.instance_id == "vm-cd"
    assert result.response(user_file, "FILE").raw == user_data


@pytest.fixture
def tcp_port() -> int:
    return free_port()


@pytest.fixture
def file_daemon(shortdir: Path, tcp_port: int) -> Iterator[SerialProcess]:
    files = shortdir / "vms"
    files.mkdir()
    for name, (iid, user) in VMS.items():
        (files / f"{name}.yaml").write_text(json.dumps({
            "metadata": {"instance-id": iid, "hostname": name, "region": "r-1",
                         "public-keys": [f"ssh-ed25519 AAAA {name}"]},
            "userdata": user}))
    with serial_daemon(shortdir / "sock", shortdir / "serial.log", "--driver", "file",
                       "--directory", str(files), "--poll-interval", "0.2",
                       "--tcp-port", str(tcp_port), "--concentrator-token", CONCENTRATOR_TOKEN,
                       "--log-level", "debug") as daemon:
        for name in VMS:
            daemon.wait_socket(name)
        yield daemon


def _serial_answers(result: GuestResult) -> dict[str, bytes]:
    """Each answer line the guest printed: packets with their data decoded,
    CloudSigma answers (one JSON line) as they came."""
    out = {}
    for r in result.responses:
        line = r.raw.strip()
        if line.startswith(b"!!"):
            code, _, data = line.partition(b"#")
            out[r.path] = code + b"#" + base64.b64decode(data)
        else:
            out[r.path] = line
    return out


async def test_two_guests_on_two_serial_sockets_at_once(file_daemon: SerialProcess) -> None:
    codes = ["REQUEST_METADATA", "REQUEST_USERDATA", "REQUEST_NOTHING", "CLOUDSIGMA/uuid",
             "CLOUDSIGMA/meta/ssh_public_key"]
    results = await asyncio.gather(*(
        boot_guest_async(None, None, "", {"mode": "serial", "codes": codes}, 120,
                         qemu_args=serial_socket_args(str(file_daemon.socket(name))))
        for name in ("vm-a", "vm-b")))
    for name, result in zip(("vm-a", "vm-b"), results, strict=True):
        iid, user = VMS[name]
        assert result.completed, result.tail()
        assert result.instance_id == iid, result.tail()
        answers = _serial_answers(result)
        meta = json.loads(answers["REQUEST_METADATA"].removeprefix(b"!!RESPONSE_METADATA#"))
        assert meta["instance-id"] == iid and meta["hostname"] == name
        assert meta["public-keys"] == [f"ssh-ed25519 AAAA {name}"]
        assert answers["REQUEST_USERDATA"] == b"!!RESPONSE_USERDATA#" + user.encode()
        assert json.loads(answers["REQUEST_NOTHING"].removeprefix(b"!!ERROR#")) == {
            "error": "unknown-code", "request": "REQUEST_NOTHING"}
        # CloudSigma's framing through the guest's UART, as Cepko sends it.
        assert json.loads(answers["CLOUDSIGMA/uuid"]) == iid
        assert json.loads(answers["CLOUDSIGMA/meta/ssh_public_key"]) == (
            f"ssh-ed25519 AAAA {name}")
        other = next(i for n, (i, _) in VMS.items() if n != name and n != "vm-c")
        assert other not in result.console


async def _concentrator(listen: Path, daemon_port: int, name: str,
                        ready: asyncio.Event) -> None:
    """A serial concentrator: QEMU connects to it; it connects out to the daemon's
    TCP port, registers the VM's name first, then relays bytes both ways."""

    async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        dst.close()

    async def on_guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        d_reader, d_writer = await asyncio.open_connection("127.0.0.1", daemon_port)
        d_writer.write(f"REGISTER {name} {CONCENTRATOR_TOKEN}\n".encode())
        await asyncio.gather(relay(reader, d_writer), relay(d_reader, writer),
                             return_exceptions=True)

    server = await asyncio.start_unix_server(on_guest, str(listen))
    ready.set()
    async with server:
        await server.serve_forever()


async def test_guest_through_a_concentrator_on_the_tcp_port(
        file_daemon: SerialProcess, shortdir: Path, tcp_port: int) -> None:
    assert "concentrator port" in file_daemon.logs()
    ready = asyncio.Event()
    listen = shortdir / "concentrator.sock"
    task = asyncio.create_task(_concentrator(listen, tcp_port, "vm-c", ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        result = await boot_guest_async(None, None, "", {"mode": "serial"}, 120,
                                        qemu_args=serial_socket_args(str(listen)))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert result.completed, result.tail()
    assert result.instance_id == VMS["vm-c"][0], result.tail()
