"""The file driver: YAML → instance document, bad files, binding by file name."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import yaml

from interceptor.channels import serial_protocol
from interceptor.channels.file_source import FileFormatError, FileSource, document_from_file
from interceptor.channels.serial_protocol import Packet
from interceptor.channels.sources import SerialBinding, SourceUnavailable
from interceptor.formats.document import validate_document
from tests.channels.support import decode_packets

EXAMPLE = """
metadata:
  ami-id: my-image
  instance-id: my-instance
  region: us-east1
  availability-zone: us-east1-a
  tags: [a, b, c]
  public-keys:
    - ssh-ed25519 AAAA one
  hostname: my-hostname
network:
  mac: "52:54:00:AA:BB:CC"
  address: 192.168.1.1
  netmask: 255.255.255.0
  gateway: 192.168.1.254
  search: example.com
  nameservers: [8.8.8.8, 8.8.4.4]
userdata: |
  #cloud-config
  growpart:
    mode: auto
"""


def _answer(doc: object, code: str) -> tuple[str, bytes]:
    return decode_packets(serial_protocol.answer(Packet(code, b""), doc))[0]  # type: ignore[arg-type]


def test_example_file_answers_as_documented() -> None:
    doc = validate_document(document_from_file("vm1", yaml.safe_load(EXAMPLE)))
    code, data = _answer(doc, "REQUEST_METADATA")
    assert code == "RESPONSE_METADATA"
    assert json.loads(data) == {
        "ami-id": "my-image", "instance-id": "my-instance", "region": "us-east1",
        "availability-zone": "us-east1-a", "tags": ["a", "b", "c"],
        "public-keys": ["ssh-ed25519 AAAA one"], "hostname": "my-hostname",
        "local-hostname": "my-hostname"}
    code, data = _answer(doc, "REQUEST_NETWORKDATA")
    assert yaml.safe_load(data) == {"version": 1, "config": [{
        "type": "physical", "name": "eth0", "mac_address": "52:54:00:aa:bb:cc",
        "subnets": [{"type": "static", "address": "192.168.1.1", "netmask": "255.255.255.0",
                     "gateway": "192.168.1.254", "dns_nameservers": ["8.8.8.8", "8.8.4.4"],
                     "dns_search": ["example.com"]}]}]}
    code, data = _answer(doc, "REQUEST_USERDATA")
    assert data == b"#cloud-config\ngrowpart:\n  mode: auto\n"


def test_minimal_file_and_dhcp_network() -> None:
    doc = document_from_file("vm7", {"metadata": {"instance-id": "i-7"},
                                     "network": {"mac": "52:54:00:00:00:07"}})
    assert doc["hostname"] == "vm7" and doc["user_data"] == []
    assert doc["network"]["interfaces"][0]["dhcp4"] is True
    assert _answer(doc, "REQUEST_USERDATA") == ("RESPONSE_USERDATA", b"")


@pytest.mark.parametrize(("data", "message"), [
    ([], "mapping"),
    ({"metadata": "x"}, "metadata must be a mapping"),
    ({"metadata": {}}, "instance-id is required"),
    ({"metadata": {"instance-id": "i"}, "network": {"address": "10.0.0.1"}}, "network.mac"),
    ({"metadata": {"instance-id": "i"}, "network": {"mac": "m", "address": "x"}},
     "address"),
    ({"metadata": {"instance-id": "i"}, "userdata": ["x"]}, "userdata must be a string"),
    ({"metadata": {"instance-id": "i", "public-keys": [1]}}, "public-keys"),
    ({"metadata": {"instance-id": {"a": 1}}}, "instance-id must be a string"),
])
def test_bad_files_name_the_problem(data: object, message: str) -> None:
    with pytest.raises(FileFormatError, match=message):
        document_from_file("vm1", data)


async def test_directory_is_the_binding_table(tmp_path: Path) -> None:
    (tmp_path / "vm1.yaml").write_text(EXAMPLE)
    (tmp_path / "bad name.yaml").write_text(EXAMPLE)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.yaml").write_text("metadata: [unclosed\n")
    os.symlink(tmp_path / "vm1.yaml", tmp_path / "link.yaml")
    source = FileSource(tmp_path, poll_interval=0.05)
    bound = await source.bindings()
    assert set(bound) == {"vm1", "broken", "link"}
    doc = await source.document(bound["vm1"])
    assert doc["instance_id"] == "my-instance"
    with pytest.raises(SourceUnavailable, match="YAML"):
        await source.document(bound["broken"])
    with pytest.raises(SourceUnavailable):  # symlinks are not followed
        await source.document(bound["link"])
    with pytest.raises(SourceUnavailable):
        await source.document(SerialBinding("gone", "gone"))
    # Edits are seen on the next request.
    (tmp_path / "vm1.yaml").write_text(EXAMPLE.replace("my-instance", "my-other"))
    os.utime(tmp_path / "vm1.yaml", ns=(1, 1))
    assert (await source.document(bound["vm1"]))["instance_id"] == "my-other"
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(SourceUnavailable, match="larger"):
        await source.document(SerialBinding("big", "big"))


async def test_follow_reports_new_and_removed_files(tmp_path: Path) -> None:
    source = FileSource(tmp_path, poll_interval=0.05)
    changes: asyncio.Queue[set[str]] = asyncio.Queue()

    async def on_change() -> None:
        await changes.put(set(await source.bindings()))

    task = asyncio.create_task(source.follow(on_change))
    try:
        assert await asyncio.wait_for(changes.get(), 2) == set()
        (tmp_path / "vm1.yaml").write_text(EXAMPLE)
        assert await asyncio.wait_for(changes.get(), 2) == {"vm1"}
        (tmp_path / "vm1.yaml").unlink()
        assert await asyncio.wait_for(changes.get(), 2) == set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
