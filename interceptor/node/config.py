"""Node daemon configuration (section ``[node]``, env ``INTERCEPTOR_NODE_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from interceptor.common.config import opt, required
from interceptor.common.errors import ConfigError
from interceptor.common.logsetup import LOG_FORMATS
from interceptor.node.datapath.base import METADATA_ADDRESSES6
from interceptor.node.datapath.contract import (
    DEFAULT_TAP_PATTERNS,
    DatapathConfig,
    check_patterns,
    options_from,
)


@dataclass
class NodeConfig:
    node_name: str = required("this compute node's name, as bindings name it")
    backend_url: list[str] = required(
        "central backend URL, or a list tried in order (fail-over), "
        "e.g. https://backend.example:8700")
    node_token: str = required("bearer token of this node at the backend")
    signing_key: str = required("platform-wide key that signs node requests")
    backend_ca_file: str | None = opt(
        None, "PEM CA bundle that verifies an https backend_url (unset or empty: system CAs)")
    backend_failback: float = opt(
        30.0, "seconds on a fail-over backend before the first one is tried again")
    datapath: str = opt("nft", "kernel datapath: nft or ebpf")
    tap_patterns: list[str] = opt(
        list(DEFAULT_TAP_PATTERNS),
        "interface name patterns the daemon manages (fail closed); a name, optionally ending in *")
    metadata_address: str = opt("169.254.169.254", "address guests ask")
    metadata_port: int = opt(80, "TCP port guests ask")
    metadata_address6: list[str] = opt(
        list(METADATA_ADDRESSES6),
        "IPv6 addresses guests ask (EC2's, OpenStack's link-local); [] turns IPv6 off")
    operator_host: str = opt("127.0.0.1", "operator listener (metrics, health)")
    operator_port: int = opt(9100, "operator listener port; 0 disables")
    disabled_action: str = opt(
        "reset", "metadata disabled for a VM: reset (datapath refuses) or 403")
    cache_ttl: float = opt(60.0, "seconds a document is fresh before revalidation")
    stale_if_error: float = opt(
        300.0, "seconds a document may be served past its TTL while the backend is down")
    token_secret: str | None = opt(
        None, "secret for EC2 session tokens (random per start when unset)")
    token_hop_limit: int = opt(1, "IP TTL / IPv6 hop limit of EC2 token responses")
    host_allow_udp: list[str] = opt(
        [], "UDP ports guests may reach on this host (e.g. 67 when it runs their DHCP)")
    host_allow_tcp: list[str] = opt([], "TCP ports guests may reach on this host")
    syn_rate: int = opt(
        20, "new connections per second per tap the datapath admits; 0: no limit")
    syn_burst: int = opt(40, "burst of the per-tap connection rate")
    max_connections: int = opt(64, "concurrent connections per tap; 0: no limit")
    rate_limit: float = opt(200.0, "requests per second per VM before 429")
    rate_burst: int = opt(400, "burst of the per-VM request rate limit")
    reconcile_interval: float = opt(30.0, "seconds between full reconciles")
    datapath_check_interval: float = opt(
        5.0, "seconds between checks that the datapath is still in the kernel")
    route_table: int = opt(4711, "policy routing table for marked packets")
    rule_priority: int = opt(10000, "first of the ip rule priorities the daemon uses")
    nft_table: str = opt("interceptor", "nftables table name (inet/netdev)")
    bpf_instance: str = opt(
        "default", "eBPF: pins live in /sys/fs/bpf/interceptor/<bpf_instance>/")
    state_dir: str = opt(
        "/var/lib/interceptor-node",
        "where the daemon keeps which tap incarnation each binding serves (survives restarts)")
    shutdown_grace: float = opt(5.0, "seconds in-flight requests get on SIGTERM")
    keep_datapath_on_exit: bool = opt(
        False, "leave the datapath in the kernel on exit (guests then wait for restart)")
    log_format: str = opt("auto", "text, json, journal, or auto (journal under systemd)")
    log_level: str = opt("info", "debug, info, warning, error")

    def validate(self) -> None:
        if self.datapath not in ("nft", "ebpf"):
            raise ConfigError(f"config: datapath must be nft or ebpf, not {self.datapath!r}")
        if self.disabled_action not in ("reset", "403"):
            raise ConfigError(
                f"config: disabled_action must be reset or 403, not {self.disabled_action!r}")
        if isinstance(self.backend_url, str):  # built in code rather than loaded
            self.backend_url = [self.backend_url]
        if not self.backend_url:
            raise ConfigError("config: backend_url must name at least one URL")
        for url in self.backend_url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"config: backend_url must be an http(s) URL: {url!r}")
        if self.backend_failback < 0:
            raise ConfigError("config: backend_failback must be >= 0")
        if self.backend_ca_file:
            if not all(url.startswith("https://") for url in self.backend_url):
                raise ConfigError("config: backend_ca_file needs an https:// backend_url")
            if not os.access(self.backend_ca_file, os.R_OK):
                raise ConfigError(
                    f"config: backend_ca_file is not a readable file: {self.backend_ca_file!r}")
        check_patterns(self.tap_patterns)
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"config: log_format must be one of {', '.join(LOG_FORMATS)}, "
                              f"not {self.log_format!r}")
        for name in ("node_name", "node_token", "signing_key"):
            if not getattr(self, name):
                raise ConfigError(f"config: {name} must not be empty")
        if not 0 < self.metadata_port < 65536:
            raise ConfigError("config: metadata_port must be 1..65535")
        for name in ("host_allow_udp", "host_allow_tcp"):
            for port in getattr(self, name):
                if not port.isdigit() or not 0 < int(port) < 65536:
                    raise ConfigError(f"config: {name}: {port!r} is not a port number")
        if self.syn_rate < 0 or self.max_connections < 0 or self.syn_burst < 1:
            raise ConfigError("config: syn_rate and max_connections must be >= 0 (0: no limit), "
                              "syn_burst >= 1")
        if self.cache_ttl <= 0 or self.stale_if_error < 0:
            raise ConfigError("config: cache_ttl must be > 0 and stale_if_error >= 0")
        DatapathConfig(**options_from(self))  # the options both datapaths honour
