"""The config-drive builder: what goes on the image, deterministic bytes, valid names."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Literal

import pytest

from interceptor.channels import configdrive
from interceptor.formats.document import InstanceDocument
from interceptor.formats.router import render_path
from tests.helpers.iso import read_iso


def test_every_file_is_what_http_serves(any_doc: InstanceDocument) -> None:
    files = configdrive.drive_files(any_doc, "openstack")
    for path, data in files.items():
        if path.startswith("/openstack/"):
            assert render_path(any_doc, path).body == data, path
        elif path.endswith("/user-data"):
            assert render_path(any_doc, path.removeprefix("/ec2")).body == data
    assert json.loads(files["/ec2/latest/meta-data.json"])["instance-id"] == (
        any_doc["instance_id"])
    nocloud = configdrive.drive_files(any_doc, "nocloud")
    for path, data in nocloud.items():
        assert render_path(any_doc, "/nocloud" + path).body == data


def test_image_holds_the_files_read_only(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    formats: tuple[tuple[Literal["openstack", "nocloud"], str], ...] = (
        ("openstack", "config-2"), ("nocloud", "cidata"))
    for fmt, label in formats:
        contents = read_iso(configdrive.build_iso(doc, fmt))
        assert contents.label == label
        assert contents.files == configdrive.drive_files(doc, fmt)
        assert set(contents.files) <= contents.joliet
        assert all(mode & 0o222 == 0 for mode in contents.modes.values())


def test_same_document_same_bytes_whatever_the_clock_and_zone(
        load_doc: Callable[[str], InstanceDocument], monkeypatch: pytest.MonkeyPatch) -> None:
    doc = load_doc("unicode")
    first = configdrive.build_iso(doc, "openstack")
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        time.sleep(1.1)
        second = configdrive.build_iso(doc, "openstack")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    # The clock is pycdlib's own again after a build.
    import pycdlib.pycdlib
    assert pycdlib.pycdlib.time is time  # type: ignore[attr-defined]
    doc["hostname"] = "changed"
    assert configdrive.build_iso(doc, "openstack") != first


def test_every_test_document_builds(any_doc: InstanceDocument) -> None:
    for fmt in configdrive.FORMATS:
        image = configdrive.build_iso(any_doc, fmt)
        assert len(image) % 2048 == 0 and read_iso(image).files


def test_unknown_format(load_doc: Callable[[str], InstanceDocument]) -> None:
    with pytest.raises(configdrive.ConfigDriveError, match="unknown"):
        configdrive.build_iso(load_doc("normal"), "vfat")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "is_dir", "expected"), [
    ("meta_data.json", False, "META_DATA.JSON;1"), ("user-data", False, "USER_DATA.;1"),
    ("2018-08-27", True, "2018_08_27"), ("vendor_data2.json", False, "VENDOR_DATA2.JSON;1")])
def test_iso_names(name: str, is_dir: bool, expected: str) -> None:
    assert configdrive._iso_name(name, is_dir) == expected


def test_threads_build_at_once(load_doc: Callable[[str], InstanceDocument]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    doc = load_doc("normal")
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda _: configdrive.build_iso(doc, "nocloud"), range(8)))
    assert len(set(images)) == 1
