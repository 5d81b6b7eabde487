"""CloudSigma's server-context protocol on a VM's serial port (cloud-init's Cepko).

The guest writes ``<\\n\\n>`` for the whole context or ``<\\n/meta/KEY\\n>``
(any ``/``-separated path) for one value and reads one line of JSON back:
Cepko reads up to ``\\n`` and strips a trailing ``\\x04``. Values are always
JSON-encoded (ASCII), so a multi-line string still fits on one line; a path
that names nothing answers ``null``. The context itself is rendered by
``interceptor.formats.cloudsigma`` from the instance document.
"""

from __future__ import annotations

import json

from interceptor.formats import cloudsigma
from interceptor.formats.document import InstanceDocument


def encode_answer(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def answer(key: str, doc: InstanceDocument) -> bytes:
    path = [part for part in key.strip().split("/") if part]
    return encode_answer(cloudsigma.lookup(cloudsigma.server_context(doc), path))


def error_answer(reason: str) -> bytes:
    """What a CloudSigma request gets when the VM has no document to give."""
    return encode_answer({"error": reason})
