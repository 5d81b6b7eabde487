"""The serial-port metadata protocol: framing, parsing and the answers (pure).

Every packet is one line: ``!!`` + CODE + ``#`` + base64(data) + ``\\n``.

Guest → host (the data of a request is ignored, usually empty):

* ``!!REQUEST_METADATA#``     → ``!!RESPONSE_METADATA#<base64 JSON>``: NoCloud
  meta-data as JSON (``ami-id``, ``instance-id``, ``region``,
  ``availability-zone``, ``tags``, ``public-keys``, ``hostname``,
  ``local-hostname``; ``interceptor.formats.nocloud.meta_data_json``)
* ``!!REQUEST_NETWORKDATA#``  → ``!!RESPONSE_NETWORKDATA#<base64 YAML>``:
  network config version 1 (``interceptor.formats.network``)
* ``!!REQUEST_USERDATA#``     → ``!!RESPONSE_USERDATA#<base64>``: the
  user-data as given (several parts: one multipart document; none: empty)

Errors: ``!!ERROR#<base64 JSON {"error": REASON, "request": CODE}>`` with
REASON one of ``unknown-code`` (a well-formed packet with a code not listed
above), ``malformed`` (a known code whose data is not base64),
``not-found`` (network data of a VM without interfaces), ``disabled``
(metadata is switched off for the VM), ``unavailable`` (the source failed;
retry later). Lines that are not packets are skipped without an answer.

The same stream also carries cloud-init's CloudSigma requests (``<\\n\\n>``,
``<\\n/meta/KEY\\n>``; see ``interceptor/channels/cloudsigma.py``): a line
that is exactly ``<`` starts one, the next line is its key and a ``>``
ends it.

``StreamParser`` is bounded: a line longer than ``max_line`` bytes is
dropped up to its newline, so a hostile guest costs at most ``max_line``
bytes of buffer; ``reset()`` drops a half-sent line (the server calls it
when a partial line sat too long).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from interceptor.formats import nocloud, userdata
from interceptor.formats.document import InstanceDocument
from interceptor.formats.facts import interfaces_of
from interceptor.formats.network import network_config_v1
from interceptor.formats.rendered import json_bytes

MAX_LINE = 4096
ERROR = "ERROR"
_CODE = re.compile(rb"^[A-Z][A-Z0-9_]{0,63}$")
_LEADING_NOISE = b"\x00\r\t "


@dataclass(frozen=True)
class Packet:
    """A well-formed ``!!CODE#data`` packet; ``data`` None when it was not base64."""

    code: str
    data: bytes | None


@dataclass(frozen=True)
class CepkoRequest:
    """A CloudSigma server-context request; ``key`` e.g. ``""`` or ``/meta/ssh_public_key``."""

    key: str


Event = Packet | CepkoRequest


def encode_packet(code: str, data: bytes) -> bytes:
    return b"!!" + code.encode("ascii") + b"#" + base64.b64encode(data) + b"\n"


def error_packet(reason: str, request: str) -> bytes:
    body = json.dumps({"error": reason, "request": request}, ensure_ascii=True).encode()
    return encode_packet(ERROR, body)


class StreamParser:
    """Turns the bytes a guest writes into events; see the module doc."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._line = bytearray()
        self._discarding = False
        self._cepko: str | None = None  # None, "key" (awaiting the key line), "end" (awaiting ">")
        self._cepko_key = b""
        self.garbage = 0
        """Lines (or bytes where a ``>`` was due) skipped because they were no request."""
        self.overlong = 0
        """Lines dropped because they exceeded ``max_line``."""

    @property
    def pending(self) -> bool:
        """True while a request is half sent (bytes buffered, or inside ``<…>``)."""
        return bool(self._line) or self._discarding or self._cepko is not None

    def reset(self) -> None:
        self._line.clear()
        self._discarding = False
        self._cepko = None
        self._cepko_key = b""

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos, size = 0, len(data)
        while pos < size:
            if self._cepko == "end":
                byte = data[pos:pos + 1]
                pos += 1
                if byte == b">":
                    events.append(CepkoRequest(self._cepko_key.decode("ascii", "replace")))
                    self._cepko = None
                elif byte not in (b"\r", b"\n"):
                    self.garbage += 1
                    self._cepko = None
                    pos -= 1  # that byte may start the next line
                continue
            newline = data.find(b"\n", pos)
            end = size if newline < 0 else newline
            if not self._discarding:
                if len(self._line) + end - pos > self.max_line:
                    self._line.clear()
                    self._discarding = True
                    self.overlong += 1
                else:
                    self._line += data[pos:end]
            if newline < 0:
                break
            pos = newline + 1
            if self._discarding:
                self._discarding = False
                self._cepko = None
                continue
            line = bytes(self._line).rstrip(b"\r")
            self._line.clear()
            self._complete(line, events)
        return events

    def _complete(self, line: bytes, events: list[Event]) -> None:
        if self._cepko == "key":
            self._cepko_key = line
            self._cepko = "end"
            return
        line = line.lstrip(_LEADING_NOISE)
        if not line:
            return
        if line == b"<":
            self._cepko = "key"
            return
        if line.startswith(b"!!"):
            code, sep, payload = line[2:].partition(b"#")
            if sep and _CODE.match(code):
                try:
                    decoded: bytes | None = base64.b64decode(payload, validate=True)
                except (binascii.Error, ValueError):
                    decoded = None
                events.append(Packet(code.decode("ascii"), decoded))
                return
        self.garbage += 1


def _metadata(doc: InstanceDocument) -> bytes | None:
    return json_bytes(nocloud.meta_data_json(doc))


def _network(doc: InstanceDocument) -> bytes | None:
    if not interfaces_of(doc):
        return None
    return nocloud.yaml_bytes(network_config_v1(doc))


def _userdata(doc: InstanceDocument) -> bytes | None:
    return userdata.compose(doc) or b""


# request code → (response code, renderer; None from the renderer = not-found)
REQUESTS: dict[str, tuple[str, Callable[[InstanceDocument], bytes | None]]] = {
    "REQUEST_METADATA": ("RESPONSE_METADATA", _metadata),
    "REQUEST_NETWORKDATA": ("RESPONSE_NETWORKDATA", _network),
    "REQUEST_USERDATA": ("RESPONSE_USERDATA", _userdata),
}


def refusal_reason(packet: Packet) -> str | None:
    """Why a packet is refused whatever the document says (None: it needs the
    document), so the server can answer without a source lookup."""
    if packet.code not in REQUESTS:
        return "unknown-code"
    if packet.data is None:
        return "malformed"
    return None


def refusal(packet: Packet) -> bytes | None:
    reason = refusal_reason(packet)
    return None if reason is None else error_packet(reason, packet.code)


def answer(packet: Packet, doc: InstanceDocument) -> bytes:
    """The answer to ``packet`` from the VM's own document."""
    refused = refusal(packet)
    if refused is not None:
        return refused
    response, render = REQUESTS[packet.code]
    body = render(doc)
    if body is None:
        return error_packet("not-found", packet.code)
    return encode_packet(response, body)
