"""Backend configuration (section ``backend``; env ``INTERCEPTOR_BACKEND_*``; flags)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from interceptor.backend.keystone import KeystoneAuth, auth_from_config
from interceptor.backend.limits import (
    MAX_DOCUMENT_BYTES,
    MAX_FILES_BYTES,
    MAX_OBJECT_METADATA_BYTES,
    MAX_REQUEST_BYTES,
    MAX_USER_DATA_BYTES,
    MAX_VALUE_BYTES,
    Limits,
)
from interceptor.common.errors import ConfigError
from interceptor.common.logsetup import LOG_FORMATS

DEFAULT_DATABASE = "sqlite:///var/lib/interceptor/backend.sqlite"
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def parse_node_tokens(value: Any) -> dict[str, str]:
    """A TOML table ``{node = "token"}`` or the text ``node=token,node2=token2``."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        out: dict[str, str] = {}
        for item in value.split(","):
            node, sep, token = item.strip().partition("=")
            if not sep or not node or not token:
                raise ConfigError("config: node_tokens must be node=token[,node=token…]")
            out[node.strip()] = token.strip()
        value = out
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
        raise ConfigError("config: node_tokens must map node names to token strings")
    for node in value:
        if not _NODE.match(node):
            raise ConfigError(f"config: node_tokens: invalid node name {node!r}")
    return dict(value)


@dataclass
class BackendConfig:
    listen_host: str = field(default="127.0.0.1", metadata={"help": "API address"})
    listen_port: int = field(default=8700, metadata={"help": "API port"})
    operator_host: str = field(default="127.0.0.1",
                               metadata={"help": "address of /metrics, /healthz, /readyz"})
    operator_port: int = field(default=8701, metadata={"help": "operator port (0 = off)"})
    database: str = field(default=DEFAULT_DATABASE, metadata={
        "help": "sqlite:///path, a file path, or a postgresql:// DSN"})
    admin_token: str | None = field(default=None, metadata={"help": "platform (admin) token"})
    node_tokens: Any = field(default_factory=dict, metadata={
        "help": "node tokens: node=token,node2=token2 (TOML: a table)"})
    signing_key: str | None = field(default=None, metadata={
        "help": "key shared with the nodes for request signatures"})
    vendordata_static_files: list[str] = field(default_factory=list, metadata={
        "help": "static vendor-data JSON files (comma-separated)"})
    vendordata_dynamic_targets: list[str] = field(default_factory=list, metadata={
        "help": "dynamic vendor-data targets name@url (comma-separated)"})
    vendordata_service_token: str | None = field(default=None, metadata={
        "help": "bearer token sent to dynamic vendor-data targets"})
    vendordata_dynamic_nocache: list[str] = field(default_factory=list, metadata={
        "help": "dynamic targets (names) asked for every document, never cached"})
    vendordata_auth_url: str | None = field(default=None, metadata={
        "help": "Keystone v3 URL: send targets a Keystone token in X-Auth-Token"})
    vendordata_auth_username: str | None = field(default=None, metadata={
        "help": "Keystone user of the vendor-data service token"})
    vendordata_auth_password: str | None = field(default=None, metadata={
        "help": "Keystone password of that user"})
    vendordata_auth_project_name: str | None = field(default=None, metadata={
        "help": "Keystone project the token is scoped to"})
    vendordata_auth_domain: str = field(default="Default", metadata={
        "help": "Keystone domain of the user and the project"})
    vendordata_connect_timeout: float = field(default=5.0, metadata={"help": "seconds"})
    vendordata_read_timeout: float = field(default=5.0, metadata={"help": "seconds"})
    vendordata_ttl: float = field(default=300.0, metadata={
        "help": "seconds a vendor-data result is cached per instance"})
    max_request_bytes: int = field(default=MAX_REQUEST_BYTES, metadata={"help": "bytes"})
    max_value_bytes: int = field(default=MAX_VALUE_BYTES, metadata={"help": "bytes"})
    max_object_metadata_bytes: int = field(default=MAX_OBJECT_METADATA_BYTES,
                                           metadata={"help": "bytes"})
    max_user_data_bytes: int = field(default=MAX_USER_DATA_BYTES, metadata={"help": "bytes"})
    max_files_bytes: int = field(default=MAX_FILES_BYTES, metadata={"help": "bytes"})
    max_document_bytes: int = field(default=MAX_DOCUMENT_BYTES, metadata={"help": "bytes"})
    guest_write_rate: float = field(default=2.0, metadata={
        "help": "guest writes per second per instance (0 = unlimited)"})
    guest_write_burst: int = field(default=20, metadata={
        "help": "guest writes an instance may make at once"})
    shutdown_timeout: float = field(default=10.0, metadata={
        "help": "seconds in-flight requests get after SIGTERM"})
    log_format: str = field(default="auto", metadata={
        "help": "text, json, journal, or auto (journal under systemd)"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})

    def __post_init__(self) -> None:
        self.node_tokens = parse_node_tokens(self.node_tokens)

    def validate(self) -> None:
        for name in ("listen_port", "operator_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"config: {name} must be 0-65535")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"config: log_format must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("config: log_level must be debug, info, warning or error")
        if self.node_tokens and not self.signing_key:
            raise ConfigError("config: signing_key must be set when node_tokens are")
        if not self.database:
            raise ConfigError("config: database must be set")
        for name in ("vendordata_connect_timeout", "vendordata_read_timeout",
                     "vendordata_ttl", "shutdown_timeout", "guest_write_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config: {name} must be ≥ 0")
        if min(self.max_request_bytes, self.max_value_bytes, self.max_object_metadata_bytes,
               self.max_files_bytes, self.max_document_bytes) <= 0:
            raise ConfigError("config: max_* limits must be positive")
        keystone = self.keystone_auth()  # raises when only partly configured
        if self.vendordata_service_token and keystone is not None:
            raise ConfigError("config: vendordata_service_token and vendordata_auth_url "
                              "exclude each other")
        if self.max_user_data_bytes < 64 * 1024:
            raise ConfigError("config: max_user_data_bytes must be at least 65536")

    def keystone_auth(self) -> KeystoneAuth | None:
        return auth_from_config(self.vendordata_auth_url, self.vendordata_auth_username,
                                self.vendordata_auth_password,
                                self.vendordata_auth_project_name, self.vendordata_auth_domain)

    def limits(self) -> Limits:
        return Limits(request_bytes=self.max_request_bytes, value_bytes=self.max_value_bytes,
                      object_metadata_bytes=self.max_object_metadata_bytes,
                      user_data_bytes=self.max_user_data_bytes,
                      files_bytes=self.max_files_bytes,
                      document_bytes=self.max_document_bytes)
