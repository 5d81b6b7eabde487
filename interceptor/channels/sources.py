"""What the serial channel needs of a metadata source, and the errors a source raises.

The serial server (``interceptor/channels/serial_server.py``) owns this
interface; ``file_source.FileSource`` (YAML files) and
``backend_source.BackendSource`` (the central backend through the node API)
implement it, and a site can plug in its own.

A *binding* is the identity of one serial endpoint: the socket
``<socket_dir>/<name>.sock`` (or a concentrator that registers ``name``)
belongs to one instance. An endpoint whose name is not bound gets nothing.
Whenever a name's binding identity changes (another instance, a new
generation), the server closes that name's connections, so an answer can only ever be built
from the document of the binding the connection was accepted under.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from interceptor.formats.document import InstanceDocument

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""A serial endpoint name (the socket is ``<name>.sock``)."""


@dataclass(frozen=True)
class SerialBinding:
    name: str
    instance_id: str
    metadata_enabled: bool = True
    generation: int = 0

    @property
    def identity(self) -> tuple[str, str, int]:
        """Who the endpoint is: a change of it ends the name's connections (a change of
        ``metadata_enabled`` does not: it only changes the answers)."""
        return self.name, self.instance_id, self.generation


class SourceError(Exception):
    """Base of the errors a source raises."""


class SourceUnavailable(SourceError):
    """The source could not answer now (backend down, unreadable file): retry later."""


class NotBound(SourceError):
    """The binding is gone or changed: the connection must end."""


class MetadataDisabled(SourceError):
    """The platform switched metadata off for this VM."""


class SerialSource(Protocol):
    async def bindings(self) -> Mapping[str, SerialBinding]:
        """Every serial name this source serves now (raises SourceUnavailable)."""
        ...

    async def document(self, binding: SerialBinding) -> InstanceDocument:
        """The document of ``binding``'s instance (raises a SourceError)."""
        ...

    async def follow(self, on_change: Callable[[], Awaitable[None]]) -> None:
        """Run until cancelled; await ``on_change()`` whenever ``bindings()`` may differ."""
        ...


def valid_name(name: str) -> bool:
    return bool(NAME.match(name))
