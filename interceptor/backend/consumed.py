"""The consumed-key rule: a guest DELETE shadows a key for its instance.

A guest that deletes ``/interceptor/v1/meta/{cls}/{key}`` has consumed the
key (a one-time secret, a bootstrap token). The key is removed from the
server's class and recorded in the server record's ``consumed`` map
(``{cls: [key, …]}``); the document builder leaves those keys out of that
class of *every* object (customer, image, server, runtime), so no surface
shows them again. Writing the key to the server's class again, by the owner
or by a guest PUT, lifts the shadow. Writes to the customer, image or
runtime do not: the guest said it is done with that key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def shadowed(data: dict[str, Any], cls: str, key: str) -> dict[str, Any]:
    """Server record data with ``key`` of ``cls`` removed and shadowed."""
    consumed = {c: list(k) for c, k in data.get("consumed", {}).items()}
    keys = consumed.setdefault(cls, [])
    if key not in keys:
        keys.append(key)
    values = dict(data["meta"].get(cls, {}))
    values.pop(key, None)
    return {**data, "meta": {**data["meta"], cls: values}, "consumed": consumed}


def lifted(data: dict[str, Any], cls: str, keys: Iterable[str]) -> dict[str, Any]:
    """Server record data with the shadow of ``keys`` of ``cls`` lifted."""
    consumed = data.get("consumed", {})
    if not consumed.get(cls):
        return data
    written = set(keys)
    remaining = [k for k in consumed[cls] if k not in written]
    out = {c: list(k) for c, k in consumed.items() if c != cls}
    if remaining:
        out[cls] = remaining
    return {**data, "consumed": out}


def is_consumed(data: dict[str, Any], cls: str, key: str) -> bool:
    return key in data.get("consumed", {}).get(cls, [])
