"""The OpenAPI document is valid and matches the router exactly, both ways."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from interceptor.backend.app import create_app
from interceptor.backend.openapi import build_spec
from tests.backend.support import Api, make_config


def _router_operations() -> set[tuple[str, str]]:
    app = create_app(make_config("sqlite:///nonexistent/never-opened.sqlite"))
    ops = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        assert path, route
        ops.add((route.method.lower(), path))
    return ops


def _spec_operations(spec: dict) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(method, path) for path, item in spec["paths"].items() for method in item}


def test_spec_is_valid_openapi() -> None:
    validate(build_spec())


def test_every_route_documented_and_nothing_else() -> None:
    router, documented = _router_operations(), _spec_operations(build_spec())
    assert router - documented == set(), "routes missing from the OpenAPI document"
    assert documented - router == set(), "documented operations the app does not serve"
    assert len(router) > 40


def test_path_parameters_declared() -> None:
    for path, item in build_spec()["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for op in item.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (path, declared)


async def test_served_document_is_the_same(api: Api) -> None:
    r = await api.call("GET", "/v1/openapi.json", None)
    assert r.status == 200
    assert r.body == build_spec()
