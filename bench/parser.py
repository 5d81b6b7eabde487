"""The guest request parser against llhttp (``httptools``), same inputs, same
run: the requests real cloud-init sends (``tests/fuzz/cloudinit_seeds.py``),
parsed one after another as the node does per connection. Informational:
it shows what replacing the strict parser with llhttp would cost or save
(``tests/unit/node/test_http_parser_differential.py`` proves they agree)."""

from __future__ import annotations

import asyncio
import time

import httptools

from bench.suites_base import Options, Row
from interceptor.node.http_parser import RequestReader
from interceptor.node.limits import HttpLimits
from tests.fuzz.cloudinit_seeds import captured_requests


class _Sink:
    """What the node would need from llhttp: the target and a header dict."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        old = self.headers.get(key)
        text = value.decode("latin-1")
        self.headers[key] = text if old is None else old + ", " + text


def _ours(seeds: tuple[bytes, ...], rounds: int) -> float:
    limits = HttpLimits()
    started = time.perf_counter()
    for _ in range(rounds):
        for data in seeds:
            reader = RequestReader(limits)
            reader.feed(data)
            request = reader.next_request()
            assert request is not None
    return (time.perf_counter() - started) / (rounds * len(seeds))


def _llhttp(seeds: tuple[bytes, ...], rounds: int) -> float:
    sink = _Sink()
    started = time.perf_counter()
    for _ in range(rounds):
        for data in seeds:
            sink.headers = {}
            parser = httptools.HttpRequestParser(sink)
            parser.feed_data(data)
            httptools.parse_url(sink.url)
    return (time.perf_counter() - started) / (rounds * len(seeds))


async def parser(opts: Options) -> list[Row]:
    seeds = await asyncio.to_thread(captured_requests)
    rounds = int(opts.pick(20_000, 5_000))
    ours, theirs = [], []
    for _ in range(3):  # interleaved rounds; the best of each
        ours.append(_ours(seeds, rounds))
        theirs.append(_llhttp(seeds, rounds))
    o, t = min(ours) * 1e6, min(theirs) * 1e6
    return [Row("guest request parser vs llhttp (httptools), real cloud-init requests",
                f"{o:.2f} µs vs {t:.2f} µs per request (head to a Request / to a header dict)",
                "(info)", "INFO", {"ours_us": o, "llhttp_us": t})]
