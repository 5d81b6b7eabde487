"""Fakes for the node unit tests: a clock, a document source, a backend writer."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from interceptor.formats.document import InstanceDocument, validate_document
from interceptor.node.backend_client import BackendError, FetchedDocument

DATA = Path(__file__).resolve().parents[2] / "data"
IID = "i-0123456789abcdef0"  # instance id of tests/data/doc_normal.json


def load_doc(name: str = "normal", **changes: Any) -> InstanceDocument:
    doc = validate_document(json.loads((DATA / f"doc_{name}.json").read_text("utf-8")))
    doc = copy.deepcopy(doc)
    doc.update(changes)  # type: ignore[typeddict-item]
    return doc


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSource:
    """A DocumentSource: serves ``docs[iid]``, 304 when the ETag matches,
    raises ``error`` when set; ``gate`` (when set) holds every answer until opened."""

    def __init__(self) -> None:
        self.docs: dict[str, InstanceDocument] = {}
        self.error: BackendError | None = None
        self.calls: list[tuple[str, str | None]] = []
        self.gate: asyncio.Event | None = None

    def put(self, doc: InstanceDocument) -> None:
        self.docs[doc["instance_id"]] = doc

    def bump(self, iid: str, **changes: Any) -> None:
        doc = copy.deepcopy(self.docs[iid])
        doc.update(changes)  # type: ignore[typeddict-item]
        doc["revision"] += 1
        self.docs[iid] = doc

    async def document(self, instance_id: str, etag: str | None = None
                       ) -> FetchedDocument | None:
        self.calls.append((instance_id, etag))
        # The answer is what the backend held when asked, even if held back.
        error, doc = self.error, copy.deepcopy(self.docs.get(instance_id))
        if self.gate is not None:
            await self.gate.wait()
        if error is not None:
            raise error
        assert doc is not None, instance_id
        tag = f'"{doc["revision"]}"'
        if etag == tag:
            return None
        return FetchedDocument(doc, tag)


class FakeWriter:
    """A GuestWriter recording calls; ``error`` makes every call raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.error: BackendError | None = None

    async def _do(self, *call: str) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append(call)

    async def set_password(self, instance_id: str, text: bytes) -> None:
        await self._do("password", instance_id, text.decode())

    async def delete_meta(self, instance_id: str, cls: str, key: str) -> None:
        await self._do("delete_meta", instance_id, cls, key)

    async def put_meta(self, instance_id: str, cls: str, key: str, value: bytes) -> None:
        await self._do("put_meta", instance_id, cls, key, value.decode())

    async def disable(self, instance_id: str) -> None:
        await self._do("disable", instance_id)

    async def put_guest_data(self, instance_id: str, key: str, value: bytes) -> None:
        await self._do("put_guest", instance_id, key, value.decode())

    async def delete_guest_data(self, instance_id: str, key: str) -> None:
        await self._do("delete_guest", instance_id, key)
