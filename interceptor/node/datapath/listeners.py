"""Per-tap transparent listening sockets (shared by the nft and eBPF datapaths).

One listener per tap is what keeps overlapping tenant addresses apart: the
socket is bound to the metadata address *and* to the tap
(``SO_BINDTODEVICE``), so the kernel's TPROXY / ``bpf_sk_assign`` listener
lookup, which takes the ingress device into account, finds this tap's socket
and no other. Two guests with the same IP and the same source port therefore
end up on two different established sockets, each inheriting its tap binding,
and replies leave through the tap they came from without any route.
``IP_TRANSPARENT`` lets the socket bind an address the host does not own.
"""

from __future__ import annotations

import errno
import socket

from interceptor.common.errors import DatapathError
from interceptor.node.datapath.base import METADATA_ADDRESS, METADATA_PORT

# Not exported by Python's socket module on every build.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

DEFAULT_BACKLOG = 1024
IFNAMSIZ = 16


class TapListenerError(DatapathError):
    """A transparent listener could not be opened for a tap."""


class TapGoneError(TapListenerError):
    """The tap the listener was meant for does not exist (any more)."""


def open_tap_listener(ifname: str, address: str = METADATA_ADDRESS,
                      port: int = METADATA_PORT, *,
                      backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A non-blocking listening TCP socket on ``address:port`` bound to ``ifname``.

    The caller owns the socket (hand it to ``loop.create_server(sock=...)``).
    Raises TapGoneError when the device does not exist, TapListenerError for
    anything else (missing CAP_NET_ADMIN/NET_RAW, port taken on that device).
    The socket is bound to the device's *current* ifindex: a tap deleted and
    recreated under the same name needs a new listener.
    """
    name = ifname.encode()
    if not name or len(name) >= IFNAMSIZ or b"/" in name or b"\0" in name:
        raise TapListenerError(f"listener: invalid interface name {ifname!r}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            raise TapGoneError(f"listener: interface {ifname} does not exist") from None
        if exc.errno == errno.EPERM:
            raise TapListenerError(
                f"listener: {ifname}: IP_TRANSPARENT/SO_BINDTODEVICE need "
                "CAP_NET_ADMIN (run the node daemon as root)") from None
        if exc.errno == errno.EADDRINUSE:
            raise TapListenerError(
                f"listener: {address}:{port} is already bound on {ifname}") from None
        raise TapListenerError(
            f"listener: {ifname} {address}:{port}: {exc.strerror or exc}") from None
    return sock


def listener_device(sock: socket.socket) -> str:
    """The interface a listener (or a socket it accepted) is bound to, '' if none."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, IFNAMSIZ)
    return raw.split(b"\0", 1)[0].decode()


def socket_mark(sock: socket.socket) -> int:
    """``SO_MARK`` of an accepted socket: with ``net.ipv4.tcp_fwmark_accept=1``
    it is the mark the datapath set on the SYN (a cross-check, not identity)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)


IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)


def open_tap_listener6(ifname: str, address: str, port: int = METADATA_PORT, *,
                       backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """The IPv6 twin of :func:`open_tap_listener`: ``[address]:port`` bound
    to ``ifname`` with ``IPV6_TRANSPARENT`` (IPv6 only), one per tap and
    metadata address, so that the kernel's own listener lookup (a SYN that
    meets a TIME-WAIT socket, ``bpf_skc_lookup_tcp``) finds it by the address
    the guest asked. A link-local ``address`` is scoped to the tap. Same
    errors as the IPv4 one."""
    name = ifname.encode()
    if not name or len(name) >= IFNAMSIZ or b"/" in name or b"\0" in name:
        raise TapListenerError(f"listener: invalid interface name {ifname!r}")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name)
        scope = socket.if_nametoindex(ifname) if address.lower().startswith("fe80:") else 0
        sock.bind((address, port, 0, scope))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            raise TapGoneError(f"listener: interface {ifname} does not exist") from None
        if exc.errno == errno.EPERM:
            raise TapListenerError(
                f"listener: {ifname}: IPV6_TRANSPARENT/SO_BINDTODEVICE need "
                "CAP_NET_ADMIN (run the node daemon as root)") from None
        if exc.errno == errno.EADDRINUSE:
            raise TapListenerError(
                f"listener: [{address}]:{port} is already bound on {ifname}") from None
        raise TapListenerError(
            f"listener: {ifname} [{address}]:{port}: {exc.strerror or exc}") from None
    return sock
