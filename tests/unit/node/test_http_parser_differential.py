"""Differential parsing: the node's parser against llhttp (httptools) and h11.

Wherever a well-kept parser would see a different request boundary, method,
target or body, the node's parser must have refused (``http_parser.py``).
Inputs: the grammar of ``tests/fuzz/http_grammar.py`` and mutations of the
requests real cloud-init sends (captured in ``tests/fuzz/cloudinit_seeds.py``).
Every input is also fed split at every byte boundary: the outcome must not
depend on how TCP cut the stream. ``INTERCEPTOR_FUZZ_SCALE`` multiplies the
example counts (CI: 1; a release run: 50).
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interceptor.node.http_parser import ProtocolError, RequestReader
from interceptor.node.limits import HttpLimits
from tests.fuzz import http_grammar
from tests.fuzz.cloudinit_seeds import captured_requests
from tests.fuzz.reference_parsers import Parsed, h11_parse, llhttp

SCALE = int(os.environ.get("INTERCEPTOR_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=1500 * SCALE, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _drain(reader: RequestReader, found: list[Parsed], eof: bool) -> str | None:
    while True:
        try:
            request = reader.next_request(eof)
        except ProtocolError:
            return "refused"
        if request is None:
            return None
        found.append((request.method.encode("latin-1"), request.target.encode("latin-1"),
                      request.body))
        if not request.keep_alive:
            return "closed"


def ours(data: bytes, cut: int | None = None) -> tuple[list[Parsed], str]:
    """What the node answers of ``data`` (fed whole, or in two writes at ``cut``)."""
    reader = RequestReader(HttpLimits())
    found: list[Parsed] = []
    if cut is not None:
        reader.feed(data[:cut])
        state = _drain(reader, found, eof=False)
        if state is not None:
            return found, state
        data = data[cut:]
    reader.feed(data)
    return found, _drain(reader, found, eof=True) or "ok"


def check(data: bytes) -> list[Parsed]:
    mine, _ = ours(data)
    theirs, _ = llhttp(data)
    assert theirs[:len(mine)] == mine, ("llhttp disagrees", data, mine, theirs)
    other, state = h11_parse(data)
    if state == "no-host" and len(other) < len(mine):
        mine = mine[:len(other)]
    assert other[:len(mine)] == mine, ("h11 disagrees", data, mine, other)
    return mine


def check_splits(data: bytes) -> None:
    whole = ours(data)
    for cut in range(len(data) + 1):
        found, state = ours(data, cut)
        assert found == whole[0] and (state == "refused") == (whole[1] == "refused"), \
            ("split changes the outcome", data, cut)


SEEDS = st.integers(min_value=0, max_value=2**64)


@FUZZ
@given(SEEDS)
def test_generated_requests_agree_with_llhttp_and_h11(seed: int) -> None:
    check(http_grammar.request_stream(random.Random(seed)))


@settings(FUZZ, max_examples=300 * SCALE)
@given(SEEDS)
def test_generated_requests_do_not_depend_on_write_boundaries(seed: int) -> None:
    check_splits(http_grammar.request_stream(random.Random(seed)))


@FUZZ
@given(SEEDS)
def test_mutated_cloudinit_requests_agree(seed: int) -> None:
    seeds = captured_requests()
    data = http_grammar.mutate(random.Random(seed), seeds[seed % len(seeds)])
    check(data)


def test_real_cloudinit_requests_are_accepted_by_all_three() -> None:
    """The seeds themselves: every parser reads every real request the same way."""
    seeds = captured_requests()
    assert len(seeds) >= 4
    for data in seeds:
        assert len(check(data)) == 1, data
        check_splits(data)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",  # bare LF ends a header for h11, not for llhttp
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
    b"GET / HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    b"GET /a\x7fb HTTP/1.1\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive-x\r\n\r\nGET /smuggled HTTP/1.0\r\n\r\n",
])
def test_known_disagreements_are_refused_or_end_the_connection(data: bytes) -> None:
    found, state = ours(data)
    assert state in ("refused", "closed") and len(found) <= 1
    check(data)


def test_regression_upgrade_with_content_length_body() -> None:
    """Found by the generator: llhttp reads no body after an Upgrade head."""
    data = (b"GET /vendor-data HTTP/1.0\r\nUpgrade: 0\r\nConnection: upgrade\r\n"
            b"Content-Length: 3\r\n\r\nabcGET /latest/meta-data/ HTTP/1.1\r\n\r\n")
    assert ours(data) == ([], "refused")
    check(data)


def test_regression_http10_keep_alive_then_pipelined_request() -> None:
    """Found by the generator: h11 ends every HTTP/1.0 exchange with a close."""
    data = (b"POST /user-data HTTP/1.0\r\nConnection: Keep-Alive, Upgrade\r\n"
            b"Content-Length: 3\r\n\r\nabcHEAD /openstack/latest/password HTTP/1.1\r\n\r\n")
    assert ours(data) == ([(b"POST", b"/user-data", b"abc")], "closed")
    check(data)


def test_regression_long_poll_with_quoted_last_etag() -> None:
    """Found by tests/e2e/test_live_changes.py: clients put the quoted ETag
    into the query unescaped; RFC 3986 characters only refused it (400)."""
    data = b'GET /latest/meta-data/hostname?wait_for_change=true&last_etag="abc"&timeout_sec=5' \
           b' HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n'
    found, _ = ours(data)
    assert found == [(b"GET", data.split(b" ")[1], b"")]
    check(data)


@pytest.mark.parametrize("authority", [b"other.example\\", b"169.254.169.254^", b"o<"])
def test_regression_absolute_form_with_caret_backslash_or_lt_in_the_host(authority: bytes
                                                                         ) -> None:
    """Found by the generator once targets were widened to visible ASCII:
    llhttp refuses these characters in the authority of an absolute-form target."""
    data = b"GET HTTP://" + authority + b"/meta-data HTTP/1.1\r\n\r\n"
    assert ours(data) == ([], "refused")
    check(data)
