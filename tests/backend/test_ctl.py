"""``interceptor ctl`` against a running backend: every command, errors and exit codes."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from interceptor import ctl
from tests.backend.support import ADMIN, Api


async def _ctl(api: Api, capsys: pytest.CaptureFixture[str], *args: str,
               token: str = ADMIN) -> tuple[int, Any, str]:
    code = await asyncio.to_thread(ctl.main, ["--url", api.base, "--token", token, *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_ctl_commands(api: Api, capsys: pytest.CaptureFixture[str],
                            tmp_path: Path) -> None:
    code, out, err = await _ctl(api, capsys, "customer", "create", "--id", "c1",
                                "--name", "One")
    assert code == 0 and out["id"] == "c1", err
    code, out, _ = await _ctl(api, capsys, "customer", "token", "c1")
    owner = out["token"]
    code, out, _ = await _ctl(api, capsys, "image", "create", "--id", "img1",
                              "--visibility", "public", token=owner)
    assert code == 0 and out["owner"] == "c1"
    code, out, err = await _ctl(api, capsys, "server", "create", "--id", "vm1", "--customer",
                                "c1", "--hostname", "vm1", token=owner)
    assert code == 1 and "chosen by the platform" in err  # ids are the platform's
    code, out, _ = await _ctl(api, capsys, "server", "create", "--customer",
                              "c1", "--hostname", "vm0", "--image", "img1", token=owner)
    assert code == 0 and out["image_id"] == "img1" and out["id"].startswith("i-")
    code, out, _ = await _ctl(api, capsys, "server", "create", "--id", "vm1", "--customer",
                              "c1", "--hostname", "vm1", "--image", "img1")
    assert code == 0 and out["id"] == "vm1"
    code, out, _ = await _ctl(api, capsys, "server", "set-keys", "vm1",
                              "alice=ssh-ed25519 AAAA alice", "--key", "bob", "ssh-rsa BBBB b",
                              token=owner)
    assert code == 0
    assert out["ssh_keys"] == [{"name": "alice", "key": "ssh-ed25519 AAAA alice"},
                               {"name": "bob", "key": "ssh-rsa BBBB b"}]
    ud = tmp_path / "ud.yaml"
    ud.write_bytes(b"#cloud-config\nhostname: vm1\n")
    code, out, _ = await _ctl(api, capsys, "server", "set-user-data", "vm1", str(ud),
                              token=owner)
    assert out["user_data"][0]["content_type"] == "text/cloud-config"
    script = tmp_path / "s.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    code, out, _ = await _ctl(api, capsys, "server", "set-user-data", "vm1", str(script),
                              "--part", "platform", token=owner)
    assert [p["name"] for p in out["user_data"]] == ["user", "platform"]
    assert base64.b64decode(out["user_data"][1]["data"]) == b"#!/bin/sh\necho hi\n"
    code, out, err = await _ctl(api, capsys, "server", "bind", "vm1", "--node", "node-a",
                                "--ifname", "tap-vm1", token=owner)
    assert code == 1 and "HTTP 403" in err  # bindings are the platform's
    code, out, _ = await _ctl(api, capsys, "server", "bind", "vm1", "--node", "node-a",
                              "--ifname", "tap-vm1", "--mac", "FE:54:00:00:00:01")
    assert code == 0 and out["binding"]["mac"] == "fe:54:00:00:00:01"
    code, out, _ = await _ctl(api, capsys, "server", "bind", "vm1", "--node", "node-a",
                              "--serial", "vm1")
    code, out, _ = await _ctl(api, capsys, "server", "bindings", "vm1")
    assert [(b["node"], b.get("ifname"), b.get("serial")) for b in out["bindings"]] == [
        ("node-a", "tap-vm1", None), ("node-a", None, "vm1")]
    code, out, _ = await _ctl(api, capsys, "server", "disable", "vm1", token=owner)
    assert out["metadata_enabled"] is False
    code, out, _ = await _ctl(api, capsys, "server", "enable", "vm1", token=owner)
    assert out["metadata_enabled"] is True
    code, out, _ = await _ctl(api, capsys, "meta", "set", "server", "vm1", "public",
                              "role=web", "n=3", token=owner)
    assert out == {"role": "web", "n": "3"}
    code, out, _ = await _ctl(api, capsys, "meta", "set", "server", "vm1", "public",
                              "n=3", "--json", token=owner)
    assert out == {"role": "web", "n": 3}
    code, out, _ = await _ctl(api, capsys, "meta", "delete", "server", "vm1", "public", "n",
                              token=owner)
    assert out == {"role": "web"}
    code, out, _ = await _ctl(api, capsys, "server", "start", "vm1", token=owner)
    assert out["running"] is True
    code, out, _ = await _ctl(api, capsys, "meta", "set", "runtime", "vm1", "public",
                              "boot=1", token=owner)
    assert out == {"boot": "1"}
    doc = await api.document("vm1")
    assert doc["meta"]["server"]["public"] == {"role": "web"}
    assert doc["meta"]["runtime"]["public"] == {"boot": "1"}
    assert len(doc["user_data"]) == 2 and len(doc["ssh_keys"]) == 2
    code, out, _ = await _ctl(api, capsys, "server", "document", "vm1", token=owner)
    assert out["instance_id"] == "vm1"
    code, out, _ = await _ctl(api, capsys, "server", "stop", "vm1", "--keep-bindings")
    assert out["running"] is False
    code, out, _ = await _ctl(api, capsys, "server", "unbind", "vm1", "--node", "node-a",
                              "--serial", "vm1")
    assert [b["ifname"] for b in out["bindings"]] == ["tap-vm1"]
    code, out, _ = await _ctl(api, capsys, "server", "unbind", "vm1")
    assert out["bindings"] == []
    code, out, _ = await _ctl(api, capsys, "server", "get", "vm1", token=owner)
    assert out["hostname"] == "vm1"
    code, out, _ = await _ctl(api, capsys, "server", "delete", "vm1", token=owner)
    assert code == 0
    # Errors: HTTP → exit 1, one line; usage → exit 2.
    code, out, err = await _ctl(api, capsys, "server", "get", "vm1", token=owner)
    assert code == 1 and err.strip() == "interceptor ctl: HTTP 404: server vm1 not found"
    code, out, err = await _ctl(api, capsys, "meta", "set", "system", "x", "public", "k=v")
    assert code == 2
    code, out, err = await _ctl(api, capsys, "meta", "set", "server", "x", "public", "novalue")
    assert code == 2 and "NAME=VALUE" in err
    code, out, err = await _ctl(api, capsys, "server", "get", "vm1", token="bad")
    assert code == 1 and "HTTP 401" in err


def test_ctl_usage_and_unreachable() -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "interceptor.ctl", *args],
                              capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", **env})
    r = run("server", "get", "x")
    assert r.returncode == 2 and "token" in r.stderr
    r = run("bogus")
    assert r.returncode == 2
    r = run("server", "get", "x", INTERCEPTOR_TOKEN="t", INTERCEPTOR_URL="http://127.0.0.1:9")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot reach" in r.stderr
    r = run("--url", "file:///etc/passwd", "--token", "t", "server", "get", "x")
    assert r.returncode == 2


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_ctl_model_commands(api: Api, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    owner = await api.customer("c1")
    key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxFqGk6JmrTJ3N3pCZTjI4PbnPf2Gr0c7bT"
           "XxY2e2fE ctl@test")
    pub = tmp_path / "id.pub"
    pub.write_text(key + "\n")
    code, out, err = await _ctl(api, capsys, "keypair", "create", "c1", "laptop", str(pub),
                                token=owner)
    assert code == 0 and out["public_key"] == key, err
    code, out, _ = await _ctl(api, capsys, "keypair", "get", "c1", "laptop", token=owner)
    assert code == 0 and out["fingerprint"].startswith("SHA256:")
    code, out, err = await _ctl(api, capsys, "keypair", "create", "c1", "bad", str(tmp_path),
                                token=owner)
    assert code == 2 and "cannot read" in err
    code, out, _ = await _ctl(api, capsys, "image", "create", "--id", "img1", token=owner)
    code, out, err = await _ctl(api, capsys, "server", "create", "--customer", "c1",
                                "--hostname", "vm1", "--image", "img1", "--key-name", "laptop",
                                token=owner)
    assert code == 0 and out["key_names"] == ["laptop"], err
    sid = out["id"]
    part = tmp_path / "mirror.yaml"
    part.write_bytes(b"#cloud-config\n")
    code, out, _ = await _ctl(api, capsys, "image", "set-user-data", "img1", str(part),
                              "--part", "mirror", token=owner)
    assert code == 0 and [p["name"] for p in out["user_data"]] == ["mirror"]
    assert out["user_data"][0]["content_type"] == "text/cloud-config"
    code, out, _ = await _ctl(api, capsys, "image", "final-keys", "img1", "mirror",
                              token=owner)
    assert out == {"restricted": ["mirror"]}
    code, out, _ = await _ctl(api, capsys, "image", "final-keys", "img1", token=owner)
    assert out == {"restricted": ["mirror"]}
    code, out, _ = await _ctl(api, capsys, "server", "set-guest-data", sid, "q=1", "x=",
                              token=owner)
    assert code == 0 and out == {"q": "1"}
    code, out, _ = await _ctl(api, capsys, "server", "guest-data", sid, "--wait",
                              "--timeout", "0.2", token=owner)
    assert code == 0 and out == {"q": "1"}
    doc = (await api.call("GET", f"/v1/servers/{sid}/document", owner)).body
    assert [k["name"] for k in doc["ssh_keys"]] == ["laptop"]
    assert [p["name"] for p in doc["user_data"]] == ["mirror"]
    code, out, _ = await _ctl(api, capsys, "keypair", "delete", "c1", "laptop", token=owner)
    assert code == 0 and out == {"deleted": "laptop"}
    code, out, _ = await _ctl(api, capsys, "keypair", "list", "c1", token=owner)
    assert out == {"items": []}
