"""cloud-init's OpenStack datasource over HTTP, as its ``init`` stage runs it.

    /usr/bin/python3 crawl_openstack.py

``DataSourceOpenStack._get_data()``: wait for the service, read the version
list, ``meta_data.json``, ``user_data``, ``vendor_data.json``,
``vendor_data2.json``, ``network_data.json`` and every injected file through
``openstack.MetadataReader.read_v2()``, plus its EC2 side crawl; then its own
vendor-data conversion and ``network_data.json`` → network config. Only the
DMI platform check is bypassed (a namespace cannot fake DMI).
"""

from __future__ import annotations

from ci_client import (
    b64,
    emit,
    environment,
    metadata_urls,
    setup_logging,
    tempdir,
    userdata_parts,
)
from cloudinit.sources import DataSourceOpenStack


def main() -> None:
    setup_logging()
    DataSourceOpenStack.detect_openstack = lambda accept_oracle=False: True
    with tempdir() as tmp:
        paths, distro = environment(tmp)
        sys_cfg = {"datasource_list": ["OpenStack"],
                   "datasource": {"OpenStack": {**metadata_urls(),
                                                "max_wait": 10, "timeout": 3, "retries": 1}}}
        ds = DataSourceOpenStack.DataSourceOpenStack(sys_cfg, distro, paths)
        ok = ds._get_data()
        if not ok:
            emit({"ok": False})
            return
        emit({
            "ok": True,
            "version": ds.version,
            "metadata_address": ds.metadata_address,
            "instance_id": ds.get_instance_id(),
            "hostname": ds.get_hostname().hostname,
            "public_keys": sorted(ds.get_public_ssh_keys()),
            "metadata": ds.metadata,
            "userdata_b64": b64(ds.userdata_raw),
            "userdata_parts": userdata_parts(paths, ds.userdata_raw),
            "vendordata_pure": ds.vendordata_pure,
            "vendordata_raw": ds.vendordata_raw,
            "vendordata2_pure": ds.vendordata2_pure,
            "vendordata2_raw": ds.vendordata2_raw,
            "network_json": ds.network_json,
            "network_config": ds.network_config,
            "files": {path: b64(data) for path, data in ds.files.items()},
            "ec2_instance_id": (ds.ec2_metadata or {}).get("instance-id"),
        })


if __name__ == "__main__":
    main()
