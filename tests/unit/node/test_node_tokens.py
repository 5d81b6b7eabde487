from __future__ import annotations

import pytest

from interceptor.node.tokens import TokenIssuer, TokenStatus, parse_ttl
from tests.unit.node.node_fakes import FakeClock


def test_issue_and_validate_for_same_instance() -> None:
    clock = FakeClock(5000.0)
    issuer = TokenIssuer(b"k" * 32, clock=clock)
    token = issuer.issue("i-1", 60)
    assert issuer.check(token, "i-1") is TokenStatus.VALID
    assert len(token) < 128 and "\n" not in token


def test_token_of_other_instance_is_rejected() -> None:
    issuer = TokenIssuer(b"secret")
    token = issuer.issue("i-1", 60)
    assert issuer.check(token, "i-2") is TokenStatus.BAD_SIGNATURE


def test_expiry_is_exact() -> None:
    clock = FakeClock(5000.0)
    issuer = TokenIssuer("secret", clock=clock)
    token = issuer.issue("i-1", 10)
    clock.advance(9.5)
    assert issuer.check(token, "i-1") is TokenStatus.VALID
    clock.advance(0.5)
    assert issuer.check(token, "i-1") is TokenStatus.EXPIRED


def test_other_secret_and_random_secret() -> None:
    a, b = TokenIssuer(b"one"), TokenIssuer(b"two")
    assert b.check(a.issue("i-1", 60), "i-1") is TokenStatus.BAD_SIGNATURE
    # Two issuers without a configured secret (= two daemon starts) do not share tokens.
    r1, r2 = TokenIssuer(None), TokenIssuer("")
    assert r2.check(r1.issue("i-1", 60), "i-1") is TokenStatus.BAD_SIGNATURE
    # The same configured secret in two workers: tokens carry over.
    assert TokenIssuer(b"one").check(a.issue("i-1", 60), "i-1") is TokenStatus.VALID


def test_tampered_expiry_is_rejected() -> None:
    clock = FakeClock(5000.0)
    issuer = TokenIssuer(b"s", clock=clock)
    token = issuer.issue("i-1", 1)
    payload, mac = token.split(".")
    longer = issuer.issue("i-1", 21600).split(".")[0]
    assert issuer.check(longer + "." + mac, "i-1") is TokenStatus.BAD_SIGNATURE
    assert issuer.check(payload + "." + mac, "i-1") is TokenStatus.VALID


@pytest.mark.parametrize("bad", ["", "abc", "a.b.c", "....", "x" * 500, "AAAA.AAAA",
                                 "!!!!.????", "\u00e9\u00e9.\u00e9"])
def test_malformed(bad: str) -> None:
    assert TokenIssuer(b"s").check(bad, "i-1") is TokenStatus.MALFORMED


@pytest.mark.parametrize(("text", "ttl"), [("1", 1), ("21600", 21600), (" 60 ", 60),
                                           ("0", None), ("21601", None), ("-1", None),
                                           ("abc", None), ("", None), (None, None),
                                           ("1e3", None), ("\u0661\u0662", None)])
def test_parse_ttl(text: str | None, ttl: int | None) -> None:
    assert parse_ttl(text) == ttl


def test_issue_refuses_bad_ttl() -> None:
    with pytest.raises(ValueError, match="TTL"):
        TokenIssuer(b"s").issue("i-1", 0)
