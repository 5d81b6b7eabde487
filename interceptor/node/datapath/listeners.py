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
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterable

from interceptor.common import sdnotify
from interceptor.common.errors import DatapathError
from interceptor.node.datapath.base import METADATA_ADDRESS, METADATA_PORT

# Not exported by Python's socket module on every build.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)

log = logging.getLogger(__name__)

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

    IPv4 or IPv6 by ``address`` (IPv6: ``IPV6_V6ONLY``, and a link-local
    address is scoped to the tap). One per tap and metadata address, so that
    the kernel's own listener lookup (TPROXY, a SYN that meets a TIME-WAIT
    socket, ``bpf_skc_lookup_tcp``) finds it by the address the guest asked.
    The caller owns the socket (hand it to ``loop.create_server(sock=...)``).
    Raises TapGoneError when the device does not exist, TapListenerError for
    anything else (missing CAP_NET_ADMIN/NET_RAW, port taken on that device).
    The socket is bound to the device's *current* ifindex: a tap deleted and
    recreated under the same name needs a new listener.
    """
    name = ifname.encode()
    if not name or len(name) >= IFNAMSIZ or b"/" in name or b"\0" in name:
        raise TapListenerError(f"listener: invalid interface name {ifname!r}")
    v6 = ":" in address
    shown = f"[{address}]:{port}" if v6 else f"{address}:{port}"
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name)
        if v6:
            sock.bind((address, port, 0, _scope(address, ifname)))
        else:
            sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            raise TapGoneError(f"listener: interface {ifname} does not exist") from None
        if exc.errno == errno.EPERM:
            raise TapListenerError(
                f"listener: {ifname}: IP(V6)_TRANSPARENT/SO_BINDTODEVICE need "
                "CAP_NET_ADMIN (run the node daemon as root)") from None
        if exc.errno == errno.EADDRINUSE:
            raise TapListenerError(
                f"listener: {shown} is already bound on {ifname}") from None
        raise TapListenerError(
            f"listener: {ifname} {shown}: {exc.strerror or exc}") from None
    return sock


def _scope(address: str, ifname: str) -> int:
    """The scope id a link-local IPv6 address needs (the tap's ifindex), else 0."""
    return socket.if_nametoindex(ifname) if ipaddress.IPv6Address(address).is_link_local else 0


def listener_device(sock: socket.socket) -> str:
    """The interface a listener (or a socket it accepted) is bound to, '' if none."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, IFNAMSIZ)
    return raw.split(b"\0", 1)[0].decode()


def socket_mark(sock: socket.socket) -> int:
    """``SO_MARK`` of an accepted socket: with ``net.ipv4.tcp_fwmark_accept=1``
    it is the mark the datapath set on the SYN (a cross-check, not identity)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)


# -- listeners that outlive the process ---------------------------------------------
#
# A restart must not close a tap's listening socket: SYNs that arrive while
# no process runs then queue in the socket's backlog (the kernel completes
# the handshake) instead of finding no socket, and the next process accepts
# them. Each listener is therefore handed to the service manager's file
# descriptor store (``FDSTORE=1``, systemd's ``FileDescriptorStoreMax=``) and
# taken back from ``$LISTEN_FDS`` by the next process. Only the socket is
# inherited, never who it serves: the next process attributes it from the
# bindings it reads itself, and only to the tap of the same ifindex.

FDNAME_PREFIX = "tap."
SO_BINDTOIFINDEX = getattr(socket, "SO_BINDTOIFINDEX", 62)
SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", 30)

Key = tuple[str, str]  # (tap name, metadata address as the socket reports it)


def fdname_for(ifname: str, address: str = METADATA_ADDRESS) -> str:
    """The fd store name of a tap's listener on ``address``: hex, because an
    ifname may hold ':' (the separator of ``$LISTEN_FDNAMES``); the default
    IPv4 address has the bare ``tap.<ifname>`` name earlier versions used."""
    name = FDNAME_PREFIX + ifname.encode().hex()
    if address == METADATA_ADDRESS:
        return name
    return f"{name}.{ipaddress.ip_address(address).packed.hex()}"


def ifname_of_fdname(name: str) -> str | None:
    if not name.startswith(FDNAME_PREFIX):
        return None
    try:
        return bytes.fromhex(name[len(FDNAME_PREFIX):].split(".", 1)[0]).decode()
    except (ValueError, UnicodeDecodeError):
        return None


