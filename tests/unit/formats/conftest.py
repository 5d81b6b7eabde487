"""Documents for the renderer tests, from ``tests/data/doc_*.json``."""

from __future__ import annotations

import copy
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from interceptor.formats.document import InstanceDocument, validate_document

DATA = Path(__file__).resolve().parents[2] / "data"
DOC_NAMES = ("normal", "unicode", "empty", "max", "hostile")


def _load(name: str) -> InstanceDocument:
    return validate_document(json.loads((DATA / f"doc_{name}.json").read_text("utf-8")))


@pytest.fixture
def load_doc() -> Callable[[str], InstanceDocument]:
    """A fresh (deep-copied) document per call, so a test may change it."""
    return lambda name: copy.deepcopy(_load(name))


@pytest.fixture(params=DOC_NAMES)
def any_doc(request: pytest.FixtureRequest) -> InstanceDocument:
    return _load(request.param)


BASE_URL = "http://169.254.169.254"


def fetch(doc: InstanceDocument, url: str) -> bytes:
    """What an HTTP client of the node would get for ``url``, 404 raised as
    cloud-init's own UrlError, so its readers treat it as they would on the wire."""
    from cloudinit import url_helper

    from interceptor.formats.router import render_path

    assert url.startswith(BASE_URL), url
    # The node hands the router the percent-decoded path (cloud-init quotes segments).
    result = render_path(doc, urllib.parse.unquote(url[len(BASE_URL):]))
    if result.status != 200:
        raise url_helper.UrlError(OSError(f"HTTP {result.status}"), code=result.status,
                                  url=url)
    return result.body


@pytest.fixture
def fetcher() -> Callable[[InstanceDocument, str], bytes]:
    return fetch
