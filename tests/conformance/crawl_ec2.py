"""cloud-init's EC2 datasource crawl, as its ``init`` stage runs it.

    /usr/bin/python3 crawl_ec2.py token|tokenless [MAX_WAIT]

``token``: the datasource believes it runs on AWS, so it PUTs
``latest/api/token`` first and sends ``X-aws-ec2-metadata-token`` with every
request (IMDSv2). ``tokenless``: an unknown EC2-compatible cloud; cloud-init
probes ``2009-04-04/meta-data/instance-id`` and crawls without tokens
(IMDSv1). The platform is forced because cloud-init otherwise identifies AWS
from DMI data, which a network namespace cannot fake; everything after that
(probing, version choice, crawl, parsing) is cloud-init's own code.
"""

from __future__ import annotations

import sys

from ci_client import (
    b64,
    emit,
    environment,
    metadata_urls,
    setup_logging,
    tempdir,
    userdata_parts,
)
from cloudinit.sources import DataSourceEc2


def main(mode: str, max_wait: int) -> None:
    setup_logging()
    with tempdir() as tmp:
        paths, distro = environment(tmp)
        sys_cfg = {"datasource": {"Ec2": {**metadata_urls(), "max_wait": max_wait,
                                          "timeout": 3, "strict_id": "warn"}}}
        ds = DataSourceEc2.DataSourceEc2(sys_cfg, distro, paths)
        ds._cloud_name = (DataSourceEc2.CloudNames.AWS if mode == "token"
                          else DataSourceEc2.CloudNames.UNKNOWN)
        ok = ds._get_data()
        if not ok:
            emit({"ok": False})
            return
        network = None
        network_error = None
        try:
            network = ds.network_config
        except Exception as exc:  # reported, compared by the test
            network_error = f"{type(exc).__name__}: {exc}"
        emit({
            "ok": True,
            "api_version": ds._crawled_metadata.get("_metadata_api_version"),
            "metadata_address": ds.metadata_address,
            "had_token": bool(ds._api_token),
            "instance_id": ds.get_instance_id(),
            "hostname": ds.get_hostname().hostname,
            "local_hostname": ds.metadata.get("local-hostname"),
            "public_keys": sorted(ds.get_public_ssh_keys()),
            "availability_zone": ds.availability_zone,
            "metadata": ds.metadata,
            "identity": ds.identity,
            "userdata_b64": b64(ds.userdata_raw),
            "userdata_parts": userdata_parts(paths, ds.userdata_raw),
            "network_config": network,
            "network_error": network_error,
        })


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)
