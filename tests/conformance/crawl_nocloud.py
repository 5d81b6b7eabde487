"""cloud-init's NoCloud-net datasource seeded from the metadata service.

    /usr/bin/python3 crawl_nocloud.py

``DataSourceNoCloudNet`` with ``seedfrom: http://169.254.169.254/nocloud/``
(what ``ds=nocloud-net;s=…`` gives): cloud-init's ``util.read_seeded`` reads
``meta-data``, ``user-data`` and ``vendor-data``. cloud-init 22.4 does not
fetch ``network-config`` from a ``seedfrom`` URL, so the script reads that
file with cloud-init's own URL reader and YAML loader and parses it with its
network-state parser (what it does with a seed file's network-config).
"""

from __future__ import annotations

from ci_client import METADATA_URL, b64, emit, environment, setup_logging, tempdir, userdata_parts
from cloudinit import url_helper, util
from cloudinit.net import network_state
from cloudinit.sources import DataSourceNoCloud

SEED = METADATA_URL + "/nocloud/"


def main() -> None:
    setup_logging()
    with tempdir() as tmp:
        paths, distro = environment(tmp)
        sys_cfg = {"datasource": {"NoCloud": {"seedfrom": SEED, "fs_label": None}}}
        ds = DataSourceNoCloud.DataSourceNoCloudNet(sys_cfg, distro, paths)
        ok = ds._get_data()
        if not ok:
            emit({"ok": False})
            return
        raw = url_helper.read_file_or_url(SEED + "network-config", timeout=3, retries=2)
        netcfg = util.load_yaml(raw.contents.decode())
        state = network_state.parse_net_config_data(netcfg)
        emit({
            "ok": True,
            "seed": ds.seed,
            "instance_id": ds.get_instance_id(),
            "hostname": ds.get_hostname().hostname,
            "public_keys": sorted(ds.get_public_ssh_keys()),
            "metadata": ds.metadata,
            "userdata_b64": b64(ds.userdata_raw),
            "userdata_parts": userdata_parts(paths, ds.userdata_raw),
            "vendordata_b64": b64(ds.vendordata_raw),
            "vendordata_parts": userdata_parts(paths, ds.vendordata_raw),
            "network_config": netcfg,
            "network_state": {
                "interfaces": {i["name"]: {"mac": i.get("mac_address"),
                                           "subnets": i.get("subnets")}
                               for i in state.iter_interfaces()},
                "dns": list(state.dns_nameservers),
            },
        })


if __name__ == "__main__":
    main()
