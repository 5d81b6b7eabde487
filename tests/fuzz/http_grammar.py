"""Hostile guest HTTP, generated: one grammar for every fuzzer.

``request_stream(rng)`` builds bytes a guest might send: request lines,
header sets, pipelining, ``Transfer-Encoding``/``Content-Length``
combinations, obsolete line folding, NUL and non-ASCII bytes, over-long
lines and header counts, ``%``-encoded and dot-segment paths. ``mutate(rng,
data)`` damages a real request (byte flips, insertions, deletions,
duplicated or swapped slices, a changed line ending). ``rng`` is any
``random.Random``: the e2e fuzzer seeds one, the unit tests seed one
with an integer hypothesis draws (a failure prints its input).
"""

from __future__ import annotations

import random

METHODS = ["GET", "GET", "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH",
           "get", "BREW", "G(T", "", "CONNECT", "TRACE", "GET\x00"]
PATHS = [
    "/", "/latest/meta-data/", "/latest/meta-data/instance-id", "/latest/user-data",
    "/latest/api/token", "/latest/dynamic/instance-identity/document",
    "/openstack/latest/meta_data.json", "/openstack/latest/password",
    "/meta-data", "/user-data", "/vendor-data", "/metadata",
    "/interceptor/v1/guest-data/k", "/interceptor/v1/meta/public/k",
]
TARGET_TWISTS = [
    "", "?", "?wait_for_change=true&timeout_sec=0", "?a=%zz", "#frag", "/..", "/../..",
    "/./", "%2e%2e/", "%2F", "%00", "%ff", "%", "%4", "//", "\\", " ", "\t", "\x00",
    "\x7f", "\xe9", "{", "|", "^", "`", "\"", "<", ">", "*", "@", ";x=1",
]
VERSIONS = ["HTTP/1.1"] * 6 + ["HTTP/1.0"] * 2 + [
    "HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/01.1", "HTTP/1", "", "HTTP/0.9"]
EOLS = ["\r\n"] * 12 + ["\n", "\r", "\r\r\n", "\n\r"]
SEPARATORS = [" "] * 12 + ["  ", "\t", "", " \t"]
HEADER_NAMES = [
    "Host", "Host", "User-Agent", "Accept", "Connection", "Content-Length",
    "Transfer-Encoding", "Expect", "Upgrade", "X-aws-ec2-metadata-token",
    "X-aws-ec2-metadata-token-ttl-seconds", "X-Forwarded-For", "X-Instance-ID",
    "X-Tenant-ID", "Forwarded", "X-Real-IP", "Content-Type", "If-None-Match",
    "Bad Name", "Host ", " Host", "", "X\x00", "\xe9", "content-length", "CONTENT-LENGTH",
]
HEADER_VALUES = [
    "169.254.169.254", "close", "keep-alive", "Keep-Alive, Upgrade", "upgrade", "chunked",
    " chunked", "gzip, chunked", "identity", "100-continue", "21600", "0", "1", "5", "007",
    "1, 1", "+1", "-1", " 3 ", "3\x00", "99999999999999999999", "", "a\x00b", "a\x7fb",
    "\xe9t\xe9", "a\rb", "a\nb", "10.0.0.99", "for=10.0.0.99", "i-other", "\"e1\"",
    "x" * 300,
]


GOOD_NAMES = HEADER_NAMES[:18]
GOOD_VALUES = [v for v in HEADER_VALUES if all(" " <= c <= "~" for c in v)]


def _pick(rng: random.Random, items: list[str]) -> str:
    return items[rng.randrange(len(items))]


def _odd(rng: random.Random, p: float, good: str, odd: list[str]) -> str:
    """``good``, or with probability ``p`` one of the ``odd`` choices."""
    return _pick(rng, odd) if rng.random() < p else good


def _target(rng: random.Random, p: float) -> str:
    path = _pick(rng, PATHS)
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3)) if rng.random() < p * 3 else 0):
        twist = _pick(rng, TARGET_TWISTS)
        cut = rng.randrange(len(path) + 1)
        path = path[:cut] + twist + path[cut:]
    roll = rng.random()
    if roll < p / 2:
        return "*"
    if roll > 1 - p:
        path = "http://169.254.169.254" + path
    elif roll > 1 - p * 1.3:
        path = "HTTP://other.example" + path
    elif roll > 1 - p * 1.5:
        path = "/" + "a" * rng.choice((100, 4000, 9000)) + path
    return path


def _header(rng: random.Random, body_len: int, p: float) -> str:
    name = _pick(rng, HEADER_NAMES if rng.random() < p else GOOD_NAMES)
    value = _pick(rng, HEADER_VALUES if rng.random() < p else GOOD_VALUES)
    if name.lower() == "content-length" and rng.random() < 0.8:
        value = str(body_len + (rng.choice((1, -1)) if rng.random() < p else 0))
    colon = _odd(rng, p / 3, ":", [" :", "", "::"])
    space = _odd(rng, p, " ", ["", "\t", "  "])
    line = f"{name}{colon}{space}{value}"
    if rng.random() < p / 5:  # obsolete line folding
        line += "\r\n" + _pick(rng, [" ", "\t"]) + "folded"
    return line


def request(rng: random.Random) -> bytes:
    """One request: well formed, or odd in a few places (how odd is drawn too)."""
    p = rng.choice((0.0, 0.0, 0.01, 0.03, 0.1, 0.3))
    eol = _odd(rng, p, "\r\n", EOLS)
    body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 0, 0, 1, 3, 20))))
    method = _odd(rng, p, _pick(rng, METHODS[:9]), METHODS)
    version = _odd(rng, p, _pick(rng, VERSIONS[:8]), VERSIONS)
    line = (f"{method}{_odd(rng, p, ' ', SEPARATORS)}{_target(rng, p)}"
            f"{_odd(rng, p, ' ', SEPARATORS)}{version}")
    count = rng.choice((0, 1, 2, 3, 4, 6)) if rng.random() >= p / 3 else \
        rng.choice((64, 65, 200))
    lines = [line] + [_header(rng, len(body), p) for _ in range(count)]
    if body and rng.random() > p:
        lines.append(f"Content-Length: {len(body)}")
    head = eol.join(lines) + eol + _odd(rng, p, eol, EOLS)
    lead = _odd(rng, p / 3, "", ["\r\n", "\r\n\r\n", "\n", "\r"])
    return (lead + head).encode("latin-1") + body


def request_stream(rng: random.Random) -> bytes:
    """One to three pipelined requests, sometimes with trailing junk."""
    data = b"".join(request(rng) for _ in range(rng.choice((1, 1, 1, 2, 3))))
    if rng.random() < 0.05:
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    return data


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits of ``data`` (a real client's request)."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        op = rng.randrange(7)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[pos:pos] = bytes([rng.choice((0, 9, 10, 13, 32, 37, 46, 47, 58, 127, 255))])
        elif op == 2 and out:
            del out[pos:pos + rng.randrange(1, 8)]
        elif op == 3 and out:
            end = min(len(out), pos + rng.randrange(1, 40))
            out[pos:pos] = out[pos:end]
        elif op == 4:
            out = out.replace(b"\r\n", rng.choice((b"\n", b"\r", b"\r\r\n")), 1)
        elif op == 5:
            out[pos:pos] = rng.choice((b"\r\n", b"Content-Length: 1\r\n",
                                       b"Transfer-Encoding: chunked\r\n", b"%2e%2e/", b"\x00"))
        else:
            out += data  # pipelined copy
    return bytes(out)
