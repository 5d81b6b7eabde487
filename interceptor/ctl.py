"""``interceptor ctl``: the admin/owner command line over the backend's REST API.

Talks HTTP only (stdlib ``urllib``), never to backend internals. Prints JSON.
Errors: one line on stderr; exit 1 for an HTTP or connection error, 2 for
usage. ``--url``/``INTERCEPTOR_URL`` and ``--token``/``INTERCEPTOR_TOKEN``.

Examples::

    interceptor ctl customer create --id c1 --name "Customer one"
    interceptor ctl customer token c1
    interceptor ctl server create [--id vm1] --customer c1 --hostname vm1 [--image img1]
    interceptor ctl server set-keys vm1 alice="ssh-ed25519 AAAA… alice" [--key NAME KEY]
    interceptor ctl server set-user-data vm1 cloud.yaml [--part user --content-type T]
    interceptor ctl server bind vm1 --node node-a --ifname vnet3 [--mac fe:54:00:…]
    interceptor ctl server bind vm1 --node node-a --serial vm1
    interceptor ctl server unbind vm1 [--node node-a (--ifname vnet3 | --serial vm1)]
    interceptor ctl server bindings vm1
    interceptor ctl server stop vm1 [--keep-bindings]
    interceptor ctl server enable|disable|start|get|delete|document vm1

``--id`` (choosing a server id) and the bindings are the platform's (admin
token); a customer creating a server gets an id chosen by the backend.
    interceptor ctl meta set server vm1 public role=web size=3 [--json]
    interceptor ctl meta get server vm1 public
    interceptor ctl configdrive vm1 -o vm1.iso [--format openstack|nocloud]   (admin)
    interceptor ctl keypair create c1 alice ~/.ssh/id_ed25519.pub | list c1 | delete c1 alice
    interceptor ctl server create … --key-name alice [--key-name bob]
    interceptor ctl server guest-data vm1 [--wait [--last-etag E] [--timeout 60]]
    interceptor ctl server set-guest-data vm1 answer=42 [gone=]   (empty value deletes)
    interceptor ctl image set-user-data img1 FILE --part mirror [--content-type T]
    interceptor ctl image final-keys img1 [KEY …]          (no keys: show them)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8700"
TIMEOUT = 30.0
RETRIES = 5
OBJECTS = {"customer": "customers", "image": "images", "server": "servers"}


class UsageError(Exception):
    """Exit 2."""


class HttpFailure(Exception):
    """Exit 1."""


class Client:
    def __init__(self, url: str, token: str) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise UsageError(f"--url must be http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None,
                timeout: float = TIMEOUT) -> tuple[Any, dict[str, str]]:
        raw, resp_headers = self.fetch(method, path, body, headers, timeout)
        return (json.loads(raw) if raw else None), resp_headers

    def fetch(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None,
              timeout: float = TIMEOUT) -> tuple[bytes, dict[str, str]]:
        """The raw response body and headers (HttpFailure on any error)."""
        hdrs = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        hdrs.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310
                                     headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                return resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                reason = json.loads(raw).get("error", "")
            except (ValueError, AttributeError):
                reason = raw.decode(errors="replace")[:200]
            raise HttpFailure(f"HTTP {exc.code}: {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HttpFailure(f"cannot reach {self.url}: {reason}") from None

    def modify(self, path: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
        """GET, compute a merge patch, PATCH with If-Match; retry on a concurrent change."""
        for _ in range(RETRIES):
            current, headers = self.request("GET", path)
            patch = change(current)
            try:
                body, _ = self.request("PATCH", path, patch,
                                       {"If-Match": headers.get("ETag", "*")})
                return body
            except HttpFailure as exc:
                if not str(exc).startswith("HTTP 412"):
                    raise
        raise HttpFailure(f"{path} kept changing; try again")


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must be NAME=VALUE, got {item!r}")
        out.append((key, value))
    return out


def _content_type(data: bytes) -> str:
    if data.startswith(b"#cloud-config"):
        return "text/cloud-config"
    if data.startswith(b"#!"):
        return "text/x-shellscript"
    if data.startswith(b"Content-Type: multipart"):
        return "multipart/mixed"
    return "text/plain"


def _server_cmd(c: Client, a: argparse.Namespace) -> Any:
    if a.action == "create":
        body: dict[str, Any] = {"customer_id": a.customer, "hostname": a.hostname}
        if a.image:
            body["image_id"] = a.image
        if a.key_name:
            body["key_names"] = list(a.key_name)
        if a.id is None:
            return c.request("POST", "/v1/servers", body)[0]
        return c.request("PUT", f"/v1/servers/{_q(a.id)}", body, {"If-None-Match": "*"})[0]
    if a.action == "list":
        return c.request("GET", "/v1/servers?limit=1000")[0]
    path = f"/v1/servers/{_q(a.id)}"
    if a.action == "get":
        return c.request("GET", path)[0]
    if a.action == "delete":
        c.request("DELETE", path)
        return {"deleted": a.id}
    if a.action == "document":
        return c.request("GET", path + "/document")[0]
    if a.action == "start":
        return c.request("POST", f"{path}/start", {})[0]
    if a.action == "stop":
        return c.request("POST", f"{path}/stop",
                         {"keep_bindings": True} if a.keep_bindings else None)[0]
    if a.action in ("enable", "disable"):
        return c.request("PATCH", path, {"metadata_enabled": a.action == "enable"})[0]
    if a.action == "set-keys":
        keys = _pairs(a.keys, "a key") + [tuple(k) for k in (a.key or [])]
        if not keys:
            raise UsageError("set-keys needs NAME=KEY arguments or --key NAME KEY")
        return c.request("PATCH", path, {"ssh_keys": [{"name": n, "key": k}
                                                      for n, k in keys]})[0]
    if a.action == "set-user-data":
        data = sys.stdin.buffer.read() if a.file == "-" else _read(a.file)
        part = {"name": a.part or "user", "content_type": a.content_type or _content_type(data),
                "data": base64.b64encode(data).decode()}

        def with_part(server: dict[str, Any]) -> dict[str, Any]:
            if a.part is None:
                return {"user_data": [part]}
            parts = [p for p in server.get("user_data", []) if p["name"] != a.part]
            return {"user_data": [*parts, part]}
        return c.modify(path, with_part)
    if a.action == "bindings":
        return c.request("GET", path + "/bindings")[0]
    if a.action == "bind":
        if a.serial is not None and a.mac is not None:
            raise UsageError("--mac goes with --ifname")
        one = _binding_path(path, a)
        return c.request("PUT", one, {"mac": a.mac} if a.mac else None)[0]
    if a.action == "unbind":
        if a.node is None and a.ifname is None and a.serial is None:
            c.request("DELETE", path + "/bindings")
        elif a.node is None:
            raise UsageError("unbind --ifname/--serial needs --node")
        else:
            c.request("DELETE", _binding_path(path, a))
        return c.request("GET", path + "/bindings")[0]
    if a.action == "guest-data":
        query = ""
        if a.wait:
            query = "?" + urllib.parse.urlencode(
                {"wait_for_change": "true", "timeout_sec": str(a.timeout),
                 **({"last_etag": a.last_etag} if a.last_etag else {})})
        return c.request("GET", path + "/guest-data" + query,
                         timeout=TIMEOUT + (a.timeout if a.wait else 0))[0]
    if a.action == "set-guest-data":
        return c.request("PATCH", path + "/guest-data",
                         {k: (v or None) for k, v in _pairs(a.pairs, "guest data")})[0]
    if a.action == "password":
        if a.clear:
            c.request("DELETE", path + "/password")
            return {"password": None}
        return c.request("GET", path + "/password")[0]
    raise UsageError(f"unknown server action {a.action}")


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _binding_path(server_path: str, a: argparse.Namespace) -> str:
    if (a.ifname is None) == (a.serial is None):
        raise UsageError("name either --ifname (a tap) or --serial (a serial socket)")
    if a.ifname is not None:
        return f"{server_path}/bindings/{_q(a.node)}/{_q(a.ifname)}"
    return f"{server_path}/serial/{_q(a.node)}/{_q(a.serial)}"


def _read(name: str) -> bytes:
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None


def _meta_path(a: argparse.Namespace) -> str:
    oid = urllib.parse.quote(a.id, safe="")
    if a.object == "runtime":
        return f"/v1/servers/{oid}/runtime/metadata/{a.cls}"
    return f"/v1/{OBJECTS[a.object]}/{oid}/metadata/{a.cls}"


def _meta_cmd(c: Client, a: argparse.Namespace) -> Any:
    path = _meta_path(a)
    if a.action == "get":
        return c.request("GET", path)[0]
    if a.action == "set":
        values: dict[str, Any] = {}
        for key, text in _pairs(a.pairs, "metadata"):
            if a.json:
                try:
                    values[key] = json.loads(text)
                except ValueError:
                    raise UsageError(f"value of {key!r} is not JSON") from None
            else:
                values[key] = text
        return c.request("PATCH", path, values)[0]
    return c.request("PATCH", path, {key: None for key in a.pairs})[0]


def _customer_cmd(c: Client, a: argparse.Namespace) -> Any:
    if a.action == "create":
        body = {k: v for k, v in (("id", a.id), ("name", a.name)) if v}
        return c.request("POST", "/v1/customers", body)[0]
    if a.action == "token":
        return c.request("POST", f"/v1/customers/{urllib.parse.quote(a.id, safe='')}/tokens")[0]
    if a.action == "get":
        return c.request("GET", f"/v1/customers/{urllib.parse.quote(a.id, safe='')}")[0]
    return c.request("GET", "/v1/customers?limit=1000")[0]


def _keypair_cmd(c: Client, a: argparse.Namespace) -> Any:
    path = f"/v1/customers/{urllib.parse.quote(a.customer, safe='')}/keypairs"
    if a.action == "create":
        key = (sys.stdin.buffer.read() if a.file == "-" else _read(a.file)).decode(
            errors="replace").strip()
        return c.request("POST", path, {"name": a.name, "public_key": key})[0]
    if a.action == "list":
        return c.request("GET", path)[0]
    name = urllib.parse.quote(a.name, safe="")
    if a.action == "get":
        return c.request("GET", f"{path}/{name}")[0]
    c.request("DELETE", f"{path}/{name}")
    return {"deleted": a.name}


def _image_cmd(c: Client, a: argparse.Namespace) -> Any:
    if a.action == "set-user-data":
        path = f"/v1/images/{urllib.parse.quote(a.id, safe='')}/user-data"
        data = sys.stdin.buffer.read() if a.file == "-" else _read(a.file)
        part = {"name": a.part, "content_type": a.content_type or _content_type(data),
                "data": base64.b64encode(data).decode()}
        current = c.request("GET", path)[0]["user_data"]
        parts = [p for p in current if p["name"] != a.part]
        return c.request("PUT", path, {"user_data": [*parts, part]})[0]
    if a.action == "final-keys":
        path = f"/v1/images/{urllib.parse.quote(a.id, safe='')}/final-keys"
        if not a.keys:
            return c.request("GET", path)[0]
        return c.request("PUT", path, {"restricted": list(a.keys)})[0]
    if a.action == "create":
        body = {k: v for k, v in (("id", a.id), ("name", a.name), ("owner", a.owner),
                                  ("visibility", a.visibility)) if v}
        return c.request("POST", "/v1/images", body)[0]
    if a.action == "get":
        return c.request("GET", f"/v1/images/{urllib.parse.quote(a.id, safe='')}")[0]
    return c.request("GET", "/v1/images?limit=1000")[0]


def _configdrive_cmd(c: Client, a: argparse.Namespace) -> Any:
    path = (f"/v1/servers/{urllib.parse.quote(a.id, safe='')}/configdrive?"
            + urllib.parse.urlencode({"format": a.format}))
    image, headers = c.fetch("GET", path, headers={"Accept": "application/x-iso9660-image"})
    # The image holds the VM's user-data: readable by its writer only, replaced atomically.
    tmp = f"{a.output}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(image)
        os.replace(tmp, a.output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UsageError(f"cannot write {a.output}: {exc.strerror}") from None
    return {"server": a.id, "format": a.format, "file": a.output, "bytes": len(image),
            "etag": headers.get("ETag")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interceptor ctl", description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("INTERCEPTOR_URL", DEFAULT_URL),
                   help="backend URL (env INTERCEPTOR_URL)")
    p.add_argument("--token", default=os.environ.get("INTERCEPTOR_TOKEN"),
                   help="bearer token (env INTERCEPTOR_TOKEN)")
    top = p.add_subparsers(dest="group", required=True)

    cust = top.add_parser("customer", help="customers").add_subparsers(dest="action",
                                                                        required=True)
    cc = cust.add_parser("create")
    cc.add_argument("--id")
    cc.add_argument("--name")
    for name in ("token", "get"):
        cust.add_parser(name).add_argument("id")
    cust.add_parser("list")

    img = top.add_parser("image", help="images").add_subparsers(dest="action", required=True)
    ic = img.add_parser("create")
    ic.add_argument("--id")
    ic.add_argument("--name")
    ic.add_argument("--owner", help="customer id (admin only; default: platform)")
    ic.add_argument("--visibility", choices=("public", "private"))
    img.add_parser("get").add_argument("id")
    img.add_parser("list")
    iu = img.add_parser("set-user-data", help="set one named part of the image's user-data")
    iu.add_argument("id")
    iu.add_argument("file", metavar="FILE|-")
    iu.add_argument("--part", required=True)
    iu.add_argument("--content-type")
    fk = img.add_parser("final-keys", help="restricted keys servers cannot override")
    fk.add_argument("id")
    fk.add_argument("keys", nargs="*", metavar="KEY")

    kp = top.add_parser("keypair", help="keypairs").add_subparsers(dest="action",
                                                                   required=True)
    kc = kp.add_parser("create")
    kc.add_argument("customer")
    kc.add_argument("name")
    kc.add_argument("file", metavar="PUBKEY_FILE|-")
    kp.add_parser("list").add_argument("customer")
    for name in ("get", "delete"):
        k = kp.add_parser(name)
        k.add_argument("customer")
        k.add_argument("name")

    srv = top.add_parser("server", help="servers").add_subparsers(dest="action", required=True)
    sc = srv.add_parser("create")
    sc.add_argument("--id", help="platform only: choose the id (default: the backend names it)")
    sc.add_argument("--customer", required=True)
    sc.add_argument("--hostname", required=True)
    sc.add_argument("--image")
    sc.add_argument("--key-name", action="append", help="a keypair of the customer")
    gd = srv.add_parser("guest-data", help="read what the guest wrote")
    gd.add_argument("id")
    gd.add_argument("--wait", action="store_true", help="long-poll until it changes")
    gd.add_argument("--last-etag")
    gd.add_argument("--timeout", type=float, default=60.0)
    sg = srv.add_parser("set-guest-data")
    sg.add_argument("id")
    sg.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    for name in ("get", "delete", "enable", "disable", "start", "document", "bindings"):
        srv.add_parser(name).add_argument("id")
    st = srv.add_parser("stop")
    st.add_argument("id")
    st.add_argument("--keep-bindings", action="store_true",
                    help="platform only: keep the bindings (default: release them)")
    srv.add_parser("list")
    pw = srv.add_parser("password")
    pw.add_argument("id")
    pw.add_argument("--clear", action="store_true")
    sk = srv.add_parser("set-keys")
    sk.add_argument("id")
    sk.add_argument("keys", nargs="*", metavar="NAME=KEY")
    sk.add_argument("--key", nargs=2, action="append", metavar=("NAME", "KEY"))
    su = srv.add_parser("set-user-data")
    su.add_argument("id")
    su.add_argument("file", metavar="FILE|-")
    su.add_argument("--part", help="set only this named part (others kept)")
    su.add_argument("--content-type")
    sb = srv.add_parser("bind", help="platform: plug one tap or serial socket")
    sb.add_argument("id")
    sb.add_argument("--node", required=True)
    sb.add_argument("--ifname")
    sb.add_argument("--serial")
    sb.add_argument("--mac", help="the tap's own MAC (served only while it matches)")
    su2 = srv.add_parser("unbind", help="platform: release one binding, or all")
    su2.add_argument("id")
    su2.add_argument("--node")
    su2.add_argument("--ifname")
    su2.add_argument("--serial")

    cd = top.add_parser("configdrive", help="write a server's config-drive ISO (admin)")
    cd.add_argument("id", metavar="SERVER")
    cd.add_argument("-o", "--output", required=True, metavar="FILE.iso")
    cd.add_argument("--format", choices=("openstack", "nocloud"), default="openstack",
                    help="openstack (label config-2, default) or nocloud (label cidata)")

    meta = top.add_parser("meta", help="metadata").add_subparsers(dest="action", required=True)
    for name in ("get", "set", "delete"):
        m = meta.add_parser(name)
        m.add_argument("object", choices=("customer", "image", "server", "runtime"))
        m.add_argument("id")
        m.add_argument("cls", metavar="CLASS",
                       choices=("public", "restricted", "private", "system"))
        if name == "set":
            m.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
            m.add_argument("--json", action="store_true", help="values are JSON")
        elif name == "delete":
            m.add_argument("pairs", nargs="+", metavar="KEY")
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not args.token:
        print("interceptor ctl: no token (--token or INTERCEPTOR_TOKEN)", file=sys.stderr)
        return 2
    handlers = {"server": _server_cmd, "meta": _meta_cmd, "customer": _customer_cmd,
                "image": _image_cmd, "configdrive": _configdrive_cmd,
                "keypair": _keypair_cmd}
    try:
        client = Client(args.url, args.token)
        result = handlers[args.group](client, args)
    except UsageError as exc:
        print(f"interceptor ctl: {exc}", file=sys.stderr)
        return 2
    except HttpFailure as exc:
        print(f"interceptor ctl: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