class ListenerStore:
    """Opens per-tap listeners, preferring one inherited from the previous
    process, and keeps the service manager's fd store equal to the open set.

    ``open`` fits ``TapManager``'s ``open_listener`` hook, ``released`` its
    ``on_listener_released`` hook. Without a service manager, ``notify``
    returns False and this is plain ``open_tap_listener``. A tap has one
    listener per metadata address (IPv4 and each IPv6 one); each is stored
    and adopted on its own, by the address the socket itself is bound to.
    """

    def __init__(self, inherited: Iterable[tuple[str, socket.socket]] = (), *,
                 notify: Callable[..., bool] = sdnotify.notify,
                 open_listener: Callable[[str, str, int], socket.socket] = open_tap_listener,
                 ifindex_of: Callable[[str], int] = socket.if_nametoindex) -> None:
        self._inherited: dict[Key, socket.socket] = {}
        for ifname, sock in inherited:
            key = (ifname, _bound_address(sock))
            if key in self._inherited:
                sock.close()  # a second one for the same tap and address: keep one
            else:
                self._inherited[key] = sock
        self._notify = notify
        self._open_listener = open_listener
        self._ifindex_of = ifindex_of
        self._stored: dict[str, set[str]] = {}  # ifname -> fd names held for it
        self.adopted: set[str] = set()
        """Taps with a listener from the previous process (for logs and tests)."""
        self.handed_over = bool(self._inherited)
        """True once a service manager holds listeners for the next process."""
        for ifname, address in self._inherited:
            self._stored.setdefault(ifname, set()).add(fdname_for(ifname, address))

    @classmethod
    def from_environment(cls) -> ListenerStore:
        inherited: list[tuple[str, socket.socket]] = []
        for name, fds in sdnotify.listen_fds().items():
            ifname = ifname_of_fdname(name)
            for fd in fds:
                if ifname is None:
                    os.close(fd)
                    continue
                inherited.append((ifname, socket.socket(fileno=fd)))
        if inherited:
            log.info("inherited %d tap listeners from the previous process", len(inherited))
        return cls(inherited)

    def open(self, ifname: str, address: str, port: int) -> socket.socket:
        name = fdname_for(ifname, address)
        sock = self._inherited.pop((ifname, _normal(address)), None)
        if sock is not None:
            if self._fits(sock, ifname, address, port):
                self.adopted.add(ifname)
                return sock
            log.info("tap %s: inherited listener on %s no longer fits (tap recreated?); "
                     "opening a new one", ifname, address)
            sock.close()
        sock = self._open_listener(ifname, address, port)
        self._withdraw(name)  # at most one stored listener per tap and address
        if self._notify(f"FDSTORE=1\nFDNAME={name}", [sock.fileno()]):
            self.handed_over = True
            self._stored.setdefault(ifname, set()).add(name)
        return sock

    def released(self, ifname: str) -> None:
        """The tap's listeners were closed for good (tap gone, unbound, rebound)."""
        self.adopted.discard(ifname)
        for name in sorted(self._stored.pop(ifname, set()) | {fdname_for(ifname)}):
            self._withdraw(name)

    def release_unclaimed(self) -> None:
        """Close inherited listeners no tap claimed once the taps are applied."""
        for (ifname, address), sock in self._inherited.items():
            sock.close()
            self._withdraw(fdname_for(ifname, address))
            self._stored.get(ifname, set()).discard(fdname_for(ifname, address))
        self._inherited.clear()

    def _withdraw(self, name: str) -> None:
        self._notify(f"FDSTOREREMOVE=1\nFDNAME={name}")

    def _fits(self, sock: socket.socket, ifname: str, address: str, port: int) -> bool:
        v6 = ":" in address
        try:
            bound = sock.getsockname()
            return (sock.family == (socket.AF_INET6 if v6 else socket.AF_INET)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN) == 1
                    and _normal(bound[0]) == _normal(address) and bound[1] == port
                    and sock.getsockopt(socket.SOL_SOCKET, SO_BINDTOIFINDEX)
                    == self._ifindex_of(ifname))
        except (OSError, ValueError):
            return False


def _normal(address: str) -> str:
    """One spelling per address (``fe80::A9FE:a9fe%tap1`` -> ``fe80::a9fe:a9fe``)."""
    try:
        return str(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return address


def _bound_address(sock: socket.socket) -> str:
    try:
        return _normal(str(sock.getsockname()[0]))
    except OSError:
        return ""
