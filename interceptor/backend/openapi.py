"""The OpenAPI 3 document of the API, served at /v1/openapi.json.

Built from one table of operations; a test walks the app router and this
table both ways and validates the result, so it cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from interceptor.backend import openapi_model
from interceptor.backend.limits import MAX_PAGE, MAX_WATCH_TIMEOUT

JSON = "application/json"
_PLATFORM = "set by the platform only: a customer may send it only unchanged"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_META = {"type": "object", "additionalProperties": True,
         "description": "Metadata of one class: key → JSON value"}
_ERR = {"description": "Error", "content": {JSON: {"schema": _ref("Error")}}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Metadata": _META,
    "Customer": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "revision": {"type": "integer"}}},
    "CustomerCreate": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}}},
    "Token": {"type": "object", "properties": {
        "customer_id": {"type": "string"}, "token": {"type": "string"}}},
    "Image": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "owner": {"type": "string", "nullable": True},
        "visibility": {"type": "string", "enum": ["public", "private"]},
        "revision": {"type": "integer"}}},
    "ImageCreate": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "owner": {"type": "string", "description": "admin only; absent = platform image"},
        "visibility": {"type": "string", "enum": ["public", "private"]}}},
    "Interface": {"type": "object", "required": ["name", "mac"], "properties": {
        "name": {"type": "string"}, "mac": {"type": "string"}, "mtu": {"type": "integer"},
        "dhcp4": {"type": "boolean"},
        "addresses": {"type": "array", "items": {"type": "object", "properties": {
            "address": {"type": "string"}, "prefix": {"type": "integer"}}}},
        "gateway4": {"type": "string", "nullable": True},
        "nameservers": {"type": "array", "items": {"type": "string"}},
        "search": {"type": "array", "items": {"type": "string"}}}},
    "Server": {"type": "object", "required": ["hostname"], "properties": {
        "id": {"type": "string", "readOnly": True},
        "customer_id": {"type": "string"},
        "image_id": {"type": "string", "nullable": True},
        "hostname": {"type": "string"},
        "ssh_keys": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "key": {"type": "string"}}}},
        "user_data": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "content_type": {"type": "string"},
            "data": {"type": "string", "format": "byte"}}}},
        "files": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "data": {"type": "string", "format": "byte"}}}},
        "network": {"type": "object", "description": _PLATFORM, "properties": {
            "interfaces": {"type": "array", "items": _ref("Interface")}}},
        "metadata_enabled": {"type": "boolean", "default": True},
        "require_token": {"type": "boolean", "default": False},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "tags_visible": {"type": "boolean", "default": False},
        "guest_writes": {"type": "boolean", "default": False},
        "instance_type": {"type": "string", "description": _PLATFORM},
        "availability_zone": {"type": "string", "description": _PLATFORM},
        "launch_index": {"type": "integer", "minimum": 0, "description": _PLATFORM},
        "revision": {"type": "integer", "readOnly": True},
        "running": {"type": "boolean", "readOnly": True}}},
    "Binding": {"type": "object", "required": ["node"], "properties": {
        "node": {"type": "string"},
        "ifname": {"type": "string", "maxLength": 15, "description": "a tap"},
        "mac": {"type": "string", "nullable": True,
                "description": "the tap's own MAC: served only while it matches"},
        "serial": {"type": "string", "description": "a serial-port socket, instead of a tap"},
        "generation": {"type": "integer", "readOnly": True,
                       "description": "minted at every bind; the node serves one tap "
                                      "incarnation per generation"}}},
    "ServerBindings": {"type": "object", "properties": {
        "id": {"type": "string", "readOnly": True},
        "bindings": {"type": "array", "items": _ref("Binding")}}},
    "BindOne": {"type": "object", "properties": {
        "mac": {"type": "string", "description": "the tap's own MAC (taps only)"}}},
    "BoundOne": {"type": "object", "properties": {
        "id": {"type": "string"}, "binding": _ref("Binding")}},
    "Stop": {"type": "object", "properties": {
        "keep_bindings": {"type": "boolean", "default": False,
                          "description": "platform only: keep the bindings"}}},
    "Runtime": {"type": "object", "properties": {
        "id": {"type": "string"}, "running": {"type": "boolean"},
        "revision": {"type": "integer"}}},
    "Start": {"type": "object", "properties": {
        "metadata": {"type": "object", "additionalProperties": _META}}},
    "Page": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object"}},
        "next_cursor": {"type": "string", "nullable": True}}},
    "Password": {"type": "object", "properties": {
        "password": {"type": "string", "nullable": True}}},
    "Document": {"type": "object", "description":
                 "The instance document (interceptor/formats/document.py)"},
    "Bindings": {"type": "object", "properties": {
        "revision": {"type": "integer"},
        "bindings": {"type": "array", "items": {"type": "object", "properties": {
            "ifname": {"type": "string"}, "serial": {"type": "string"},
            "mac": {"type": "string", "nullable": True},
            "generation": {"type": "integer"}, "instance_id": {"type": "string"},
            "metadata_enabled": {"type": "boolean"}}}}}},
    "Watch": {"type": "object", "properties": {
        "revision": {"type": "integer"},
        "instances": {"type": "array", "items": {"type": "string"}},
        "bindings_changed": {"type": "boolean"}}},
}

_PARAM_DOC = {
    "id": "Object id", "cls": "Metadata class: public, restricted, private, system",
    "node": "Node name", "iid": "Instance (server) id", "key": "Key",
    "name": "Interface name of the tap, serial socket name, or keypair name",
}
SCHEMAS.update(openapi_model.SCHEMAS)
SCHEMAS["Server"]["properties"].update(openapi_model.SERVER_PROPERTIES)

# (method, path, summary, request schema or None, success status, response schema or None)
OPERATIONS: list[tuple[str, str, str, str | None, int, str | None]] = [
    ("post", "/v1/customers", "Create a customer (admin)", "CustomerCreate", 201, "Customer"),
    ("get", "/v1/customers", "List customers (admin: all; customer: itself)", None, 200, "Page"),
    ("get", "/v1/customers/{id}", "Read a customer (owner)", None, 200, "Customer"),
    ("patch", "/v1/customers/{id}", "Rename a customer (owner)", "CustomerCreate", 200,
     "Customer"),
    ("delete", "/v1/customers/{id}", "Delete a customer without servers/images (admin)", None,
     204, None),
    ("post", "/v1/customers/{id}/tokens", "Create a customer token, shown once (admin)", None,
     201, "Token"),
    ("post", "/v1/images", "Create an image", "ImageCreate", 201, "Image"),
    ("get", "/v1/images", "List visible images", None, 200, "Page"),
    ("get", "/v1/images/{id}", "Read a visible image", None, 200, "Image"),
    ("patch", "/v1/images/{id}", "Change name/visibility (owner)", "ImageCreate", 200, "Image"),
    ("delete", "/v1/images/{id}", "Delete an unused image (owner)", None, 204, None),
    ("get", "/v1/servers", "List own servers (admin: all, ?customer=)", None, 200, "Page"),
    ("post", "/v1/servers", "Create a server; the platform names its id", "Server", 201,
     "Server"),
    ("put", "/v1/servers/{id}", "Create (201, admin: the platform names ids) or replace (200) "
     "a server", "Server", 200, "Server"),
    ("get", "/v1/servers/{id}", "Read a server (owner)", None, 200, "Server"),
    ("patch", "/v1/servers/{id}", "JSON merge patch of a server (owner)", "Server", 200,
     "Server"),
    ("delete", "/v1/servers/{id}", "Delete a server (owner)", None, 204, None),
    ("post", "/v1/servers/{id}/start", "Start: set fresh runtime data", "Start", 200, "Runtime"),
    ("post", "/v1/servers/{id}/stop", "Stop: clear runtime data and release the bindings",
     "Stop", 200, "Runtime"),
    ("get", "/v1/servers/{id}/bindings", "The server's bindings (admin)", None, 200,
     "ServerBindings"),
    ("put", "/v1/servers/{id}/bindings", "Replace the server's bindings (admin); unchanged "
     "items keep their generation", "ServerBindings", 200, "ServerBindings"),
    ("delete", "/v1/servers/{id}/bindings", "Release every binding (admin)", None, 204, None),
    ("put", "/v1/servers/{id}/bindings/{node}/{name}", "Plug: bind one tap as a new "
     "incarnation (admin)", "BindOne", 200, "BoundOne"),
    ("delete", "/v1/servers/{id}/bindings/{node}/{name}", "Unplug: release one tap (admin)",
     None, 204, None),
    ("put", "/v1/servers/{id}/serial/{node}/{name}", "Bind one serial-port socket (admin)",
     None, 200, "BoundOne"),
    ("delete", "/v1/servers/{id}/serial/{node}/{name}", "Release one serial-port socket "
     "(admin)", None, 204, None),
    ("get", "/v1/servers/{id}/password", "Read the guest-set password (owner)", None, 200,
     "Password"),
    ("delete", "/v1/servers/{id}/password", "Clear the password (owner)", None, 204, None),
    ("get", "/v1/servers/{id}/guest-data", "Read the guest-written namespace (owner)", None,
     200, "Metadata"),
    ("get", "/v1/servers/{id}/document", "Preview the instance document (owner)", None, 200,
     "Document"),
    ("get", "/v1/servers/{id}/configdrive",
     "Config-drive ISO of a server, from its instance document (admin)", None, 200, None),
    ("get", "/v1/nodes/{node}/bindings", "Bindings of a node (node token, signed)", None, 200,
     "Bindings"),
    ("get", "/v1/nodes/{node}/instances/{iid}/document", "Instance document (node)", None,
     200, "Document"),
    ("get", "/v1/nodes/{node}/watch", "Long-poll for changes relevant to a node", None, 200,
     "Watch"),
    ("post", "/v1/nodes/{node}/instances/{iid}/password", "Guest sets its password once",
     "text", 201, None),
    ("delete", "/v1/nodes/{node}/instances/{iid}/meta/{cls}/{key}",
     "Guest consumes a server-level public/restricted key (needs guest_writes)", None, 204,
     None),
    ("put", "/v1/nodes/{node}/instances/{iid}/guest-data/{key}", "Guest writes a key", "text",
     204, None),
    ("delete", "/v1/nodes/{node}/instances/{iid}/guest-data/{key}", "Guest deletes a key",
     None, 204, None),
    ("get", "/v1/openapi.json", "This document", None, 200, None),
]
for _prefix, _what in (("/v1/customers/{id}", "customer"), ("/v1/images/{id}", "image"),
                       ("/v1/servers/{id}", "server"),
                       ("/v1/servers/{id}/runtime", "runtime of a server")):
    OPERATIONS += [
        ("get", _prefix + "/metadata/{cls}", f"Read one metadata class of a {_what}", None,
         200, "Metadata"),
        ("put", _prefix + "/metadata/{cls}", f"Replace one metadata class of a {_what}",
         "Metadata", 200, "Metadata"),
        ("patch", _prefix + "/metadata/{cls}",
         f"Merge into one metadata class of a {_what} (null deletes)", "Metadata", 200,
         "Metadata"),
    ]

OPERATIONS += openapi_model.OPERATIONS

# Operations whose success body is not JSON: media type of the body.
_BINARY = {("get", "/v1/servers/{id}/configdrive"): "application/x-iso9660-image"}
_QUERY = {
    ("get", "/v1/servers/{id}/configdrive"): [
        {"name": "format", "in": "query", "description": "openstack (label config-2) or "
         "nocloud (label cidata)",
         "schema": {"type": "string", "enum": ["openstack", "nocloud"],
                    "default": "openstack"}}],
    ("get", "/v1/servers/{id}/guest-data"): openapi_model.LONGPOLL_PARAMS,
    **{("get", p + "/metadata/{cls}"): openapi_model.LONGPOLL_PARAMS
       for p in ("/v1/customers/{id}", "/v1/images/{id}", "/v1/servers/{id}",
                 "/v1/servers/{id}/runtime")},
    ("get", "/v1/nodes/{node}/watch"): [
        {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "timeout", "in": "query",
         "schema": {"type": "number", "minimum": 0, "maximum": MAX_WATCH_TIMEOUT}}],
}
_PAGED = [{"name": "limit", "in": "query",
           "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
          {"name": "cursor", "in": "query", "schema": {"type": "string"}}]


def _operation(method: str, path: str, summary: str, request: str | None, status: int,
               response: str | None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
         "description": _PARAM_DOC[name]}
        for name in (part[1:-1] for part in path.split("/") if part.startswith("{"))]
    params += _QUERY.get((method, path), [])
    if method == "get" and path in ("/v1/customers", "/v1/images", "/v1/servers"):
        params += _PAGED
    op: dict[str, Any] = {"summary": summary, "operationId": f"{method}_{path}"
                          .replace("/", "_").replace("{", "").replace("}", "").replace(".", "_")
                          .replace("-", "_")}
    if params:
        op["parameters"] = params
    if request == "occi":
        op["requestBody"] = openapi_model.OCCI_BODY
    elif request == "text":
        op["requestBody"] = {"required": True, "content": {"text/plain": {
            "schema": {"type": "string"}}}}
    elif request is not None:
        op["requestBody"] = {"required": not path.endswith(("/start", "/stop"))
                             and request != "BindOne",
                             "content": {JSON: {"schema": _ref(request)}}}
    ok: dict[str, Any] = {"description": "Success"}
    if response is not None:
        ok["content"] = {JSON: {"schema": _ref(response)}}
        ok["headers"] = {"ETag": {"schema": {"type": "string"}}}
    elif path.endswith("openapi.json"):
        ok["content"] = {JSON: {"schema": {"type": "object"}}}
    elif (method, path) in _BINARY:
        ok["content"] = {_BINARY[method, path]: {"schema": {"type": "string",
                                                            "format": "binary"}}}
        ok["headers"] = {"ETag": {"schema": {"type": "string"}}}
    elif path.startswith("/occi"):
        ok["content"] = openapi_model.OCCI_ANSWER
    responses: dict[str, Any] = {str(status): ok}
    if method == "put" and path == "/v1/servers/{id}":
        responses["201"] = ok
    if not path.endswith("openapi.json"):
        for code in ("400", "401", "403", "404"):
            responses[code] = _ERR
    if method in ("put", "patch", "delete"):
        responses["412"] = _ERR
    if method in ("put", "patch", "post"):
        responses["409"] = _ERR
        responses["413"] = _ERR
    if path.startswith("/v1/nodes") and method != "get":
        responses["429"] = {"description": "Too many guest writes (Retry-After)",
                            "content": {JSON: {"schema": _ref("Error")}}}
    if (path.endswith("/document") and path.startswith("/v1/nodes")) or (
            (method, path) in _BINARY):
        responses["304"] = {"description": "Not modified (If-None-Match)"}
    return op | {"responses": responses}


def build_spec() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, status, response in OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(method, path, summary, request,
                                                        status, response)
    return {
        "openapi": "3.0.3",
        "info": {"title": "interceptor backend", "version": "1",
                 "description": "Customers, images, servers and runtime with metadata in "
                                "four classes (public, restricted, private, system); node "
                                "endpoints for the node daemons. Errors are "
                                '{"error": reason}. Objects carry an ETag; writes honour '
                                "If-Match (412 on mismatch)."},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


def add_routes(app: web.Application) -> None:
    spec = build_spec()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/v1/openapi.json", openapi)
