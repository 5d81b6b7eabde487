"""Property tests (hypothesis) for IMDSv2 tokens (``interceptor/node/tokens.py``)
and the node → backend request signature (``interceptor/common/signing.py``):
expiry, binding to the instance, tampering, TTL bounds, restarts with and
without ``token_secret``; replay, clock skew, another node's instance,
reordered fields, another body.
"""

from __future__ import annotations

import os
import string

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from interceptor.common.signing import (
    HEADER_CONTENT,
    HEADER_INSTANCE,
    HEADER_NODE,
    MAX_SKEW_SECONDS,
    body_matches,
    sign,
    verify,
)
from interceptor.node.tokens import (
    MAX_TTL_SECONDS,
    MIN_TTL_SECONDS,
    TokenIssuer,
    TokenStatus,
    parse_ttl,
)

SCALE = int(os.environ.get("INTERCEPTOR_FUZZ_SCALE", "1"))
PROPS = settings(max_examples=300 * SCALE, deadline=None, database=None)

instance_ids = st.text(min_size=1, max_size=40)
ttls = st.integers(MIN_TTL_SECONDS, MAX_TTL_SECONDS)
times = st.floats(1e9, 4e9, allow_nan=False)
secrets_ = st.binary(min_size=1, max_size=64)
B64 = string.ascii_letters + string.digits + "-_."


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@PROPS
@given(secrets_, instance_ids, ttls, times, st.floats(0, 1))
def test_token_valid_until_its_expiry_then_expired(secret: bytes, iid: str, ttl: int,
                                                   now: float, frac: float) -> None:
    clock = Clock(now)
    issuer = TokenIssuer(secret, clock=clock)
    token = issuer.issue(iid, ttl)
    clock.now = now + ttl * frac * 0.999
    assert issuer.check(token, iid) is TokenStatus.VALID
    left = issuer.seconds_left(token)
    assert left is not None and 0 < left <= ttl + 1
    clock.now = now + ttl + 1
    assert issuer.check(token, iid) is TokenStatus.EXPIRED


@PROPS
@given(secrets_, instance_ids, instance_ids, ttls)
def test_token_is_bound_to_its_instance(secret: bytes, iid: str, other: str, ttl: int) -> None:
    assume(iid != other)
    issuer = TokenIssuer(secret)
    assert issuer.check(issuer.issue(iid, ttl), other) is TokenStatus.BAD_SIGNATURE


@PROPS
@given(secrets_, instance_ids, ttls, st.data())
def test_any_tampering_is_refused(secret: bytes, iid: str, ttl: int, data: st.DataObject
                                  ) -> None:
    issuer = TokenIssuer(secret)
    token = issuer.issue(iid, ttl)
    pos = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(B64))
    tampered = token[:pos] + char + token[pos + 1:]
    assume(tampered != token)
    # Base64 without padding: the last character's low bits may not count, so
    # a change there can decode to the same bytes; everything else must fail.
    status = issuer.check(tampered, iid)
    if status is TokenStatus.VALID:
        assert pos == len(token) - 1 or token[pos + 1] == "."


@PROPS
@given(secrets_, st.text(max_size=200), instance_ids)
def test_arbitrary_header_values_never_raise_and_never_pass(secret: bytes, text: str,
                                                             iid: str) -> None:
    assert TokenIssuer(secret).check(text, iid) is not TokenStatus.VALID


@PROPS
@given(st.integers(-10**7, 10**7) | st.text(max_size=12))
def test_ttl_bounds(value: int | str) -> None:
    text = str(value)
    parsed = parse_ttl(text)
    stripped = text.strip()
    in_range = (stripped.isascii() and stripped.isdigit() and len(stripped) <= 6
                and MIN_TTL_SECONDS <= int(stripped) <= MAX_TTL_SECONDS)
    assert (parsed is not None) == in_range
    if isinstance(value, int) and not MIN_TTL_SECONDS <= value <= MAX_TTL_SECONDS:
        try:
            TokenIssuer(b"k").issue("i", value)
        except ValueError:
            pass
        else:
            raise AssertionError(f"issued a token with TTL {value}")


