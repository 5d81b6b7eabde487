"""The metadata model end to end (issue 12): real backend and node daemon
processes, guests in namespaces reaching 169.254.169.254 through the datapath,
``interceptor ctl`` and the REST API as the owner.

* guest read-write metadata: PUT of public/restricted keys (only when the
  owner allows guest writes, 503 while the backend is down), read-back of
  guest data, the owner long-polling ``?wait_for_change`` for the guest's
  answer;
* a consumed key is gone from every surface the guest has;
* guest self-disable: refused by the datapath within 1 s, back on only by
  the owner (both datapaths);
* keypairs, customer ``sshkeys`` and named user-data parts (an image part
  merged first) on every surface; an image's final key; NoCloud ``ami-id``,
  ``region`` and ``tags``;
* Keystone-authenticated dynamic vendor data (a Keystone-compatible token
  endpoint as a process), OCCI ``text/occi`` creation, both through the
  backend process to the guest.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml

from interceptor.formats.xml_metadata import decode_keys, decode_xml
from tests.e2e.stack import BACKEND_PORT, ProductStack, get, guest_request, metric, product
from tests.lab import PYTHON, REPO, Guest, Topology, readline, stderr_tail, stop

pytestmark = [pytest.mark.root, pytest.mark.e2e]

KEY_PAIR = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxFqGk6JmrTJ3N3pCZTjI4PbnPf2Gr0c7bT"
            "XxY2e2fE laptop@e2e")
KEY_OPS = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGSc3FqdDlm1lGlv1fW6eNfJ3hzk5KbXc7kE"
           "1Mv1Aa9d ops@e2e")


@pytest.fixture
def nft_stack(topology: Topology) -> Iterator[ProductStack]:
    with product(topology, datapath="nft") as s:
        yield s


def _wait_served(guest: Guest, iid: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while get(guest, "/latest/meta-data/instance-id", max_time=1.0)[:2] != (200, iid):
        assert time.monotonic() < deadline, f"{iid} not served within {timeout}s"
        time.sleep(0.02)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_guest_writes_keys_and_reads_back_while_the_owner_long_polls(
        nft_stack: ProductStack) -> None:
    stack = nft_stack
    allowed = stack.add_guest()
    denied = stack.add_guest()
    stack.put_server("i-rw-yes", hostname="rw-yes", ifname=allowed.tap, guest_writes=True)
    stack.put_server("i-rw-no", hostname="rw-no", ifname=denied.tap)
    _wait_served(allowed, "i-rw-yes")
    _wait_served(denied, "i-rw-no")

    # The owner hands the guest a question and long-polls (ctl) for its answer.
    stack.ctl("server", "set-guest-data", "i-rw-yes", "question=ready?")
    current = stack.api("GET", "/v1/servers/i-rw-yes/guest-data")
    assert current == (200, {"question": "ready?"})
    assert get(allowed, "/interceptor/v1/guest-data/question")[:2] == (200, "ready?")
    etag = _owner_etag(stack, "/v1/servers/i-rw-yes/guest-data")
    waiter = subprocess.Popen(
        ["ip", "netns", "exec", stack.netns, PYTHON, "-m", "interceptor", "ctl", "--url",
         f"http://127.0.0.1:{BACKEND_PORT}", "--token", stack.admin_token, "server",
         "guest-data", "i-rw-yes", "--wait", "--last-etag", etag, "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert waiter.poll() is None, "the owner's long-poll returned before any change"
        written = time.monotonic()
        assert guest_request(allowed, "PUT", "/interceptor/v1/guest-data/answer", "yes") == 204
        out, err = waiter.communicate(timeout=20)
        told_after = time.monotonic() - written
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate(timeout=5)
    assert waiter.returncode == 0, err
    assert json.loads(out) == {"question": "ready?", "answer": "yes"}
    print(f"\nowner long-poll told of the guest's write after {told_after * 1000:.0f} ms")
    assert told_after < 1.0, told_after

    # Keys of the server's own classes: written, read back on every surface.
    assert guest_request(allowed, "PUT", "/interceptor/v1/meta/restricted/result", "ok-42") == 204
    assert guest_request(allowed, "PUT", "/interceptor/v1/meta/public/stage", "done") == 204
    assert get(allowed, "/interceptor/v1/meta/restricted/result")[:2] == (200, "ok-42")
    assert get(allowed, "/interceptor/v1/meta/public/")[1].splitlines() == ["stage"]
    meta = json.loads(get(allowed, "/openstack/latest/meta_data.json")[1])["meta"]
    assert meta == {"stage": "done", "result": "ok-42"}
    xml = decode_xml(get(allowed, "/metadata")[1].encode())
    assert xml["server"]["restricted"] == {"result": "ok-42"}
    assert stack.api("GET", "/v1/servers/i-rw-yes/metadata/restricted")[1] == \
        {"result": "ok-42"}
    assert guest_request(allowed, "PUT", "/interceptor/v1/meta/private/x", "no") == 405
    # Not allowed: nothing is written.
    assert guest_request(denied, "PUT", "/interceptor/v1/meta/public/stage", "done") == 403
    assert stack.api("GET", "/v1/servers/i-rw-no/metadata/public")[1] == {}
    # Durable before 2xx: with the backend down the write fails, never "succeeds".
    stack.stop_backend()
    try:
        assert guest_request(allowed, "PUT", "/interceptor/v1/meta/public/stage", "lost") == 503
    finally:
        stack.start_backend()
    assert stack.api("GET", "/v1/servers/i-rw-yes/metadata/public")[1] == {"stage": "done"}


def _owner_etag(stack: ProductStack, path: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", stack.netns, "curl", "-sS", "-i",
                        "-H", f"Authorization: Bearer {stack.admin_token}",
                        f"http://127.0.0.1:{BACKEND_PORT}{path}"],
                       capture_output=True, text=True, timeout=10, check=True)
    for line in r.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "etag":
            return value.strip()
    raise AssertionError(f"no ETag: {r.stdout[:300]}")


def test_consumed_key_is_gone_from_every_surface(nft_stack: ProductStack) -> None:
    stack = nft_stack
    guest = stack.add_guest()
    stack.ensure_customer("cust-shadow")
    status, _ = stack.api("POST", "/v1/images", {"id": "img-shadow", "visibility": "public"})
    assert status == 201
    stack.put_server("i-shadow", hostname="shadow", ifname=guest.tap,
                     customer="cust-shadow", image_id="img-shadow", guest_writes=True)
    for path, value in (("/v1/customers/cust-shadow", "cust-tok-1"),
                        ("/v1/images/img-shadow", "img-tok-1"),
                        ("/v1/servers/i-shadow", "srv-tok-1")):
        status, body = stack.api("PATCH", path + "/metadata/public", {"join_token": value})
        assert status == 200, body
    _wait_served(guest, "i-shadow")
    md = "/openstack/latest/meta_data.json"
    assert json.loads(get(guest, md)[1])["meta"]["join_token"] == "srv-tok-1"

    assert guest_request(guest, "DELETE", "/interceptor/v1/meta/public/join_token") == 204
    assert "join_token" not in json.loads(get(guest, md)[1])["meta"]
    xml = get(guest, "/metadata")[1]
    assert "tok-1" not in xml and all("join_token" not in v["public"]
                                      for v in decode_xml(xml.encode()).values())
    assert get(guest, "/interceptor/v1/meta/public/join_token")[0] == 404
    assert "join_token" not in get(guest, "/interceptor/v1/meta/public/")[1]
    for prefix in ("/latest/meta-data/", "/nocloud/meta-data", "/openstack/latest/"):
        assert "tok-1" not in get(guest, prefix)[1]
    assert guest_request(guest, "DELETE", "/interceptor/v1/meta/public/join_token") == 404
    # The customer's key is still the customer's (other servers see it); only
    # this instance no longer does, even after a backend restart.
    assert stack.api("GET", "/v1/customers/cust-shadow/metadata/public")[1] == \
        {"join_token": "cust-tok-1"}
    stack.restart_backend()
    assert "join_token" not in json.loads(get(guest, md)[1])["meta"]
    status, server = stack.api("GET", "/v1/servers/i-shadow")
    assert server["consumed_keys"] == {"public": ["join_token"]}


@pytest.mark.parametrize("datapath", ["nft", "ebpf"])
def test_guest_switches_itself_off_until_the_owner_switches_it_on(
        topology: Topology, datapath: str) -> None:
    with product(topology, datapath=datapath) as stack:
        guest = stack.add_guest()
        other = stack.add_guest(ip="10.0.0.9/24")
        stack.put_server("i-self-off", hostname="self-off-host", ifname=guest.tap)
        stack.put_server("i-self-other", hostname="self-other", ifname=other.tap)
        _wait_served(guest, "i-self-off")
        _wait_served(other, "i-self-other")
        started = time.monotonic()
        assert guest_request(guest, "POST", "/interceptor/v1/disable") == 204
        while get(guest, "/latest/meta-data/instance-id", max_time=1.0)[0] == 200:
            assert time.monotonic() - started < 5, "still served 5 s after the guest's disable"
            time.sleep(0.01)
        first_refusal = time.monotonic() - started
        # From now on the datapath refuses it: no byte, counted at the tap.
        time.sleep(0.2)
        counter = "interceptor_node_datapath_refused_packets_total"
        before = metric(stack.node_metrics(), counter, tap=guest.tap)
        for path in ("/latest/meta-data/hostname", "/interceptor/v1/guest-data/",
                     "/openstack/latest/meta_data.json"):
            status, body, _ = get(guest, path, max_time=2.0)
            assert (status, body) == (0, ""), (path, status, body)
        # The guest cannot take it back (it cannot even reach the service).
        assert guest_request(guest, "POST", "/interceptor/v1/disable") == 0
        assert metric(stack.node_metrics(), counter, tap=guest.tap) >= before + 4
        assert get(other, "/latest/meta-data/instance-id")[:2] == (200, "i-self-other")
        status, server = stack.api("GET", "/v1/servers/i-self-off")
        assert server["metadata_enabled"] is False and "disabled_by_guest" in server
        # Only the owner switches it back on.
        stack.ctl("server", "enable", "i-self-off")
        _wait_served(guest, "i-self-off", timeout=5.0)
        status, server = stack.api("GET", "/v1/servers/i-self-off")
        assert "disabled_by_guest" not in server
    print(f"\nguest self-disable ({datapath}): refused {first_refusal * 1000:.0f} ms after "
          f"the guest's POST was sent")
    assert first_refusal < 1.0, first_refusal


def test_keypairs_sshkeys_and_named_parts_reach_every_surface(
        nft_stack: ProductStack) -> None:
    stack = nft_stack
    guest = stack.add_guest()
    stack.ensure_customer("cust-keys")
    key_file = stack.work / "laptop.pub"
    key_file.write_text(KEY_PAIR + "\n")
    made = stack.ctl("keypair", "create", "cust-keys", "laptop", str(key_file))
    assert made["fingerprint"].startswith("SHA256:")
    assert [k["name"] for k in stack.ctl("keypair", "list", "cust-keys")["items"]] == ["laptop"]
    status, body = stack.api("PATCH", "/v1/customers/cust-keys/metadata/system",
                             {"sshkeys": {"ops": [KEY_OPS]}})
    assert status == 200, body
    stack.ctl("image", "create", "--id", "img-keys", "--visibility", "public")
    mirror = b"#cloud-config\nwrite_files:\n- path: /run/from-image\n  content: mirror\n"
    part_file = stack.work / "mirror.yaml"
    part_file.write_bytes(mirror)
    stack.ctl("image", "set-user-data", "img-keys", str(part_file), "--part", "mirror")
    stack.ctl("meta", "set", "image", "img-keys", "restricted", "apt_mirror=http://m.local/")
    stack.ctl("image", "final-keys", "img-keys", "apt_mirror")
    own = b"#!/bin/sh\necho own > /run/own\n"
    stack.put_server("i-keys", hostname="keys", ifname=guest.tap, customer="cust-keys",
                     image_id="img-keys", key_names=["laptop"],
                     user_data=[{"name": "own.sh", "content_type": "text/x-shellscript",
                                 "data": _b64(own)}],
                     tags={"role": "db", "tier": "gold"}, tags_visible=True,
                     availability_zone="eu-west-1b")
    stack.ctl("meta", "set", "server", "i-keys", "restricted", "apt_mirror=http://evil/",
              "other=server")
    _wait_served(guest, "i-keys")
    assert get(guest, "/latest/meta-data/public-keys/")[:2] == (200, "0=laptop\n1=ops")
    assert get(guest, "/latest/meta-data/public-keys/0/openssh-key")[1] == KEY_PAIR
    assert get(guest, "/latest/meta-data/public-keys/1/openssh-key")[1] == KEY_OPS
    os_md = json.loads(get(guest, "/openstack/latest/meta_data.json")[1])
    assert os_md["public_keys"] == {"laptop": KEY_PAIR, "ops": KEY_OPS}
    assert [k["data"] for k in os_md["keys"]] == [KEY_PAIR, KEY_OPS]
    nc = yaml.safe_load(get(guest, "/nocloud/meta-data")[1])
    assert nc["public-keys"] == [KEY_PAIR, KEY_OPS] and nc["ami-id"] == "img-keys"
    assert nc["region"] == "eu-west-1" and nc["tags"] == ["role=db", "tier=gold"]
    # The image's final key keeps the image's value; other keys the server's.
    assert os_md["meta"]["apt_mirror"] == "http://m.local/"
    assert os_md["meta"]["other"] == "server"
    assert get(guest, "/interceptor/v1/meta/restricted/apt_mirror")[1] == "http://m.local/"
    assert decode_keys(get(guest, "/metadata")[1].encode()) == [
        {"name": "laptop", "key": KEY_PAIR}, {"name": "ops", "key": KEY_OPS, "user": "ops"}]
    # Named parts: the image's first, each addressable, the merged document as before.
    assert get(guest, "/interceptor/v1/user-data/")[:2] == (200, "mirror\nown.sh")
    assert get(guest, "/interceptor/v1/user-data/mirror")[1].encode() == mirror
    assert get(guest, "/interceptor/v1/user-data/own.sh")[1].encode() == own
    merged = get(guest, "/latest/user-data")[1]
    assert merged.startswith("Content-Type: multipart/mixed")
    assert merged.index('filename="mirror"') < merged.index('filename="own.sh"')
    # Deleting the keypair takes its key away from the guest at once.
    stack.ctl("keypair", "delete", "cust-keys", "laptop")
    deadline = time.monotonic() + 5
    while get(guest, "/latest/meta-data/public-keys/")[1] != "0=ops":
        assert time.monotonic() < deadline, "the deleted keypair is still served"
        time.sleep(0.05)


KS_PORT, TARGET_PORT = 8795, 8796


@contextmanager
def keystone_stub(netns: str) -> Iterator[None]:
    """``tests/helpers/keystone.py`` as a process in the node namespace."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, PYTHON, "-m", "tests.helpers.keystone", str(KS_PORT),
         str(TARGET_PORT), "nova", "ks-e2e-password", "service"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        line = readline(proc, 15.0)
        assert line.strip() == "ready", f"keystone stub: {line!r} {stderr_tail(proc)}"
        yield
    finally:
        stop(proc)  # closes stdin (the stub exits), then waits, kills


