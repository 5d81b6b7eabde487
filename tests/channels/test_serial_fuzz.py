"""Fuzz the live serial server: two VMs send random streams at once; bounded time.

Every answer must decode and belong to the VM that asked; the server must
keep serving both (a final sentinel request is always answered).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interceptor.channels.serial_server import SerialServer, SessionLimits
from tests.channels.support import Client, FakeSource, decode_packets, document

_TOKENS = st.sampled_from([b"!!", b"#", b"\n", b"<", b">", b"\x00", b"REQUEST_METADATA",
                           b"REQUEST_USERDATA", b"REQUEST_NETWORKDATA", b"/meta/", b"/uuid",
                           b"\n\n>", b"=="])
_STREAM = st.lists(st.one_of(st.binary(max_size=48), _TOKENS), max_size=40).map(b"".join)
_SENTINEL = b"\n\n!!SENTINEL#\n"
_IDS = {"vm1": "i-first-0a1b", "vm2": "i-second-2c3d"}


async def _run(streams: dict[str, bytes]) -> dict[str, bytes]:
    sockdir = Path(tempfile.mkdtemp(prefix="serfz-", dir="/tmp"))
    source = FakeSource()
    for name, iid in _IDS.items():
        source.bind(name, document(iid))
    server = SerialServer(source, sockdir, limits=SessionLimits(
        packet_rate=1000.0, packet_burst=1000, max_line=256))
    try:
        await server.refresh()

        async def exchange(name: str) -> bytes:
            client = await Client.unix(server.socket_path(name))
            try:
                await client.send(streams[name] + _SENTINEL)
                received = b""
                while b"!!ERROR#" not in received or not any(
                        code == "ERROR" and b"SENTINEL" in data
                        for code, data in decode_packets(received)):
                    chunk = await asyncio.wait_for(client.reader.read(65536), 10)
                    assert chunk, "server closed the connection"
                    received += chunk
                return received
            finally:
                await client.close()

        results = await asyncio.gather(*(exchange(n) for n in _IDS))
        return dict(zip(_IDS, results, strict=True))
    finally:
        await server.close()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.timeout(120)  # bounded in CI: a fixed number of examples, a hard cap
@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(first=_STREAM, second=_STREAM)
def test_fuzz_two_vms_get_only_their_own_answers(first: bytes, second: bytes) -> None:
    received = asyncio.run(_run({"vm1": first, "vm2": second}))
    for name, raw in received.items():
        other = next(iid for n, iid in _IDS.items() if n != name)
        assert other.encode() not in raw
        for line in raw.split(b"\n"):
            if not line:
                continue
            if line.startswith(b"!!"):
                code, data = decode_packets(line)[0]
                assert other.encode() not in data
                if code == "RESPONSE_METADATA":
                    assert json.loads(data)["instance-id"] == _IDS[name]
            else:  # a CloudSigma answer: one JSON value per line
                value = json.loads(line)
                if isinstance(value, dict) and "uuid" in value:
                    assert value["uuid"] == _IDS[name]
