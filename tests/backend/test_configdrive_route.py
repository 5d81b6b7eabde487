"""``GET /v1/servers/{id}/configdrive``: admin only, deterministic, ETag, no private data."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import pytest
import yaml
from multidict import CIMultiDict

from interceptor import ctl
from tests.backend.support import ADMIN, NODE_TOKENS, Api
from tests.helpers.iso import read_iso

PATH = "/v1/servers/vm1/configdrive"
OBJECTS = {"customer": "/v1/customers/c1", "image": "/v1/images/img1",
           "server": "/v1/servers/vm1", "runtime": "/v1/servers/vm1/runtime"}


async def _scene(api: Api) -> str:
    owner = await api.customer("c1")
    r = await api.call("POST", "/v1/images", owner,
                       json_body={"id": "img1", "name": "img", "visibility": "public"})
    assert r.status == 201, r.body
    user_data = base64.b64encode(b"#cloud-config\nhostname: vm1\n").decode()
    await api.server("vm1", "c1", node=None, image_id="img1",
                     user_data=[{"name": "user", "content_type": "text/cloud-config",
                                 "data": user_data}],
                     files=[{"path": "/etc/motd", "data": base64.b64encode(b"hi\n").decode()}])
    assert (await api.call("POST", "/v1/servers/vm1/start", owner)).status == 200
    for kind, prefix in OBJECTS.items():
        for cls in ("public", "restricted", "private"):
            r = await api.call("PATCH", f"{prefix}/metadata/{cls}", ADMIN,
                               json_body={f"k-{kind}-{cls}": f"marker-{kind}-{cls}-5e1d"})
            assert r.status == 200, r.body
    return owner


async def _get(api: Api, fmt: str = "openstack", token: str | None = ADMIN,
               headers: dict[str, str] | None = None) -> tuple[int, bytes, CIMultiDict[str]]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    async with api.session.get(f"{api.base}{PATH}?format={fmt}", headers=hdrs) as resp:
        return resp.status, await resp.read(), CIMultiDict(resp.headers)


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_openstack_drive_holds_the_document_and_no_private_data(api: Api) -> None:
    await _scene(api)
    status, image, headers = await _get(api)
    assert status == 200
    assert headers["Content-Type"] == "application/x-iso9660-image"
    contents = read_iso(image)
    assert contents.label == "config-2"
    meta = json.loads(contents.files["/openstack/latest/meta_data.json"])
    assert meta["uuid"] == "vm1" and meta["files"] == [
        {"path": "/etc/motd", "content_path": "/content/0000"}]
    assert contents.files["/openstack/content/0000"] == b"hi\n"
    assert contents.files["/openstack/latest/user_data"] == b"#cloud-config\nhostname: vm1\n"
    assert json.loads(contents.files["/ec2/latest/meta-data.json"])["instance-id"] == "vm1"
    assert "/openstack/latest/password" not in contents.files
    assert "/openstack/latest/meta_data.json" in contents.joliet
    # Read-only and small.
    assert all(mode & 0o222 == 0 for mode in contents.modes.values())
    assert len(image) < 512 * 1024
    for kind in OBJECTS:
        assert f"marker-{kind}-public-5e1d".encode() in image
        assert f"marker-{kind}-restricted-5e1d".encode() in image
        for encoding in ("utf-8", "utf-16-be", "utf-16-le"):
            assert f"marker-{kind}-private-5e1d".encode(encoding) not in image
            assert f"k-{kind}-private".encode(encoding) not in image


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_nocloud_drive(api: Api) -> None:
    await _scene(api)
    status, image, headers = await _get(api, "nocloud")
    assert status == 200 and headers["ETag"].endswith('-nocloud"')
    contents = read_iso(image)
    assert contents.label == "cidata"
    assert yaml.safe_load(contents.files["/meta-data"])["instance-id"] == "vm1"
    assert contents.files["/user-data"] == b"#cloud-config\nhostname: vm1\n"
    assert set(contents.files) <= {"/meta-data", "/user-data", "/vendor-data",
                                   "/network-config"}
    assert b"private-5e1d" not in image


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_same_document_same_bytes_and_etag_by_revision(api: Api) -> None:
    await _scene(api)
    _, first, h1 = await _get(api)
    await asyncio.sleep(1.1)  # a clock that leaked into the image would differ now
    _, second, h2 = await _get(api)
    assert first == second and h1["ETag"] == h2["ETag"]
    status, body, h3 = await _get(api, headers={"If-None-Match": h1["ETag"]})
    assert status == 304 and body == b"" and h3["ETag"] == h1["ETag"]
    r = await api.call("PATCH", "/v1/servers/vm1/metadata/public", ADMIN,
                       json_body={"changed": "yes"})
    assert r.status == 200
    status, third, h4 = await _get(api, headers={"If-None-Match": h1["ETag"]})
    assert status == 200 and h4["ETag"] != h1["ETag"] and third != first
    assert json.loads(read_iso(third).files["/openstack/latest/meta_data.json"])[
        "meta"]["changed"] == "yes"


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_only_the_platform_gets_the_drive(api: Api) -> None:
    owner = await _scene(api)
    for token, expected in ((owner, 403), (NODE_TOKENS["node-a"], 403), (None, 401),
                            ("wrong", 401)):
        status, body, _ = await _get(api, token=token)
        assert status == expected and "error" in json.loads(body)
    status, body, _ = await _get(api, "iso9660")
    assert status == 400 and "format" in json.loads(body)["error"]
    async with api.session.get(f"{api.base}/v1/servers/nope/configdrive",
                               headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 404 and "error" in await resp.json()


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_ctl_configdrive_writes_the_image(api: Api, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    owner = await _scene(api)
    target = tmp_path / "vm1.iso"
    code = await asyncio.to_thread(ctl.main, ["--url", api.base, "--token", ADMIN,
                                              "configdrive", "vm1", "-o", str(target),
                                              "--format", "nocloud"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["bytes"] == target.stat().st_size and summary["format"] == "nocloud"
    assert os.stat(target).st_mode & 0o077 == 0
    assert read_iso(target.read_bytes()).label == "cidata"
    code = await asyncio.to_thread(ctl.main, ["--url", api.base, "--token", owner,
                                              "configdrive", "vm1", "-o",
                                              str(tmp_path / "no.iso")])
    _, err = capsys.readouterr()
    assert code == 1 and "HTTP 403" in err and not (tmp_path / "no.iso").exists()
