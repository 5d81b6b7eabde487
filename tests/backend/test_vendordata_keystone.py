"""Dynamic vendor data with a Keystone service token, against a Keystone-compatible
token endpoint and a token-checking target run by the test (real HTTP on loopback);
the owner's multipart user-data in the POST body; uncached targets."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession, test_utils

from interceptor.backend.app import create_app
from interceptor.backend.config import BackendConfig
from interceptor.backend.vendordata import parse_targets
from interceptor.common.errors import ConfigError
from interceptor.formats.document import validate_document
from interceptor.formats.router import render_path
from tests.backend.support import Api, make_config
from tests.helpers.keystone import KeystoneStub

SQLITE = pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)


@dataclass
class Env:
    stub: KeystoneStub
    keystone_url: str
    target_url: str


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    stub = KeystoneStub("nova", "s3cret-pw", "service", lifetime=3600)
    ks = test_utils.TestServer(stub.app(), host="127.0.0.1")
    target = test_utils.TestServer(stub.target_app(), host="127.0.0.1")
    await ks.start_server()
    await target.start_server()
    try:
        yield Env(stub, str(ks.make_url("/v3")), str(target.make_url("/vendor")))
    finally:
        await target.close()
        await ks.close()


async def _backend(cfg: BackendConfig) -> tuple[test_utils.TestServer, str]:
    server = test_utils.TestServer(create_app(cfg))
    await server.start_server()
    return server, str(server.make_url("")).rstrip("/")


def _config(database: str, env: Env, **extra: Any) -> BackendConfig:
    return make_config(database, vendordata_dynamic_targets=[f"ks@{env.target_url}"],
                       vendordata_auth_url=env.keystone_url, vendordata_auth_username="nova",
                       vendordata_auth_password="s3cret-pw",
                       vendordata_auth_project_name="service", vendordata_ttl=0.0, **extra)


@SQLITE
async def test_keystone_token_fetched_cached_and_refreshed_on_401(
        database: str, env: Env, caplog: pytest.LogCaptureFixture) -> None:
    server, base = await _backend(_config(database, env))
    try:
        async with ClientSession() as session:
            api = Api(session, base)
            await api.customer("c1")
            await api.server("s1", "c1")
            for _ in range(3):  # ttl 0: the target is asked for every document
                doc = await api.document("s1")
                assert doc["vendor_data"]["dynamic"]["ks"]["for"] == "s1"
            assert len(env.stub.requests) == 1, "the token is cached, not fetched per call"
            assert len(set(env.stub.seen_tokens)) == 1
            body = env.stub.requests[0]["auth"]
            assert body["scope"]["project"]["name"] == "service"
            # Keystone forgets its tokens: the target answers 401, the backend
            # fetches a new token and asks again, and the document still has it.
            env.stub.revoke()
            doc = await api.document("s1")
            assert doc["vendor_data"]["dynamic"]["ks"]["for"] == "s1"
            assert len(env.stub.requests) == 2
            assert env.stub.valid(env.stub.seen_tokens[-1])
            assert not env.stub.valid(env.stub.seen_tokens[-2])
    finally:
        await server.close()
    logged = caplog.text
    assert "s3cret-pw" not in logged
    assert all(t not in logged for t in env.stub.seen_tokens if t)


@SQLITE
async def test_short_lived_token_refreshed_before_expiry(database: str, env: Env) -> None:
    env.stub.lifetime = 12.0  # margin: 10 s, so it is refreshed after ~2 s
    server, base = await _backend(_config(database, env))
    try:
        async with ClientSession() as session:
            api = Api(session, base)
            await api.customer("c1")
            await api.server("s1", "c1")
            await api.document("s1")
            await api.document("s1")
            assert len(env.stub.requests) == 1
            await asyncio.sleep(2.2)
            await api.document("s1")
            assert len(env.stub.requests) == 2
    finally:
        await server.close()


@SQLITE
async def test_wrong_keystone_password_leaves_the_target_out(database: str, env: Env) -> None:
    cfg = _config(database, env)
    cfg.vendordata_auth_password = "wrong"
    server, base = await _backend(cfg)
    try:
        async with ClientSession() as session:
            api = Api(session, base)
            await api.customer("c1")
            await api.server("s1", "c1")
            doc = await api.document("s1")
            assert doc["vendor_data"]["dynamic"] == {}
            assert env.stub.seen_tokens == []  # never called without a token
    finally:
        await server.close()


@SQLITE
async def test_multipart_user_data_is_posted_and_uncached_targets(database: str,
                                                                 env: Env) -> None:
    cfg = _config(database, env, vendordata_dynamic_nocache=["ks"])
    cfg.vendordata_ttl = 300.0
    server, base = await _backend(cfg)
    parts = [{"name": "a", "content_type": "text/cloud-config",
              "data": base64.b64encode(b"#cloud-config\n").decode()},
             {"name": "b", "content_type": "text/x-shellscript",
              "data": base64.b64encode(b"#!/bin/sh\n").decode()}]
    try:
        async with ClientSession() as session:
            api = Api(session, base)
            await api.customer("c1")
            await api.server("s1", "c1", user_data=parts)
            doc = await api.document("s1")
            posted = base64.b64decode(doc["vendor_data"]["dynamic"]["ks"]["user-data"])
            assert posted.startswith(b'Content-Type: multipart/mixed; boundary="')
            assert posted == render_path(validate_document(doc), "/latest/user-data").body
            calls = len(env.stub.seen_tokens)
            await api.document("s1")
            await api.document("s1")
            assert len(env.stub.seen_tokens) == calls + 2  # uncached: every document
    finally:
        await server.close()


def test_keystone_config_errors() -> None:
    for bad in ({"vendordata_auth_url": "http://ks/v3"},
                {"vendordata_auth_url": "ftp://ks", "vendordata_auth_username": "u",
                 "vendordata_auth_password": "p", "vendordata_auth_project_name": "p"},
                {"vendordata_auth_url": "http://ks/v3", "vendordata_auth_username": "u",
                 "vendordata_auth_password": "p", "vendordata_auth_project_name": "p",
                 "vendordata_service_token": "t"}):
        with pytest.raises(ConfigError):
            make_config("sqlite:///x", **bad).validate()
    with pytest.raises(ConfigError, match="names no target"):
        parse_targets(["a@http://h/x"], ["b"])