@PROPS
@given(secrets_, instance_ids, ttls)
def test_restart_keeps_tokens_only_with_a_configured_secret(secret: bytes, iid: str,
                                                            ttl: int) -> None:
    token = TokenIssuer(secret).issue(iid, ttl)
    assert TokenIssuer(secret).check(token, iid) is TokenStatus.VALID  # same token_secret
    assert TokenIssuer(None).check(token, iid) is TokenStatus.BAD_SIGNATURE  # random secret
    fresh = TokenIssuer(None)
    assert TokenIssuer(None).check(fresh.issue(iid, ttl), iid) is TokenStatus.BAD_SIGNATURE


names = st.text(alphabet=string.ascii_letters + string.digits + "-._", min_size=1,
                max_size=20)
paths = st.text(alphabet=string.ascii_letters + string.digits + "/-._?=&%", min_size=1,
                max_size=60).map(lambda p: "/" + p)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE"])
bodies = st.binary(max_size=64)
KEY = b"platform-signing-key"


@PROPS
@given(names, names, methods, paths, bodies, st.integers(1_600_000_000, 2_000_000_000),
       st.integers(-MAX_SKEW_SECONDS, MAX_SKEW_SECONDS))
def test_signature_round_trip_within_skew(node: str, iid: str, method: str, path: str,
                                          body: bytes, ts: int, skew: int) -> None:
    headers = sign(KEY, node, iid, method, path, ts, body=body)
    assert verify(KEY, headers, method, path, now=ts + skew) == (node, iid)
    assert body_matches(headers, body)


@PROPS
@given(names, names, methods, paths, st.integers(1_600_000_000, 2_000_000_000),
       st.integers(MAX_SKEW_SECONDS + 1, 10**6))
def test_replay_outside_the_skew_is_refused(node: str, iid: str, method: str, path: str,
                                            ts: int, late: int) -> None:
    headers = sign(KEY, node, iid, method, path, ts)
    assert verify(KEY, headers, method, path, now=ts + late) is None
    assert verify(KEY, headers, method, path, now=ts - late) is None


@PROPS
@given(names, names, names, methods, paths, paths, bodies, bodies)
def test_signature_binds_every_field(node: str, iid: str, other: str, method: str, path: str,
                                     other_path: str, body: bytes, other_body: bytes) -> None:
    headers = sign(KEY, node, iid, method, path, body=body)
    if other != iid:  # another node's (or this node's other) instance
        assert verify(KEY, {**headers, HEADER_INSTANCE: other}, method, path) is None
    if other != node:
        assert verify(KEY, {**headers, HEADER_NODE: other}, method, path) is None
    if other_path != path:
        assert verify(KEY, headers, method, other_path) is None
    assert verify(KEY, headers, "PATCH", path) is None
    assert verify(b"another-key", headers, method, path) is None
    if other_body != body:
        assert not body_matches(headers, other_body)
        forged = sign(KEY, node, iid, method, path, body=other_body)[HEADER_CONTENT]
        assert verify(KEY, {**headers, HEADER_CONTENT: forged}, method, path) is None


@PROPS
@given(names, names, methods, paths)
def test_reordered_fields_do_not_verify(node: str, iid: str, method: str, path: str) -> None:
    assume(node != iid)
    headers = sign(KEY, node, iid, method, path)
    swapped = {**headers, HEADER_NODE: iid, HEADER_INSTANCE: node}
    assert verify(KEY, swapped, method, path) is None


@PROPS
@given(st.dictionaries(st.text(max_size=40), st.text(max_size=80), max_size=8), methods, paths)
def test_arbitrary_headers_never_raise_and_never_pass(headers: dict[str, str], method: str,
                                                      path: str) -> None:
    assert verify(KEY, headers, method, path) is None


def test_a_newline_in_a_signed_field_is_refused() -> None:
    """Fields are newline-joined: a newline could move a boundary between them."""
    try:
        sign(KEY, "node\n", "i", "GET", "/x")
    except ValueError:
        pass
    else:
        raise AssertionError("signed a field with a newline")
    good = sign(KEY, "node", "a", "GET", "/x", 1_700_000_000)
    assert verify(KEY, {**good, HEADER_INSTANCE: "a\n"}, "GET", "/x", now=1_700_000_000) is None
