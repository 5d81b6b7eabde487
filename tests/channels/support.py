"""Shared pieces of the serial-channel tests: a scriptable source, documents, a client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from interceptor.channels.sources import (
    MetadataDisabled,
    NotBound,
    SerialBinding,
    SourceUnavailable,
)
from interceptor.formats.document import InstanceDocument, encode_b64, validate_document

DATA = Path(__file__).resolve().parents[1] / "data"


def document(instance_id: str, hostname: str | None = None, *,
             user_data: bytes | None = None) -> InstanceDocument:
    """``tests/data/doc_normal.json`` as instance ``instance_id`` (its own user-data)."""
    doc = validate_document(json.loads((DATA / "doc_normal.json").read_text("utf-8")))
    doc = copy.deepcopy(doc)
    doc["instance_id"] = instance_id
    doc["hostname"] = hostname or instance_id
    body = user_data if user_data is not None else f"#cloud-config\n# {instance_id}\n".encode()
    doc["user_data"] = [{"name": "user", "content_type": "text/cloud-config",
                         "data_b64": encode_b64(body)}]
    return doc


class FakeSource:
    """A ``SerialSource`` whose bindings and documents a test sets directly."""

    def __init__(self) -> None:
        self.bound: dict[str, SerialBinding] = {}
        self.docs: dict[str, InstanceDocument] = {}
        self.failing: set[str] = set()
        self.delay = 0.0
        self.calls = 0
        self._changed = asyncio.Event()

    def bind(self, name: str, doc: InstanceDocument, *, enabled: bool = True,
             generation: int = 0) -> SerialBinding:
        binding = SerialBinding(name, doc["instance_id"], enabled, generation)
        self.bound[name] = binding
        self.docs[doc["instance_id"]] = doc
        return binding

    async def bindings(self) -> Mapping[str, SerialBinding]:
        return dict(self.bound)

    async def document(self, binding: SerialBinding) -> InstanceDocument:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.bound.get(binding.name) != binding:
            raise NotBound(binding.name)
        if binding.instance_id in self.failing:
            raise SourceUnavailable("backend down")
        if not binding.metadata_enabled:
            raise MetadataDisabled(binding.name)
        return self.docs[binding.instance_id]

    async def follow(self, on_change: Callable[[], Awaitable[None]]) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            await on_change()

    def changed(self) -> None:
        self._changed.set()


def decode_packets(raw: bytes) -> list[tuple[str, bytes]]:
    """``(code, data)`` of every ``!!CODE#base64`` line in ``raw``."""
    out = []
    for line in raw.split(b"\n"):
        if line.startswith(b"!!"):
            code, _, data = line[2:].partition(b"#")
            out.append((code.decode(), base64.b64decode(data)))
    return out


class Client:
    """A guest end of one serial connection (UNIX socket or TCP)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def unix(cls, path: Path | str) -> Client:
        return cls(*await asyncio.open_unix_connection(str(path)))

    @classmethod
    async def tcp(cls, port: int, first: bytes = b"") -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        if first:
            await client.send(first)
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def packet(self, timeout: float = 5.0) -> tuple[str, bytes]:
        while True:
            found = decode_packets(await self.line(timeout))
            if found:
                return found[0]

    async def request(self, code: str, timeout: float = 5.0) -> tuple[str, bytes]:
        await self.send(f"!!{code}#\n".encode())
        return await self.packet(timeout)

    async def closed_without_data(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection without sending a byte."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
