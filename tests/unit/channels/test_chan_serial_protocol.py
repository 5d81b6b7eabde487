"""The serial packet parser and answers (pure), with a bounded fuzz run."""

from __future__ import annotations

import base64
import itertools
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interceptor.channels import cloudsigma, serial_protocol
from interceptor.channels.serial_protocol import CepkoRequest, Packet, StreamParser
from tests.channels.support import decode_packets, document


def test_packets_in_one_chunk_and_byte_by_byte() -> None:
    stream = (b"!!REQUEST_METADATA#\n!!REQUEST_USERDATA#\r\n<\n\n><\n/meta/ssh_public_key\n>"
              b"!!REQUEST_NETWORKDATA#aGk=\n")
    expected = [Packet("REQUEST_METADATA", b""), Packet("REQUEST_USERDATA", b""),
                CepkoRequest(""), CepkoRequest("/meta/ssh_public_key"),
                Packet("REQUEST_NETWORKDATA", b"hi")]
    assert StreamParser().feed(stream) == expected
    parser = StreamParser()
    events = [e for i in range(len(stream)) for e in parser.feed(stream[i:i + 1])]
    assert events == expected and not parser.pending


def test_garbage_is_skipped_and_counted() -> None:
    parser = StreamParser()
    events = parser.feed(b"login: \n!!\n!!#\n!!lower#\n!!A B#\n\x00\x00!!REQUEST_METADATA#\n"
                         b"<\nkey\n!!REQUEST_USERDATA#\n")
    assert events == [Packet("REQUEST_METADATA", b""), Packet("REQUEST_USERDATA", b"")]
    assert parser.garbage == 6


def test_overlong_line_dropped_up_to_its_newline() -> None:
    parser = StreamParser(max_line=64)
    assert parser.feed(b"!!REQUEST_METADATA#" + b"A" * 100) == []
    assert parser.pending
    assert parser.feed(b"AAAA\n!!REQUEST_USERDATA#\n") == [Packet("REQUEST_USERDATA", b"")]
    assert parser.overlong == 1 and not parser.pending


def test_reset_drops_a_half_sent_packet() -> None:
    parser = StreamParser()
    parser.feed(b"!!REQUEST_META")
    parser.reset()
    assert parser.feed(b"DATA#\n") == [] and parser.garbage == 1


def test_answers_render_the_document() -> None:
    doc = document("i-one")
    code, data = decode_packets(serial_protocol.answer(Packet("REQUEST_METADATA", b""), doc))[0]
    meta = json.loads(data)
    assert code == "RESPONSE_METADATA"
    assert set(meta) == {"ami-id", "instance-id", "region", "availability-zone", "tags",
                         "public-keys", "hostname", "local-hostname"}
    assert meta["instance-id"] == "i-one" and isinstance(meta["public-keys"], list)
    assert isinstance(meta["tags"], list)
    code, data = decode_packets(serial_protocol.answer(Packet("REQUEST_NETWORKDATA", b""),
                                                       doc))[0]
    assert code == "RESPONSE_NETWORKDATA" and yaml.safe_load(data)["version"] == 1
    code, data = decode_packets(serial_protocol.answer(Packet("REQUEST_USERDATA", b""), doc))[0]
    assert (code, data) == ("RESPONSE_USERDATA", b"#cloud-config\n# i-one\n")
    code, data = decode_packets(serial_protocol.answer(Packet("NOPE", b""), doc))[0]
    assert code == "ERROR" and json.loads(data) == {"error": "unknown-code", "request": "NOPE"}
    # One line per packet, whatever the content.
    assert serial_protocol.answer(Packet("REQUEST_USERDATA", b""), doc).count(b"\n") == 1


def test_cloudsigma_answers_are_one_json_line() -> None:
    doc = document("i-one")
    whole = json.loads(cloudsigma.answer("", doc))
    assert whole["uuid"] == "i-one" and whole["name"] == "i-one"
    assert base64.b64decode(whole["meta"]["cloudinit-user-data"]) == (
        b"#cloud-config\n# i-one\n")
    assert whole["meta"]["base64_fields"] == "cloudinit-user-data"
    keys = json.loads(cloudsigma.answer("/meta/ssh_public_key", doc))
    # One key per line inside the JSON string, and the answer itself one line.
    assert keys.count("\n") == len(doc["ssh_keys"]) - 1
    assert cloudsigma.answer("/meta/ssh_public_key", doc).count(b"\n") == 1
    assert json.loads(cloudsigma.answer("/nothing/here", doc)) is None


# -- fuzz ---------------------------------------------------------------------------------

_TOKENS = st.sampled_from([b"!!", b"#", b"\n", b"\r", b"<", b">", b"\x00", b"REQUEST_",
                           b"METADATA", b"USERDATA", b"NETWORKDATA", b"/meta/", b"=", b"A"])
_STREAM = st.lists(st.one_of(st.binary(max_size=64), _TOKENS), max_size=80).map(b"".join)


@pytest.mark.timeout(60)  # bounded in CI: a fixed number of examples, a hard cap
@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(stream=_STREAM, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_fuzz_parser_never_crashes_and_stays_bounded(stream: bytes, cuts: list[int]) -> None:
    parser = StreamParser(max_line=128)
    whole = StreamParser(max_line=128).feed(stream)
    events = []
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(points):
        events += parser.feed(stream[start:end])
        assert len(parser._line) <= 128
    # Chunking never changes what the guest asked.
    assert events == whole
    for event in events:
        if isinstance(event, Packet):
            assert event.code.isascii() and event.code[:1].isupper()
        else:
            assert isinstance(event, CepkoRequest) and len(event.key) <= 128


@pytest.mark.timeout(60)  # bounded in CI: a fixed number of examples, a hard cap
@settings(max_examples=200, deadline=None, database=None)
@given(stream=_STREAM)
def test_fuzz_answers_only_carry_the_vms_own_data(stream: bytes) -> None:
    mine, other = document("i-mine-4c1f"), document("i-other-9e2b")
    parser = StreamParser()
    for event in parser.feed(stream + b"\n"):
        if isinstance(event, Packet):
            raw = serial_protocol.answer(event, mine)
            assert raw.endswith(b"\n") and raw.count(b"\n") == 1
            decoded = b"".join(d for _, d in decode_packets(raw))
        else:
            raw = cloudsigma.answer(event.key, mine)
            decoded = raw
        assert b"i-other-9e2b" not in decoded
        assert other["instance_id"].encode() not in raw