def _stub(stack: ProductStack, method: str, path: str) -> dict[str, object]:
    r = subprocess.run(["ip", "netns", "exec", stack.netns, "curl", "-fsS", "-X", method,
                        f"http://127.0.0.1:{KS_PORT}{path}"],
                       capture_output=True, text=True, timeout=10, check=True)
    return dict(json.loads(r.stdout))


def test_keystone_authenticated_vendor_data_reaches_the_guest(topology: Topology) -> None:
    """The backend process gets a Keystone token from the stub, sends it in
    X-Auth-Token, caches it, and after Keystone forgets it (target: 401)
    fetches a new one; the guest sees the target's answer throughout."""
    with keystone_stub(topology.node), product(topology, datapath="nft", backend_options={
            "vendordata_dynamic_targets": [f"ks@http://127.0.0.1:{TARGET_PORT}/vendor"],
            "vendordata_auth_url": f"http://127.0.0.1:{KS_PORT}/v3",
            "vendordata_auth_username": "nova", "vendordata_auth_password": "ks-e2e-password",
            "vendordata_auth_project_name": "service"}) as stack:
        guest = stack.add_guest()
        parts = [{"name": "a.yaml", "content_type": "text/cloud-config",
                  "data": _b64(b"#cloud-config\n")},
                 {"name": "b.sh", "content_type": "text/x-shellscript",
                  "data": _b64(b"#!/bin/sh\n")}]
        stack.put_server("i-ks", hostname="ks", ifname=guest.tap, user_data=parts)
        _wait_served(guest, "i-ks")
        vd2 = json.loads(get(guest, "/openstack/latest/vendor_data2.json")[1])
        assert vd2["ks"]["for"] == "i-ks"
        # The target got the owner's two parts as the multipart document the guest reads.
        assert base64.b64decode(vd2["ks"]["user-data"]).decode() == \
            get(guest, "/latest/user-data")[1]
        assert _stub(stack, "GET", "/_test/stats")["tokens_issued"] == 1
        # Keystone forgets its tokens; the next document build gets a 401 with the
        # cached one, fetches a fresh token and asks again.
        _stub(stack, "POST", "/_test/revoke")
        status, body = stack.api("PATCH", "/v1/servers/i-ks/metadata/public", {"v": "2"})
        assert status == 200, body
        deadline = time.monotonic() + 5
        while "\"v\"" not in get(guest, "/openstack/latest/meta_data.json")[1]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        vd2 = json.loads(get(guest, "/openstack/latest/vendor_data2.json")[1])
        assert vd2["ks"]["for"] == "i-ks"
        stats: dict[str, Any] = _stub(stack, "GET", "/_test/stats")
        assert stats["tokens_issued"] == 2 and stats["refused_now_invalid"] >= 1, stats
        assert "ks-e2e-password" not in stack.logs()


