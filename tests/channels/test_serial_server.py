"""The serial server over real UNIX sockets and loopback TCP: identity, fail closed, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from pathlib import Path

import yaml

from interceptor.channels.serial_server import SerialServer, SessionLimits
from tests.channels.conftest import TOKEN
from tests.channels.support import Client, FakeSource, document


def meta(data: bytes) -> dict[str, object]:
    return dict(json.loads(data))


async def test_each_socket_answers_its_own_vm(server: SerialServer,
                                              source: FakeSource) -> None:
    source.bind("vm1", document("i-one"))
    source.bind("vm2", document("i-two"))
    await server.refresh()
    one, two = (await Client.unix(server.socket_path("vm1")),
                await Client.unix(server.socket_path("vm2")))
    try:
        answers = await asyncio.gather(one.request("REQUEST_METADATA"),
                                       two.request("REQUEST_METADATA"))
        assert [a[0] for a in answers] == ["RESPONSE_METADATA"] * 2
        assert meta(answers[0][1])["instance-id"] == "i-one"
        assert meta(answers[1][1])["instance-id"] == "i-two"
        code, body = await one.request("REQUEST_USERDATA")
        assert (code, body) == ("RESPONSE_USERDATA", b"#cloud-config\n# i-one\n")
        code, body = await two.request("REQUEST_NETWORKDATA")
        config = yaml.safe_load(body)
        assert code == "RESPONSE_NETWORKDATA" and config["version"] == 1
        assert config["config"][0]["type"] == "physical"
    finally:
        await one.close()
        await two.close()
    assert stat.S_IMODE(os.stat(server.socket_path("vm1")).st_mode) == 0o600


async def test_unbound_names_have_no_socket_and_unbinding_closes(
        server: SerialServer, source: FakeSource) -> None:
    source.bind("vm1", document("i-one"))
    await server.refresh()
    assert not server.socket_path("vm9").exists()
    client = await Client.unix(server.socket_path("vm1"))
    assert (await client.request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
    del source.bound["vm1"]
    await server.refresh()
    assert await client.closed_without_data()
    assert not server.socket_path("vm1").exists()
    await client.close()


async def test_rebinding_a_name_ends_the_old_connection(server: SerialServer,
                                                        source: FakeSource) -> None:
    source.bind("vm1", document("i-old"))
    await server.refresh()
    old = await Client.unix(server.socket_path("vm1"))
    assert meta((await old.request("REQUEST_METADATA"))[1])["instance-id"] == "i-old"
    source.bind("vm1", document("i-new"), generation=2)
    await server.refresh()
    # The old connection never gets the new instance's data: it is closed.
    with contextlib.suppress(ConnectionError):
        await old.send(b"!!REQUEST_METADATA#\n")
    assert await old.closed_without_data()
    new = await Client.unix(server.socket_path("vm1"))
    assert meta((await new.request("REQUEST_METADATA"))[1])["instance-id"] == "i-new"
    await old.close()
    await new.close()


async def test_binding_changed_while_fetching_gives_no_answer(server: SerialServer,
                                                              source: FakeSource) -> None:
    source.bind("vm1", document("i-old"))
    await server.refresh()
    client = await Client.unix(server.socket_path("vm1"))
    source.delay = 0.3
    await client.send(b"!!REQUEST_METADATA#\n")
    await asyncio.sleep(0.1)
    source.bind("vm1", document("i-new"), generation=5)
    source.delay = 0.0
    await server.refresh()
    assert await client.closed_without_data()
    await client.close()


async def test_error_packets(server: SerialServer, source: FakeSource) -> None:
    source.bind("vm1", document("i-one"))
    nonet = document("i-nonet")
    nonet["network"] = {"interfaces": []}
    source.bind("vm2", nonet)
    source.bind("vm3", document("i-off"), enabled=False)
    source.bind("vm4", document("i-down"))
    source.failing.add("i-down")
    await server.refresh()
    c1, c2, c3, c4 = [await Client.unix(server.socket_path(n))
                      for n in ("vm1", "vm2", "vm3", "vm4")]

    def err(packet: tuple[str, bytes]) -> dict[str, str]:
        assert packet[0] == "ERROR"
        return dict(json.loads(packet[1]))

    assert err(await c1.request("REQUEST_TIME")) == {"error": "unknown-code",
                                                     "request": "REQUEST_TIME"}
    await c1.send(b"!!REQUEST_METADATA#not*base64\n")
    assert err(await c1.packet())["error"] == "malformed"
    assert err(await c2.request("REQUEST_NETWORKDATA"))["error"] == "not-found"
    assert err(await c3.request("REQUEST_METADATA"))["error"] == "disabled"
    assert err(await c4.request("REQUEST_USERDATA"))["error"] == "unavailable"
    # Still served after errors.
    assert (await c1.request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
    await c3.send(b"<\n\n>")
    assert json.loads(await c3.line()) == {"error": "disabled"}
    for c in (c1, c2, c3, c4):
        await c.close()


async def test_garbage_overlong_and_half_sent_lines(server: SerialServer,
                                                    source: FakeSource) -> None:
    source.bind("vm1", document("i-one"))
    await server.refresh()
    client = await Client.unix(server.socket_path("vm1"))
    await client.send(b"hello\x00\xff world\n" + b"!" * 10000 + b"\n!!\n#\n!!lower#\n")
    assert (await client.request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
    assert server.stats.garbage >= 3 and server.stats.overlong == 1
    # A half-sent packet is dropped after partial_timeout: its tail is then garbage.
    await client.send(b"!!REQUEST_META")
    await asyncio.sleep(0.8)
    await client.send(b"DATA#\n!!REQUEST_USERDATA#\n")
    assert (await client.packet())[0] == "RESPONSE_USERDATA"
    assert server.stats.half_sent == 1
    await client.close()


async def test_packet_rate_is_bounded_per_vm(source: FakeSource, sockdir: Path) -> None:
    srv = SerialServer(source, sockdir, limits=SessionLimits(packet_rate=5.0, packet_burst=5))
    source.bind("vm1", document("i-one"))
    await srv.refresh()
    try:
        client = await Client.unix(srv.socket_path("vm1"))
        await client.send(b"!!REQUEST_METADATA#\n" * 50)
        answers = 0
        while True:
            try:
                await client.packet(timeout=0.5)
                answers += 1
            except TimeoutError:
                break
        assert 5 <= answers <= 8 and srv.stats.rate_limited >= 42
        await client.close()
    finally:
        await srv.close()


async def test_a_flooding_vm_leaves_its_neighbour_on_time(server: SerialServer,
                                                          source: FakeSource) -> None:
    source.bind("flood", document("i-flood"))
    source.bind("calm", document("i-calm"))
    await server.refresh()
    flood = await Client.unix(server.socket_path("flood"))
    calm = await Client.unix(server.socket_path("calm"))
    stop = asyncio.Event()

    async def flooding() -> None:
        junk = (b"x" * 5000 + b"\n" + b"!!REQUEST_METADATA#\n" * 20) * 10
        while not stop.is_set():
            flood.writer.write(junk)
            try:
                await asyncio.wait_for(flood.writer.drain(), 0.2)
            except TimeoutError:
                await asyncio.sleep(0)

    task = asyncio.create_task(flooding())
    try:
        await asyncio.sleep(0.3)
        worst = 0.0
        for _ in range(10):
            started = time.monotonic()
            code, body = await calm.request("REQUEST_METADATA", timeout=2.0)
            worst = max(worst, time.monotonic() - started)
            assert code == "RESPONSE_METADATA" and meta(body)["instance-id"] == "i-calm"
        assert worst < 0.5, f"neighbour answered in {worst:.3f}s during a flood"
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await flood.close()
        await calm.close()


async def test_a_guest_that_does_not_read_is_dropped(source: FakeSource,
                                                     sockdir: Path) -> None:
    srv = SerialServer(source, sockdir, limits=SessionLimits(write_timeout=0.3))
    source.bind("vm1", document("i-one", user_data=os.urandom(3 << 20)))
    await srv.refresh()
    try:
        client = await Client.unix(srv.socket_path("vm1"))
        await client.send(b"!!REQUEST_USERDATA#\n" * 4)
        await asyncio.sleep(1.0)
        # The server gave up: the rest of the stream ends without a full answer set.
        received = 0
        while chunk := await asyncio.wait_for(client.reader.read(1 << 20), 5):
            received += len(chunk)
        assert received < 4 * (4 << 20)
        await client.close()
    finally:
        await srv.close()


async def test_connections_per_name_are_bounded(server: SerialServer,
                                                source: FakeSource) -> None:
    source.bind("vm1", document("i-one"))
    await server.refresh()
    clients = [await Client.unix(server.socket_path("vm1")) for _ in range(4)]
    extra = await Client.unix(server.socket_path("vm1"))
    assert await extra.closed_without_data()
    assert (await clients[3].request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
    for c in [*clients, extra]:
        await c.close()


async def test_stale_socket_replaced_and_foreign_file_left_alone(
        server: SerialServer, source: FakeSource) -> None:
    server.socket_dir.mkdir(parents=True, exist_ok=True)
    (server.socket_dir / "vm2.sock").write_text("not a socket")
    import socket as socketlib
    stale = socketlib.socket(socketlib.AF_UNIX)
    stale.bind(str(server.socket_path("vm1")))
    stale.close()
    source.bind("vm1", document("i-one"))
    source.bind("vm2", document("i-two"))
    await server.refresh()
    client = await Client.unix(server.socket_path("vm1"))
    assert (await client.request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
    assert (server.socket_dir / "vm2.sock").read_text() == "not a socket"
    await client.close()
    await server.close()
    assert not server.socket_path("vm1").exists()
    assert (server.socket_dir / "vm2.sock").exists()


async def test_concentrator_registration(server: SerialServer, source: FakeSource) -> None:
    source.bind("vm1", document("i-one"))
    source.bind("vm2", document("i-two"))
    await server.refresh()
    port = await server.start_tcp("127.0.0.1", 0)
    # Registration and the first guest bytes in one segment.
    c1 = await Client.tcp(port, f"REGISTER vm1 {TOKEN}\r\n!!REQUEST_METADATA#\n".encode())
    assert meta((await c1.packet())[1])["instance-id"] == "i-one"
    # A guest writing a REGISTER line cannot become another VM.
    await c1.send(f"REGISTER vm2 {TOKEN}\n".encode())
    assert meta((await c1.request("REQUEST_METADATA"))[1])["instance-id"] == "i-one"
    c2 = await Client.tcp(port, f"REGISTER vm2 {TOKEN}\n".encode())
    assert meta((await c2.request("REQUEST_METADATA"))[1])["instance-id"] == "i-two"
    await c2.send(b"<\n/uuid\n>")
    assert json.loads(await c2.line()) == "i-two"
    refused = [
        f"REGISTER vm1 {TOKEN[:-1]}x\n".encode(),   # wrong token
        f"REGISTER vm9 {TOKEN}\n".encode(),          # unbound name
        b"!!REQUEST_METADATA#\n",                    # guest bytes first
        f"REGISTER vm1\n{TOKEN}\n".encode(),         # malformed line
        b"REGISTER vm1 " + b"t" * 400,               # no newline within the bound
        b"",                                         # nothing within the timeout
    ]
    for first in refused:
        bad = await Client.tcp(port, first)
        assert await bad.closed_without_data(), first
        await bad.close()
    # Unbinding closes the concentrator's connection too.
    del source.bound["vm1"]
    await server.refresh()
    assert await c1.closed_without_data()
    await c1.close()
    await c2.close()


async def test_concentrator_needs_a_token(source: FakeSource, sockdir: Path) -> None:
    srv = SerialServer(source, sockdir)
    try:
        await srv.start_tcp("127.0.0.1", 0)
    except ValueError as exc:
        assert "token" in str(exc)
    else:
        raise AssertionError("the concentrator port opened without a token")
    finally:
        await srv.close()


async def test_disabling_keeps_the_connection(server: SerialServer,
                                              source: FakeSource) -> None:
    source.bind("vm1", document("i-one"), generation=3)
    await server.refresh()
    client = await Client.unix(server.socket_path("vm1"))
    assert (await client.request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
    source.bind("vm1", document("i-one"), generation=3, enabled=False)
    await server.refresh()
    code, data = await client.request("REQUEST_METADATA")
    assert code == "ERROR" and json.loads(data)["error"] == "disabled"
    source.bind("vm1", document("i-one"), generation=3)
    await server.refresh()
    assert (await client.request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
    await client.close()


async def test_sockets_get_the_configured_group(source: FakeSource, sockdir: Path) -> None:
    gid = sorted(os.getgroups() or [os.getegid()])[-1]
    srv = SerialServer(source, sockdir, socket_mode=0o660, socket_gid=gid)
    source.bind("vm1", document("i-one"))
    try:
        await srv.refresh()
        st = os.stat(srv.socket_path("vm1"))
        assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o660
    finally:
        await srv.close()


async def test_idle_concentrator_connections_are_bounded_and_timed_out(
        source: FakeSource, sockdir: Path) -> None:
    srv = SerialServer(source, sockdir, concentrator_token=TOKEN, limits=SessionLimits(
        max_pending_registrations=3, registration_timeout=0.5))
    source.bind("vm1", document("i-one"))
    await srv.refresh()
    try:
        port = await srv.start_tcp("127.0.0.1", 0)
        idle = [await Client.tcp(port) for _ in range(3)]
        await asyncio.sleep(0.1)
        extra = await Client.tcp(port)
        assert await extra.closed_without_data(timeout=0.3)  # refused at once
        started = time.monotonic()
        for c in idle:
            assert await c.closed_without_data(timeout=3)
        assert time.monotonic() - started < 2.0
        # Capacity is back: a concentrator registers and is served.
        ok = await Client.tcp(port, f"REGISTER vm1 {TOKEN}\n".encode())
        assert (await ok.request("REQUEST_METADATA"))[0] == "RESPONSE_METADATA"
        for c in [*idle, extra, ok]:
            await c.close()
    finally:
        await srv.close()
