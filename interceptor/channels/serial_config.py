"""Configuration of ``interceptor serial`` (section ``[serial]``, env ``INTERCEPTOR_SERIAL_*``).

With ``driver = "backend"`` the daemon also reads the node's own options
(``node_name``, ``backend_url``, ``node_token``, ``signing_key``) from the
``[node]`` section of the same file and ``INTERCEPTOR_NODE_*``
(``interceptor/node/config.py``): it runs on the compute node, as that node.
"""

from __future__ import annotations

import grp
from dataclasses import dataclass

from interceptor.common.config import opt
from interceptor.common.errors import ConfigError


@dataclass
class SerialConfig:
    driver: str = opt("backend", "where metadata comes from: backend (node API) or file")
    directory: str | None = opt(None, "file driver: directory of <vm-name>.yaml files")
    socket_dir: str = opt("/run/interceptor-serial",
                          "one UNIX socket per bound VM: <socket_dir>/<name>.sock")
    socket_mode: str = opt("0660", "permissions of the sockets (octal)")
    socket_group: str | None = opt(
        None, "group of the sockets (name or id), e.g. the hypervisor's (libvirt-qemu)")
    tcp_host: str = opt("127.0.0.1", "address of the concentrator port")
    tcp_port: int = opt(13370, "concentrator port; 0 disables it")
    concentrator_token: str | None = opt(
        None, "secret of the concentrator's REGISTER line; the TCP port opens only when set")
    max_line: int = opt(4096, "longest line a guest may send (bytes)")
    packet_rate: float = opt(10.0, "requests per second per VM")
    packet_burst: int = opt(20, "burst of the per-VM request rate")
    read_rate: float = opt(65536.0, "bytes per second read from one VM (0: unbounded)")
    partial_timeout: float = opt(10.0, "seconds a half-sent line is kept")
    write_timeout: float = opt(30.0, "seconds a guest has to read an answer")
    max_connections: int = opt(4, "connections per VM endpoint")
    poll_interval: float = opt(2.0, "file driver: seconds between directory scans")
    operator_host: str = opt("127.0.0.1", "operator listener (metrics, health)")
    operator_port: int = opt(9102, "operator listener port; 0 disables")
    log_format: str = opt("text", "text or json")
    log_level: str = opt("info", "debug, info, warning, error")

    def validate(self) -> None:
        if self.driver not in ("backend", "file"):
            raise ConfigError(f"config: driver must be backend or file, not {self.driver!r}")
        if self.driver == "file" and not self.directory:
            raise ConfigError("config: directory is required with driver = file")
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            raise ConfigError(
                f"config: socket_mode must be octal, not {self.socket_mode!r}") from None
        if not 0 <= mode <= 0o777:
            raise ConfigError("config: socket_mode must be 0000..0777")
        self.gid  # noqa: B018 - validates the group name
        for name in ("tcp_port", "operator_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ConfigError(f"config: {name} must be 0..65535")
        if self.concentrator_token is not None and len(self.concentrator_token) < 16:
            raise ConfigError("config: concentrator_token must be at least 16 characters")
        if self.max_line < 64 or self.max_connections < 1 or self.packet_burst < 1:
            raise ConfigError(
                "config: max_line must be >= 64, max_connections and packet_burst >= 1")
        if self.packet_rate <= 0 or self.partial_timeout <= 0 or self.write_timeout <= 0:
            raise ConfigError(
                "config: packet_rate, partial_timeout and write_timeout must be > 0")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"config: log_format must be text or json, not {self.log_format!r}")

    @property
    def mode(self) -> int:
        return int(self.socket_mode, 8)

    @property
    def gid(self) -> int | None:
        """The socket group's id (ConfigError when no such group exists)."""
        if self.socket_group is None:
            return None
        if self.socket_group.isdigit():
            return int(self.socket_group)
        try:
            return grp.getgrnam(self.socket_group).gr_gid
        except KeyError:
            raise ConfigError(f"config: socket_group: no group {self.socket_group!r}") from None

    @property
    def tcp_enabled(self) -> bool:
        return self.tcp_port != 0 and self.concentrator_token is not None
