"""OCCI 1.1 server creation (text/plain and text/occi) and the query interface."""

from __future__ import annotations

import base64

import pytest

from interceptor.backend import occi
from interceptor.formats.document import validate_document
from interceptor.formats.router import render_path
from tests.backend.support import ADMIN, Api

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxFqGk6JmrTJ3N3pCZTjI4PbnPf2Gr0c7bTXxY2e2fE "
       "occi@client")
USER_DATA = b"#cloud-config\nruncmd:\n- [touch, /run/from-occi]\n"
COMPUTE = 'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"'
UD_MIXIN = 'user_data; scheme="http://schemas.openstack.org/compute/instance#"; class="mixin"'
KEY_MIXIN = ('public_key; scheme="http://schemas.openstack.org/instance/credentials#"; '
             'class="mixin"')


def _plain(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


async def test_query_interface_lists_kinds_mixins_and_usable_images(api: Api) -> None:
    tok = await api.customer("c1")
    other = await api.customer("c2")
    assert (await api.call("POST", "/v1/images", json_body={
        "id": "debian-12", "name": "Debian 12", "visibility": "public"})).status == 201
    assert (await api.call("POST", "/v1/images", other, json_body={"id": "secret-img"})
            ).status == 201
    for path in ("/occi1.1/-/", "/occi1.1/.well-known/org/ogf/occi/-/"):
        r = await api.call("GET", path, tok)
        assert r.status == 200, r.body
        cats = occi.parse_plain(r.body).categories
        ids = {c.id: c for c in cats}
        assert ids[occi.INFRA + "compute"].cls == "kind"
        assert ids[occi.OS_INSTANCE + "user_data"].attributes == (occi.USER_DATA_ATTR,)
        assert set(ids[occi.OS_CREDENTIALS + "public_key"].attributes) == {
            occi.KEY_NAME_ATTR, occi.KEY_DATA_ATTR}
        assert ids[occi.OS_TPL + "debian-12"].title == "Debian 12"
        assert occi.OS_TPL + "secret-img" not in ids  # another customer's private image
    r = await api.call("GET", "/occi1.1/-/", tok, headers={"Accept": "text/occi"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/occi")
    header_cats = occi.parse_headers(list(r.headers.items())).categories
    assert {c.id for c in header_cats} == {c.id for c in cats}
    assert (await api.call("GET", "/occi1.1/-/", None)).status == 401


async def test_create_text_plain_with_user_data_and_public_key(api: Api) -> None:
    tok = await api.customer("c1")
    assert (await api.call("POST", "/v1/images", json_body={
        "id": "debian-12", "visibility": "public"})).status == 201
    body = _plain([
        f"Category: {COMPUTE}", f"Category: {UD_MIXIN}", f"Category: {KEY_MIXIN}",
        'Category: debian-12; scheme="http://schemas.openstack.org/template/os#"; '
        'class="mixin"',
        'X-OCCI-Attribute: occi.compute.hostname="occi-vm"',
        f'X-OCCI-Attribute: org.openstack.compute.user_data="'
        f'{base64.b64encode(USER_DATA).decode()}"',
        'X-OCCI-Attribute: org.openstack.credentials.publickey.name="laptop"',
        f'X-OCCI-Attribute: org.openstack.credentials.publickey.data="{KEY}"'])
    r = await api.call("POST", "/occi1.1/compute/", tok, data=body,
                       headers={"Content-Type": "text/plain"})
    assert r.status == 201, r.body
    assert "/occi1.1/compute/i-" in r.headers["Location"]
    assert r.body.strip() == f"X-OCCI-Location: {r.headers['Location']}"
    sid = r.headers["Location"].rsplit("/", 1)[1]
    server = (await api.call("GET", f"/v1/servers/{sid}", tok)).body
    assert server["customer_id"] == "c1" and server["image_id"] == "debian-12"
    assert server["ssh_keys"] == [{"name": "laptop", "key": KEY}]
    assert base64.b64decode(server["user_data"][0]["data"]) == USER_DATA
    # It renders back, and the guest would read exactly that user-data.
    r = await api.call("GET", f"/occi1.1/compute/{sid}", tok)
    back = occi.parse_plain(r.body)
    assert back.attributes[occi.HOSTNAME_ATTR] == "occi-vm"
    assert back.has(occi.OS_INSTANCE, "user_data", "mixin")
    r = await api.call("GET", f"/v1/servers/{sid}/document", tok)
    assert render_path(validate_document(r.body), "/latest/user-data").body == USER_DATA
    # Ids are the platform's: a customer naming one is refused; the platform
    # may, and a taken id is 412.
    named = body + 'X-OCCI-Attribute: occi.core.id="srv-occi-1"\n'
    r = await api.call("POST", "/occi1.1/compute/", tok, data=named,
                       headers={"Content-Type": "text/plain"})
    assert r.status == 403, r.body
    named += 'X-OCCI-Attribute: interceptor.customer_id="c1"\n'
    for status in (201, 412):
        r = await api.call("POST", "/occi1.1/compute/", ADMIN, data=named,
                           headers={"Content-Type": "text/plain"})
        assert r.status == status, r.body


async def test_create_text_occi_headers_and_keypair_by_name(api: Api) -> None:
    tok = await api.customer("c1")
    r = await api.call("POST", "/v1/customers/c1/keypairs", tok,
                       json_body={"name": "laptop", "public_key": KEY})
    assert r.status == 201
    headers = {"Content-Type": "text/occi", "Accept": "text/occi",
               "Category": f"{COMPUTE}, {KEY_MIXIN}",
               "X-OCCI-Attribute": 'occi.core.title="by-headers", '
                                   'org.openstack.credentials.publickey.name="laptop"'}
    r = await api.call("POST", "/occi1.1/compute/", tok, data=b"", headers=headers)
    assert r.status == 201, r.body
    sid = r.headers["Location"].rsplit("/", 1)[1]
    assert r.headers["X-OCCI-Location"] == r.headers["Location"]
    server = (await api.call("GET", f"/v1/servers/{sid}", tok)).body
    assert server["hostname"] == "by-headers" and server["key_names"] == ["laptop"]


@pytest.mark.parametrize(("lines", "reason"), [
    ([f"Category: {UD_MIXIN}", 'X-OCCI-Attribute: occi.compute.hostname="x"',
      'X-OCCI-Attribute: org.openstack.compute.user_data="eA=="'], "compute kind"),
    ([f"Category: {COMPUTE}"], "hostname"),
    ([f"Category: {COMPUTE}", 'X-OCCI-Attribute: occi.compute.hostname="x"',
      'X-OCCI-Attribute: org.openstack.compute.user_data="eA=="'], "go together"),
    ([f"Category: {COMPUTE}", f"Category: {UD_MIXIN}",
      'X-OCCI-Attribute: occi.compute.hostname="x"',
      'X-OCCI-Attribute: org.openstack.compute.user_data="!!not base64"'], "base64"),
    ([f"Category: {COMPUTE}", 'X-OCCI-Attribute: occi.compute.hostname="bad host!"'], "DNS"),
    ([f"Category: {COMPUTE}", 'X-OCCI-Attribute: occi.compute.hostname="x'], "unterminated"),
    (["Category: compute; class=\"kind\""], "scheme"),
    (["no colon here"], "Name: value"),
    ([f"Category: {COMPUTE}", 'X-OCCI-Attribute: occi.compute.hostname="x"',
      'X-OCCI-Attribute: interceptor.customer_id="c2"'], "own"),
])
async def test_bad_requests_are_4xx_with_a_reason(api: Api, lines: list[str],
                                                  reason: str) -> None:
    tok = await api.customer("c1")
    await api.customer("c2")
    r = await api.call("POST", "/occi1.1/compute/", tok, data=_plain(lines),
                       headers={"Content-Type": "text/plain"})
    assert r.status in (400, 403), r.body
    assert reason in r.body["error"], r.body


async def test_admin_names_the_customer_and_other_types_are_415(api: Api) -> None:
    await api.customer("c1")
    lines = [f"Category: {COMPUTE}", 'X-OCCI-Attribute: occi.compute.hostname="adm"']
    r = await api.call("POST", "/occi1.1/compute/", ADMIN, data=_plain(lines),
                       headers={"Content-Type": "text/plain"})
    assert r.status == 400 and "interceptor.customer_id" in r.body["error"]
    lines.append('X-OCCI-Attribute: interceptor.customer_id="c1"')
    r = await api.call("POST", "/occi1.1/compute/", ADMIN, data=_plain(lines),
                       headers={"Content-Type": "text/plain"})
    assert r.status == 201, r.body
    r = await api.call("POST", "/occi1.1/compute/", ADMIN, json_body={"a": 1})
    assert r.status == 415


def test_parser_handles_quotes_commas_and_escapes() -> None:
    req = occi.parse_headers([
        ("Category", f'{COMPUTE}; title="a, b; c"'),
        ("X-OCCI-Attribute", 'a.b="x, \\"y\\"", c.d=3, e.f=true, g.h=1.5')])
    assert req.categories[0].title == "a, b; c"
    assert req.attributes == {"a.b": 'x, "y"', "c.d": 3, "e.f": True, "g.h": 1.5}
    assert occi.render_attribute("a.b", 'x, "y"') == 'a.b="x, \\"y\\""'
    with pytest.raises(occi.OcciError):
        occi.parse_headers([("X-OCCI-Attribute", "a.b=x, a.b=y")])
