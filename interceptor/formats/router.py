"""One entry point from a guest path to its bytes: ``render_path(doc, path)``.

``path`` is the URL path without the query string, already percent-decoded.
Empty segments are ignored, so ``/latest``, ``/latest/`` and ``//latest``
are the same path and a directory answers with or without its trailing
slash. The node daemon (and the config-drive builder) call only this.

* ``/`` and ``/{ec2-version}/…``  EC2 style (``ec2``)
* ``/openstack/…``              OpenStack style (``openstack``)
* ``/nocloud/…``                NoCloud seed files (``nocloud``)
* ``/metadata``                 the classes-by-objects XML (``xml_metadata``)
* ``/interceptor/…``            the service's own read-back surface (``guest_view``)
"""

from __future__ import annotations

from interceptor.formats import ec2, guest_view, nocloud, openstack
from interceptor.formats.document import InstanceDocument
from interceptor.formats.rendered import NOT_FOUND, XML, Rendered, etag_of
from interceptor.formats.xml_metadata import render_xml

__all__ = ["Rendered", "etag_of", "render_path"]


def render_path(doc: InstanceDocument, path: str) -> Rendered:
    segments = tuple(part for part in path.split("/") if part)
    if not segments:
        return ec2.render(doc, ())
    head, rest = segments[0], segments[1:]
    if head == "openstack":
        return openstack.render(doc, rest)
    if head == "nocloud":
        return nocloud.render(doc, rest)
    if head == "interceptor":
        return guest_view.render(doc, rest)
    if head == "metadata":
        return Rendered(200, render_xml(doc), XML) if not rest else NOT_FOUND
    return ec2.render(doc, segments)
