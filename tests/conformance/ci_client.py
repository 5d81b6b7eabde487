"""Shared set-up of the cloud-init crawl scripts (run by the system Python,
``/usr/bin/python3``, inside a guest namespace; never imported by pytest).

Each script builds a real cloud-init datasource object the way cloud-init's
``init`` stage does (``Paths`` + a Debian ``Distro`` + system config), runs
its crawl against http://169.254.169.254 and prints one JSON object on
stdout. cloud-init's own debug log goes to stderr for failure messages.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import tempfile
from typing import Any

from cloudinit import distros, helpers, user_data

METADATA_URL = os.environ.get("CI_METADATA_URL", "http://169.254.169.254")
"""Where the crawl goes: ``CI_METADATA_URL`` when set (the IPv6 tests);
"cloud-init" leaves the datasource's own default list in place."""


def metadata_urls() -> dict[str, list[str]]:
    """The ``metadata_urls`` datasource setting for :data:`METADATA_URL`."""
    return {} if METADATA_URL == "cloud-init" else {"metadata_urls": [METADATA_URL]}


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG,
                        format="%(name)s %(levelname)s %(message)s", force=True)


def environment(tmp: str) -> tuple[Any, Any]:
    """(paths, distro) as cloud-init makes them, rooted in a temporary directory."""
    paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp, "templates_dir": tmp})
    distro = distros.fetch("debian")("debian", {}, paths)
    return paths, distro


def tempdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="ci-crawl-")


def b64(data: Any) -> str | None:
    """Bytes (or text) as base64, so user-data travels through JSON exactly."""
    if data is None:
        return None
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": b64(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def userdata_parts(paths: Any, raw: Any) -> list[dict[str, Any]]:
    """What cloud-init's user-data processor makes of ``raw``: its parts as
    ``{content_type, filename, payload_b64}`` (containers skipped)."""
    if not raw:
        return []
    message = user_data.UserDataProcessor(paths).process(raw)
    parts = []
    for part in message.walk():
        if part.is_multipart():
            continue
        parts.append({"content_type": part.get_content_type(),
                      "filename": part.get_filename(),
                      "payload_b64": b64(part.get_payload(decode=True))})
    return parts


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(jsonable(result), sort_keys=True))
