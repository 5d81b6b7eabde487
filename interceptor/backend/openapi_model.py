"""OpenAPI entries of the metadata-model endpoints (keypairs, image parts and
final keys, guest writes, owner guest-data, OCCI); ``openapi.py`` merges them."""

from __future__ import annotations

from typing import Any

_PART = {"type": "object", "properties": {
    "name": {"type": "string"}, "content_type": {"type": "string"},
    "data": {"type": "string", "format": "byte"}}}

SCHEMAS: dict[str, Any] = {
    "KeypairCreate": {"type": "object", "required": ["name", "public_key"], "properties": {
        "name": {"type": "string"},
        "public_key": {"type": "string", "description": "one OpenSSH public key line"},
        "type": {"type": "string", "enum": ["ssh"]}}},
    "Keypair": {"type": "object", "properties": {
        "name": {"type": "string"}, "customer_id": {"type": "string"},
        "public_key": {"type": "string"}, "fingerprint": {"type": "string"},
        "revision": {"type": "integer"}}},
    "Keypairs": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Keypair"}}}},
    "ImageUserData": {"type": "object", "required": ["user_data"], "properties": {
        "user_data": {"type": "array", "items": _PART}}},
    "FinalKeys": {"type": "object", "required": ["restricted"], "properties": {
        "restricted": {"type": "array", "items": {"type": "string"}}}},
    "GuestDataPatch": {"type": "object", "description": "key → string (null deletes)",
                       "additionalProperties": {"type": "string", "nullable": True}},
}

SERVER_PROPERTIES: dict[str, Any] = {
    "key_names": {"type": "array", "items": {"type": "string"},
                  "description": "keypairs of the customer whose keys the VM gets"},
    "disabled_by_guest": {"type": "number", "readOnly": True,
                          "description": "when the guest switched its metadata off"},
    "consumed_keys": {"type": "object", "readOnly": True,
                      "additionalProperties": {"type": "array", "items": {"type": "string"}},
                      "description": "class → keys the guest consumed (shadowed)"},
}

# (method, path, summary, request schema | "text" | "occi" | None, status, response)
OPERATIONS: list[tuple[str, str, str, str | None, int, str | None]] = [
    ("post", "/v1/customers/{id}/keypairs", "Upload a named public key (customer, admin)",
     "KeypairCreate", 201, "Keypair"),
    ("get", "/v1/customers/{id}/keypairs", "List a customer's keypairs", None, 200,
     "Keypairs"),
    ("get", "/v1/customers/{id}/keypairs/{name}", "Read a keypair", None, 200, "Keypair"),
    ("delete", "/v1/customers/{id}/keypairs/{name}", "Delete a keypair", None, 204, None),
    ("get", "/v1/images/{id}/user-data", "The image's own user-data parts (owner)", None,
     200, "ImageUserData"),
    ("put", "/v1/images/{id}/user-data",
     "Set the image's user-data parts, merged before each server's (owner)",
     "ImageUserData", 200, "ImageUserData"),
    ("get", "/v1/images/{id}/final-keys", "Restricted keys servers cannot override (owner)",
     None, 200, "FinalKeys"),
    ("put", "/v1/images/{id}/final-keys", "Set the final restricted keys (owner)",
     "FinalKeys", 200, "FinalKeys"),
    ("patch", "/v1/servers/{id}/guest-data", "Write the guest-data namespace (owner)",
     "GuestDataPatch", 200, "Metadata"),
    ("put", "/v1/nodes/{node}/instances/{iid}/meta/{cls}/{key}",
     "Guest sets a server-level public/restricted key (guest_writes)", "text", 204, None),
    ("delete", "/v1/nodes/{node}/instances/{iid}/meta/{cls}/{key}",
     "Guest consumes a public/restricted key: gone from every object for this instance",
     None, 204, None),
    ("post", "/v1/nodes/{node}/instances/{iid}/disable",
     "Guest switches its own metadata off (only the owner switches it on)", None, 204, None),
    ("get", "/occi1.1/-/", "OCCI 1.1 query interface (text/plain or text/occi)", None, 200,
     None),
    ("get", "/occi1.1/.well-known/org/ogf/occi/-/", "OCCI 1.1 query interface", None, 200,
     None),
    ("post", "/occi1.1/compute/", "OCCI 1.1: create a compute resource (a server)", "occi",
     201, None),
    ("get", "/occi1.1/compute/{id}", "OCCI 1.1: render a compute resource", None, 200, None),
]

LONGPOLL_PARAMS: list[dict[str, Any]] = [
    {"name": "wait_for_change", "in": "query", "schema": {"type": "boolean"},
     "description": "answer once the object's ETag differs from last_etag"},
    {"name": "last_etag", "in": "query", "schema": {"type": "string"}},
    {"name": "timeout_sec", "in": "query",
     "schema": {"type": "number", "minimum": 0, "maximum": 300}},
]

OCCI_BODY = {"required": False, "content": {
    "text/occi": {"schema": {"type": "string", "description": "categories and attributes "
                                                              "in the headers"}},
    "text/plain": {"schema": {"type": "string", "description":
                              "Category: … / X-OCCI-Attribute: … lines"}}}}
OCCI_ANSWER = {"text/plain": {"schema": {"type": "string"}},
               "text/occi": {"schema": {"type": "string"}}}
