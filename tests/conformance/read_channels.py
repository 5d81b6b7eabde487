"""cloud-init's own readers over the other channels (system Python; never imported by pytest).

    read_channels.py configdrive DIR   # DIR: the files of a config-2 ISO
    read_channels.py nocloud DIR       # DIR: the files of a cidata ISO
    read_channels.py cloudsigma TTY    # TTY: a serial line to the serial daemon

``configdrive`` runs ``read_config_drive`` (what DataSourceConfigDrive calls
on the mounted drive), ``nocloud`` runs DataSourceNoCloud with DIR as its
seed directory, ``cloudsigma`` runs DataSourceCloudSigma with its Cepko
client on TTY (the DMI check that it runs on CloudSigma is the only thing
bypassed). Prints one JSON object.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ci_client import emit, environment, setup_logging, tempdir, userdata_parts


def configdrive(source: str) -> dict[str, Any]:
    from cloudinit.sources import DataSourceConfigDrive

    with tempdir() as tmp:
        paths, _ = environment(tmp)
        found = DataSourceConfigDrive.read_config_drive(source)
        return {"ok": True, "metadata": found["metadata"],
                "ec2_metadata": found.get("ec2-metadata"),
                "network_config": found.get("networkdata"),
                "vendordata": found.get("vendordata"),
                "files": found.get("files", {}),
                "userdata_parts": userdata_parts(paths, found.get("userdata"))}


def nocloud(source: str) -> dict[str, Any]:
    from cloudinit.sources import DataSourceNoCloud

    with tempdir() as tmp:
        paths, distro = environment(tmp)
        shutil.copytree(source, os.path.join(paths.seed_dir, "nocloud"))
        ds = DataSourceNoCloud.DataSourceNoCloud({"datasource_list": ["NoCloud"]}, distro,
                                                 paths)
        ok = ds.get_data()
        return {"ok": bool(ok), "instance_id": ds.get_instance_id(),
                "hostname": ds.get_hostname().hostname, "metadata": ds.metadata,
                "network_config": ds.network_config,
                "public_keys": ds.get_public_ssh_keys(),
                "userdata_parts": userdata_parts(paths, ds.userdata_raw),
                "vendordata_raw": ds.vendordata_raw}


def cloudsigma(tty: str) -> dict[str, Any]:
    from cloudinit.sources import DataSourceCloudSigma
    from cloudinit.sources.helpers import cloudsigma as cepko

    cepko.SERIAL_PORT = tty
    cepko.READ_TIMEOUT = 10
    with tempdir() as tmp:
        paths, distro = environment(tmp)
        ds = DataSourceCloudSigma.DataSourceCloudSigma({}, distro, paths)
        ds.is_running_in_cloudsigma = lambda: True  # DMI says QEMU here, not CloudSigma
        ok = ds.get_data()
        one_key = cepko.Cepko().meta("ssh_public_key").result
        return {"ok": bool(ok), "instance_id": ds.get_instance_id(),
                "hostname": ds.get_hostname().hostname,
                "public_keys": ds.get_public_ssh_keys(), "meta_key": one_key,
                "userdata_parts": userdata_parts(paths, ds.userdata_raw),
                "vendordata_raw": ds.vendordata_raw}


def main() -> None:
    setup_logging()
    kind, target = sys.argv[1], sys.argv[2]
    readers = {"configdrive": configdrive, "nocloud": nocloud, "cloudsigma": cloudsigma}
    emit(readers[kind](target))


if __name__ == "__main__":
    main()
