"""The node → backend signature covers the body (issue 15): a body swapped
in transit, or replayed under another signature, is refused before it is used."""

from __future__ import annotations

from interceptor.common.signing import sign
from tests.backend.support import NODE_TOKENS, SIGNING_KEY, Api


async def _scene(api: Api) -> str:
    tok = await api.customer("c1")
    await api.server("s1", "c1", node="node-a", guest_writes=True)
    return tok


async def test_swapped_password_body_is_refused(api: Api) -> None:
    tok = await _scene(api)
    full = "/v1/nodes/node-a/instances/s1/password"
    headers = sign(SIGNING_KEY.encode(), "node-a", "s1", "POST", full, body=b"signed-pw")
    r = await api.call("POST", full, NODE_TOKENS["node-a"], data=b"attacker-pw",
                       headers=headers)
    assert r.status == 401 and "digest" in r.body["error"]
    assert (await api.call("GET", "/v1/servers/s1/password", tok)).body == {"password": None}
    r = await api.call("POST", full, NODE_TOKENS["node-a"], data=b"signed-pw", headers=headers)
    assert r.status == 201


async def test_swapped_guest_data_body_is_refused(api: Api) -> None:
    tok = await _scene(api)
    full = "/v1/nodes/node-a/instances/s1/guest-data/k"
    headers = sign(SIGNING_KEY.encode(), "node-a", "s1", "PUT", full, body=b"v1")
    r = await api.call("PUT", full, NODE_TOKENS["node-a"], data=b"v2", headers=headers)
    assert r.status == 401
    assert (await api.call("GET", "/v1/servers/s1/guest-data", tok)).body == {}
