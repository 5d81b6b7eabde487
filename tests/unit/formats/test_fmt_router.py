"""The dispatcher: every path of every surface, status and content type."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from interceptor.formats import rendered
from interceptor.formats.document import InstanceDocument
from interceptor.formats.router import Rendered, etag_of, render_path

TEXT, JSON, XML, YAML, OCT = (rendered.TEXT, rendered.JSON, rendered.XML, rendered.YAML,
                              rendered.OCTETS)

# (path, status for doc_normal, content type for doc_normal)
NORMAL_PATHS: list[tuple[str, int, str]] = [
    ("/", 200, TEXT),
    ("", 200, TEXT),
    ("/latest", 200, TEXT),
    ("/latest/", 200, TEXT),
    ("/2009-04-04/", 200, TEXT),
    ("/2016-09-02", 200, TEXT),
    ("/2018-09-24/meta-data", 200, TEXT),
    ("/2021-03-23/meta-data/", 200, TEXT),
    ("/latest/meta-data/ami-id", 200, TEXT),
    ("/latest/meta-data/ami-launch-index", 200, TEXT),
    ("/latest/meta-data/hostname", 200, TEXT),
    ("/latest/meta-data/instance-action", 200, TEXT),
    ("/latest/meta-data/instance-id", 200, TEXT),
    ("/latest/meta-data/instance-type", 200, TEXT),
    ("/latest/meta-data/local-hostname", 200, TEXT),
    ("/latest/meta-data/local-ipv4", 200, TEXT),
    ("/latest/meta-data/mac", 200, TEXT),
    ("/latest/meta-data/network/", 200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/", 200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/", 200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/device-number", 200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/local-ipv4s", 200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/subnet-ipv4-cidr-block",
     200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/ipv6s", 200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/52:54:00:ab:cd:ef/mac", 200, TEXT),
    ("/latest/meta-data/network/interfaces/macs/52:54:00:ab:cd:ef/local-ipv4s", 404, TEXT),
    ("/latest/meta-data/placement/", 200, TEXT),
    ("/latest/meta-data/placement/availability-zone", 200, TEXT),
    ("/latest/meta-data/placement/region", 200, TEXT),
    ("/latest/meta-data/public-keys", 200, TEXT),
    ("/latest/meta-data/public-keys/", 200, TEXT),
    ("/latest/meta-data/public-keys/0", 200, TEXT),
    ("/latest/meta-data/public-keys/0/", 200, TEXT),
    ("/2009-04-04/meta-data/public-keys/0/openssh-key", 200, TEXT),
    ("/latest/meta-data/public-keys/1/openssh-key", 200, TEXT),
    ("/latest/meta-data/public-keys/2/openssh-key", 200, TEXT),
    ("/latest/meta-data/public-keys/3/openssh-key", 404, TEXT),
    ("/latest/meta-data/tags/", 200, TEXT),
    ("/latest/meta-data/tags/instance/", 200, TEXT),
    ("/latest/meta-data/tags/instance/role", 200, TEXT),
    ("/latest/meta-data/tags/instance/bad/key", 404, TEXT),
    ("/2018-09-24/meta-data/tags/instance/role", 404, TEXT),
    ("/2009-04-04/meta-data/network/", 404, TEXT),
    ("/latest/meta-data/nothing", 404, TEXT),
    ("/latest/meta-data/instance-id/extra", 404, TEXT),
    ("/latest/user-data", 200, OCT),
    ("/2009-04-04/user-data", 200, OCT),
    ("/latest/dynamic", 200, TEXT),
    ("/latest/dynamic/instance-identity/", 200, TEXT),
    ("/latest/dynamic/instance-identity/document", 200, JSON),
    ("/latest/dynamic/instance-identity/signature", 404, TEXT),
    ("/latest/api/token", 404, TEXT),
    ("/1999-01-01/meta-data/", 404, TEXT),
    ("/LATEST/", 404, TEXT),
    ("/openstack", 200, TEXT),
    ("/openstack/", 200, TEXT),
    ("/openstack/latest", 200, TEXT),
    ("/openstack/2018-08-27/", 200, TEXT),
    ("/openstack/2012-08-10/meta_data.json", 200, JSON),
    ("/openstack/latest/meta_data.json", 200, JSON),
    ("/openstack/latest/network_data.json", 200, JSON),
    ("/openstack/2013-10-17/network_data.json", 404, TEXT),
    ("/openstack/latest/vendor_data.json", 200, JSON),
    ("/openstack/2012-08-10/vendor_data.json", 404, TEXT),
    ("/openstack/2018-08-27/vendor_data2.json", 200, JSON),
    ("/openstack/2016-06-30/vendor_data2.json", 404, TEXT),
    ("/openstack/latest/user_data", 200, OCT),
    ("/openstack/latest/password", 200, TEXT),
    ("/openstack/2012-08-10/password", 404, TEXT),
    ("/openstack/content/0000", 200, OCT),
    ("/openstack/content/0001", 200, OCT),
    ("/openstack/content/0002", 404, TEXT),
    ("/openstack/content/0", 404, TEXT),
    ("/openstack/content/", 404, TEXT),
    ("/openstack/latest/meta_data.json/x", 404, TEXT),
    ("/openstack/2000-01-01/meta_data.json", 404, TEXT),
    ("/openstack/latest/nothing", 404, TEXT),
    ("/nocloud", 200, TEXT),
    ("/nocloud/", 200, TEXT),
    ("/nocloud/meta-data", 200, YAML),
    ("/nocloud/user-data", 200, OCT),
    ("/nocloud/vendor-data", 200, OCT),
    ("/nocloud/network-config", 200, YAML),
    ("/nocloud/other", 404, TEXT),
    ("/nocloud/meta-data/x", 404, TEXT),
    ("/metadata", 200, XML),
    ("/metadata/", 200, XML),
    ("/metadata/x", 404, TEXT),
    ("/../../etc/passwd", 404, TEXT),
    ("/latest/meta-data/../user-data", 404, TEXT),
]


@pytest.mark.parametrize(("path", "status", "ctype"), NORMAL_PATHS)
def test_every_path_of_normal_doc(load_doc: Callable[[str], InstanceDocument], path: str,
                                  status: int, ctype: str) -> None:
    result = render_path(load_doc("normal"), path)
    assert isinstance(result, Rendered)
    assert (result.status, result.content_type) == (status, ctype)
    if status == 404:
        assert result.body == b"Not Found\n"


EMPTY_404 = ["/latest/user-data", "/openstack/latest/user_data", "/latest/meta-data/ami-id",
             "/latest/meta-data/public-keys/", "/latest/meta-data/tags/", "/latest/meta-data/mac",
             "/latest/meta-data/local-ipv4", "/nocloud/network-config", "/openstack/content/0000"]


@pytest.mark.parametrize("path", EMPTY_404)
def test_empty_doc_leaves_out_what_it_lacks(load_doc: Callable[[str], InstanceDocument],
                                            path: str) -> None:
    assert render_path(load_doc("empty"), path).status == 404


@pytest.mark.parametrize(("path", "body"), [
    ("/nocloud/user-data", b""),
    ("/nocloud/vendor-data", b""),
    ("/openstack/latest/password", b""),
    ("/latest/meta-data/tags/instance/", None),
])
def test_empty_doc_empty_bodies(load_doc: Callable[[str], InstanceDocument], path: str,
                                body: bytes | None) -> None:
    result = render_path(load_doc("empty"), path)
    if body is None:  # tags hidden (tags_visible false)
        assert result.status == 404
    else:
        assert (result.status, result.body) == (200, body)


def test_user_data_not_listed_when_unset(load_doc: Callable[[str], InstanceDocument]) -> None:
    empty = load_doc("empty")
    assert render_path(empty, "/latest/").body.decode().splitlines() == ["meta-data/", "dynamic/"]
    assert "user_data" not in render_path(empty, "/openstack/latest").body.decode().splitlines()
    normal = load_doc("normal")
    assert "user-data" in render_path(normal, "/latest").body.decode().splitlines()
    assert "user_data" in render_path(normal, "/openstack/latest").body.decode().splitlines()


def test_version_lists(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    assert render_path(doc, "/").body == b"2009-04-04\n2016-09-02\n2018-09-24\n2021-03-23\nlatest"
    versions = render_path(doc, "/openstack").body.decode().splitlines()
    assert versions[-1] == "latest"
    assert versions[:-1] == sorted(versions[:-1])
    for needed in ("2018-08-27", "2017-02-22", "2016-10-06", "2016-06-30", "2015-10-15",
                   "2013-10-17", "2013-04-04", "2012-08-10"):
        assert needed in versions


def test_every_path_renders_for_every_doc(any_doc: InstanceDocument) -> None:
    """No document, however odd, makes a renderer raise; bodies are bytes."""
    for path, _, _ in NORMAL_PATHS:
        result = render_path(any_doc, path)
        assert result.status in (200, 404)
        assert isinstance(result.body, bytes)


def test_rendering_is_deterministic(any_doc: InstanceDocument) -> None:
    for path, _, _ in NORMAL_PATHS:
        first, second = render_path(any_doc, path), render_path(any_doc, path)
        assert first == second
        assert etag_of(first.body) == etag_of(second.body)


def test_etag_is_strong_quoted_and_body_dependent() -> None:
    tag = etag_of(b"abc")
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith('W/')
    assert len(tag) == 34
    assert etag_of(b"abc") == tag
    assert etag_of(b"abd") != tag
    assert etag_of(b"") != tag


def test_text_bodies_are_valid_utf8(any_doc: InstanceDocument) -> None:
    for path, _, _ in NORMAL_PATHS:
        result = render_path(any_doc, path)
        if result.content_type != rendered.OCTETS:
            result.body.decode("utf-8")