def test_occi_created_server_reaches_the_guest(nft_stack: ProductStack) -> None:
    """``text/occi`` creation with the user_data and public_key mixins against
    the backend process; the platform binds it; the guest reads both."""
    stack = nft_stack
    guest = stack.add_guest()
    stack.ensure_customer("cust-occi")
    token = stack.ctl("customer", "token", "cust-occi")["token"]
    stack.ctl("image", "create", "--id", "img-occi", "--visibility", "public")
    query = subprocess.run(
        ["ip", "netns", "exec", stack.netns, "curl", "-fsS", "-H",
         f"Authorization: Bearer {token}", f"http://127.0.0.1:{BACKEND_PORT}/occi1.1/-/"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    assert 'user_data; scheme="http://schemas.openstack.org/compute/instance#"' in query
    assert "img-occi; scheme=\"http://schemas.openstack.org/template/os#\"" in query
    user_data = b"#cloud-config\nhostname: from-occi\n"
    r = subprocess.run(
        ["ip", "netns", "exec", stack.netns, "curl", "-sS", "-i", "-X", "POST",
         "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: text/occi",
         "-H", 'Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; '
               'class="kind"',
         "-H", 'Category: user_data; scheme="http://schemas.openstack.org/compute/instance#";'
               ' class="mixin", public_key; '
               'scheme="http://schemas.openstack.org/instance/credentials#"; class="mixin"',
         "-H", 'Category: img-occi; scheme="http://schemas.openstack.org/template/os#"; '
               'class="mixin"',
         "-H", f'X-OCCI-Attribute: occi.compute.hostname="occi-vm", '
               f'org.openstack.compute.user_data="{_b64(user_data)}"',
         "-H", f'X-OCCI-Attribute: org.openstack.credentials.publickey.name="laptop", '
               f'org.openstack.credentials.publickey.data="{KEY_PAIR}"',
         f"http://127.0.0.1:{BACKEND_PORT}/occi1.1/compute/"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    assert r.startswith("HTTP/1.1 201"), r
    location = next(line.split(":", 1)[1].strip() for line in r.splitlines()
                    if line.lower().startswith("location:"))
    iid = location.rsplit("/", 1)[1]
    stack.bind(iid, guest.tap)
    _wait_served(guest, iid)
    assert get(guest, "/latest/user-data")[1].encode() == user_data
    assert get(guest, "/latest/meta-data/public-keys/")[1] == "0=laptop"
    assert get(guest, "/latest/meta-data/public-keys/0/openssh-key")[1] == KEY_PAIR
    assert get(guest, "/latest/meta-data/ami-id")[1] == "img-occi"
