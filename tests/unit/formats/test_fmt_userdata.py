"""User-data composition: none → None, one part as is, several as multipart MIME."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from email.message import Message
from pathlib import Path

from cloudinit import helpers as ci_helpers
from cloudinit import user_data as ci_user_data

from interceptor.formats import userdata
from interceptor.formats.document import InstanceDocument, UserDataPart, encode_b64


def _part(name: str, ctype: str, data: bytes) -> UserDataPart:
    return {"name": name, "content_type": ctype, "data_b64": encode_b64(data)}


def _mime_parts(body: bytes | None) -> list[Message]:
    assert body is not None
    message = email.message_from_bytes(body, policy=email.policy.compat32)
    assert message.get_content_type() == "multipart/mixed"
    parts = message.get_payload()
    assert isinstance(parts, list)
    return [p for p in parts if isinstance(p, Message)]


def test_no_parts_is_none(load_doc: Callable[[str], InstanceDocument]) -> None:
    assert userdata.compose(load_doc("empty")) is None


def test_one_part_is_its_bytes(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("empty")
    raw = b"\x1f\x8b\x08\x00 gzip-ish \x00\xff"
    doc["user_data"] = [_part("only", "application/x-gzip", raw)]
    assert userdata.compose(doc) == raw


def test_several_parts_parse_back(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("empty")
    payloads = [b"#cloud-config\n{}\n", b"#!/bin/sh\r\necho crlf\r\n", bytes(range(256)), b""]
    doc["user_data"] = [
        _part("cfg", "text/cloud-config", payloads[0]),
        _part("script.sh", "text/x-shellscript", payloads[1]),
        _part("blob", "application/octet-stream", payloads[2]),
        _part("empty", "text/plain; charset=utf-8", payloads[3]),
    ]
    parts = _mime_parts(userdata.compose(doc))
    assert [p.get_content_type() for p in parts] == [
        "text/cloud-config", "text/x-shellscript", "application/octet-stream", "text/plain"]
    assert [p.get_payload(decode=True) for p in parts] == payloads
    assert [p.get_filename() for p in parts] == ["cfg", "script.sh", "blob", "empty"]


def test_boundary_is_deterministic_and_content_dependent(
        load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    first = userdata.compose(doc)
    assert first == userdata.compose(load_doc("normal"))
    doc["user_data"][1]["data_b64"] = encode_b64(b"#!/bin/sh\necho changed\n")
    second = userdata.compose(doc)
    assert first is not None and second is not None
    assert first.split(b"\n", 1)[0] != second.split(b"\n", 1)[0]


def test_headers_cannot_be_injected(load_doc: Callable[[str], InstanceDocument]) -> None:
    parts = _mime_parts(userdata.compose(load_doc("hostile")))
    assert len(parts) == 2  # the undecodable part is skipped
    for part in parts:
        assert part.get("X-Injected") is None and part.get("X-Evil") is None
        assert "/" not in (part.get_filename() or "")
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/plain"]


def test_unicode_filename(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("unicode")
    doc["user_data"].append(_part("zweite-ü", "text/x-shellscript", b"#!/bin/sh\n"))
    body = userdata.compose(doc)
    assert body is not None
    body.decode("ascii")  # headers stay ASCII (RFC 2231 for the name)
    parts = _mime_parts(body)
    assert [p.get_filename() for p in parts] == ["ユーザー", "zweite-ü"]


def test_cloud_init_reads_the_parts(load_doc: Callable[[str], InstanceDocument],
                                    tmp_path: Path) -> None:
    doc = load_doc("normal")
    doc["user_data"].append(_part("plain", "text/plain", b"#cloud-config\nfoo: bar\n"))
    body = userdata.compose(doc)
    paths = ci_helpers.Paths({"cloud_dir": str(tmp_path)})
    message = ci_user_data.UserDataProcessor(paths).process(body)
    types = [p.get_content_type() for p in message.walk() if not p.is_multipart()]
    # text/plain is typed by cloud-init from the first line
    assert types == ["text/cloud-config", "text/x-shellscript", "text/cloud-config"]


def test_safe_content_type() -> None:
    assert userdata.safe_content_type("text/cloud-config") == "text/cloud-config"
    quoted = 'text/plain; charset="utf-8"'
    assert userdata.safe_content_type(quoted) == quoted
    for bad in ("", "text", "text/plain\r\nX: y", "text/plain; a=\"\n\"", "a b/c"):
        assert userdata.safe_content_type(bad) == userdata.FALLBACK_CONTENT_TYPE
