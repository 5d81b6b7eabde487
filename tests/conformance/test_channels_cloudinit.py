"""cloud-init's own readers over the config drive and the serial line (issue 11).

Debian's cloud-init runs with the system Python (``read_channels.py``):
its ConfigDrive reader over the files of a built ``config-2`` image, its
NoCloud datasource over a built ``cidata`` image (the host kernel has no
iso9660, so the images are unpacked with ``bsdtar``, as ENVIRONMENT.md
says; the QEMU tests mount them for real), and its CloudSigma datasource
with its Cepko client on a pty wired to the serial daemon's UNIX socket, as
a hypervisor wires a guest's serial port. What cloud-init returns is
compared with the instance document.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import tty
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from interceptor.channels.configdrive import build_iso
from interceptor.channels.serial_server import SerialServer
from interceptor.formats import nocloud, userdata
from interceptor.formats.document import InstanceDocument
from interceptor.formats.facts import key_entries
from tests.channels.support import FakeSource, document
from tests.conformance.support import HERE, SYSTEM_PYTHON

pytestmark = [pytest.mark.conformance]


def _doc() -> InstanceDocument:
    doc = document("i-channels-7d2e", "chan-vm")
    doc["user_data"] = document("x")["user_data"] + [{
        "name": "platform.sh", "content_type": "text/x-shellscript",
        "data_b64": base64.b64encode(b"#!/bin/sh\necho platform\n").decode()}]
    return doc


def _read(kind: str, target: str, timeout: float = 60.0) -> dict[str, Any]:
    r = subprocess.run([SYSTEM_PYTHON, str(HERE / "read_channels.py"), kind, target],
                       capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0 and r.stdout.strip(), f"{r.stdout[-2000:]}\n{r.stderr[-5000:]}"
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"], r.stderr[-5000:]
    return result


def _unpack(image: bytes, where: Path) -> Path:
    iso, out = where / "drive.iso", where / "files"
    iso.write_bytes(image)
    out.mkdir()
    subprocess.run(["bsdtar", "-xf", str(iso), "-C", str(out)], check=True)
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(iso)],
                           capture_output=True, text=True, check=True).stdout.strip()
    (where / "label").write_text(label)
    return out


def _parts(result: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(p["content_type"], base64.b64decode(p["payload_b64"]))
            for p in result["userdata_parts"]]


EXPECTED_PARTS = [("text/cloud-config", b"#cloud-config\n# x\n"),
                  ("text/x-shellscript", b"#!/bin/sh\necho platform\n")]


def test_configdrive_reader(tmp_path: Path) -> None:
    doc = _doc()
    files = _unpack(build_iso(doc, "openstack"), tmp_path)
    assert (tmp_path / "label").read_text() == "config-2"
    got = _read("configdrive", str(files))
    assert got["metadata"]["instance-id"] == doc["instance_id"]
    assert got["metadata"]["local-hostname"] == "chan-vm"
    assert sorted(got["metadata"]["public_keys"].values()) == sorted(
        k for _, k in key_entries(doc))
    assert got["ec2_metadata"]["instance-id"] == doc["instance_id"]
    assert _parts(got) == EXPECTED_PARTS
    assert got["network_config"]["links"][0]["ethernet_mac_address"] == (
        doc["network"]["interfaces"][0]["mac"].lower())
    injected = {path: base64.b64decode(v["b64"]) for path, v in got["files"].items()}
    assert injected == {f["path"]: base64.b64decode(f["data_b64"]) for f in doc["files"]}
    assert got["vendordata"] == doc["vendor_data"]["static"]


def test_nocloud_reader(tmp_path: Path) -> None:
    doc = _doc()
    files = _unpack(build_iso(doc, "nocloud"), tmp_path)
    assert (tmp_path / "label").read_text() == "cidata"
    got = _read("nocloud", str(files))
    assert got["instance_id"] == doc["instance_id"] and got["hostname"] == "chan-vm"
    assert got["public_keys"] == [k for _, k in key_entries(doc)]
    assert _parts(got) == EXPECTED_PARTS
    assert got["network_config"]["version"] == 1
    assert [c["mac_address"] for c in got["network_config"]["config"]] == [
        i["mac"].lower() for i in doc["network"]["interfaces"]]
    assert base64.b64decode(got["vendordata_raw"]["b64"]) == nocloud.vendor_data(doc)


@pytest.fixture
async def serial_socket(tmp_path: Path) -> AsyncIterator[tuple[SerialServer, Path]]:
    import shutil
    import tempfile

    sockdir = Path(tempfile.mkdtemp(prefix="sercs-", dir="/tmp"))
    source = FakeSource()
    source.bind("chan-vm", _doc())
    server = SerialServer(source, sockdir)
    try:
        await server.refresh()
        yield server, server.socket_path("chan-vm")
    finally:
        await server.close()
        shutil.rmtree(sockdir, ignore_errors=True)


async def _pty_bridge(socket_path: Path, master: int) -> None:
    """Relay between the pty master and the daemon's socket, as QEMU relays the guest's
    serial port (``-chardev socket,path=…``)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_unix_connection(str(socket_path))

    def from_guest() -> None:
        try:
            writer.write(os.read(master, 4096))
        except OSError:
            loop.remove_reader(master)

    loop.add_reader(master, from_guest)
    try:
        while data := await reader.read(65536):
            os.write(master, data)
    finally:
        loop.remove_reader(master)
        writer.close()


async def test_cloudsigma_datasource_over_the_serial_socket(
        serial_socket: tuple[SerialServer, Path]) -> None:
    server, path = serial_socket
    doc = _doc()
    master, slave = os.openpty()
    tty.setraw(slave)
    bridge = asyncio.create_task(_pty_bridge(path, master))
    try:
        proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, str(HERE / "read_channels.py"), "cloudsigma", os.ttyname(slave),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()[-5000:]
        got = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        bridge.cancel()
        await asyncio.gather(bridge, return_exceptions=True)
        os.close(master)
        os.close(slave)
    assert got["ok"], err.decode()[-5000:]
    assert got["instance_id"] == doc["instance_id"] and got["hostname"] == "chan-vm"
    keys = "\n".join(k for _, k in key_entries(doc))
    assert got["public_keys"] == [keys] and got["meta_key"] == keys
    assert _parts(got) == EXPECTED_PARTS
    assert userdata.compose(doc) is not None
    assert got["vendordata_raw"] == nocloud.vendor_data(doc).decode()
    assert server.stats.answers >= 2
