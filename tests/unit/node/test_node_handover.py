"""The restart hand-over without a kernel datapath: the service manager
protocol over a real Unix datagram socket, and ListenerStore's adoption rules
with real TCP sockets on loopback (SO_BINDTODEVICE to ``lo``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from interceptor.common import sdnotify
from interceptor.node.datapath.listeners import (
    SO_BINDTODEVICE,
    ListenerStore,
    fdname_for,
    ifname_of_fdname,
)


def _manager(tmp_path: Path) -> tuple[socket.socket, dict[str, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    return sock, {"NOTIFY_SOCKET": str(tmp_path / "notify")}


def test_notify_sends_state_and_fds(tmp_path: Path) -> None:
    manager, env = _manager(tmp_path)
    r, w = os.pipe()
    try:
        assert sdnotify.notify("READY=1\nSTATUS=up", environ=env)
        assert manager.recv(100) == b"READY=1\nSTATUS=up"
        assert sdnotify.notify("FDSTORE=1\nFDNAME=x", [w], environ=env)
        data, fds, _, _ = socket.recv_fds(manager, 100, 4)
        assert data == b"FDSTORE=1\nFDNAME=x" and len(fds) == 1
        os.write(fds[0], b"!")
        assert os.read(r, 1) == b"!"
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)
        manager.close()
    assert not sdnotify.notify("READY=1", environ={})


def test_watchdog_interval_is_half_the_timeout() -> None:
    wd = sdnotify.Watchdog.from_environment({"WATCHDOG_USEC": "20000000",
                                             "WATCHDOG_PID": str(os.getpid())})
    assert wd is not None and wd.interval_s == 10.0
    assert sdnotify.Watchdog.from_environment({"WATCHDOG_USEC": "20000000",
                                               "WATCHDOG_PID": "1"}) is None
    assert sdnotify.Watchdog.from_environment({}) is None


def test_listen_fds_only_for_this_process() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b"}
    assert sdnotify.listen_fds(env) == {} and "LISTEN_FDS" not in env


def test_fdnames_round_trip_and_are_valid() -> None:
    for name in ("tap0", "vnet12", "tap:odd", "mdtap-ä"):
        for address in ("169.254.169.254", "fd00:ec2::254", "fe80::a9fe:a9fe"):
            stored = fdname_for(name, address)
            assert sdnotify.valid_fdname(stored) and ifname_of_fdname(stored) == name
    assert len({fdname_for("tap0", a) for a in ("169.254.169.254", "fd00:ec2::254")}) == 2
    assert ifname_of_fdname("other") is None and ifname_of_fdname("tap.zz") is None


def _lo_listener(port: int = 0, address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo")
    except PermissionError:
        sock.close()
        pytest.fail("binding to a device needs CAP_NET_RAW (run the unit tests as root)")
    sock.bind((address, port))
    sock.listen(8)
    return sock


def test_store_adopts_a_fitting_listener_and_publishes_new_ones() -> None:
    sent: list[tuple[str, list[int]]] = []

    def notify(message: str, fds: list[int] | None = None) -> bool:
        sent.append((message, list(fds or [])))
        return True

    inherited = _lo_listener()
    port = inherited.getsockname()[1]
    opened: list[str] = []

    def open_listener(ifname: str, address: str, port: int) -> socket.socket:
        opened.append(ifname)
        return _lo_listener()

    store = ListenerStore([("lo", inherited)], notify=notify, open_listener=open_listener)
    # Same device (ifindex), address and port: the inherited socket itself.
    assert store.open("lo", "127.0.0.1", port) is inherited
    assert store.adopted == {"lo"} and opened == [] and sent == []
    # Nothing inherited for this one: opened, and handed to the fd store.
    fresh = store.open("lo2", "127.0.0.1", 80)
    assert opened == ["lo2"]
    assert sent[-2] == (f"FDSTOREREMOVE=1\nFDNAME={fdname_for('lo2', '127.0.0.1')}", [])
    assert sent[-1] == (f"FDSTORE=1\nFDNAME={fdname_for('lo2', '127.0.0.1')}", [fresh.fileno()])
    assert store.handed_over  # the manager took it: the datapath gets the hand-over grace
    store.released("lo2")
    assert sent[-1] == (f"FDSTOREREMOVE=1\nFDNAME={fdname_for('lo2', '127.0.0.1')}", [])
    inherited.close()
    fresh.close()


def test_store_refuses_a_listener_of_another_port_or_device() -> None:
    sent: list[str] = []
    wrong_port = _lo_listener()
    gone = _lo_listener()
    def notify(message: str, fds: object = None) -> bool:
        sent.append(message)
        return True

    store = ListenerStore([("lo", wrong_port), ("tapgone", gone)], notify=notify,
                          open_listener=lambda *_: _lo_listener())
    replacement = store.open("lo", "127.0.0.1", 1)  # the inherited one is on another port
    assert replacement is not wrong_port and wrong_port.fileno() == -1
    assert store.adopted == set()
    store.release_unclaimed()  # "tapgone" was never claimed: closed and withdrawn
    assert gone.fileno() == -1
    assert f"FDSTOREREMOVE=1\nFDNAME={fdname_for('tapgone', '127.0.0.1')}" in sent
    replacement.close()


def test_store_keeps_one_listener_per_tap_and_address() -> None:
    """IPv4 and IPv6 listeners of one tap are stored, adopted and withdrawn
    each under its own name."""
    sent: list[str] = []

    def notify(message: str, fds: object = None) -> bool:
        sent.append(message)
        return True

    v4, v6 = _lo_listener(), _lo_listener(address="::1")
    p4, p6 = v4.getsockname()[1], v6.getsockname()[1]
    store = ListenerStore([("lo", v6), ("lo", v4)], notify=notify,
                          open_listener=lambda *_: pytest.fail("nothing new to open"))
    assert store.open("lo", "127.0.0.1", p4) is v4
    assert store.open("lo", "::1", p6) is v6
    store.release_unclaimed()
    assert sent == [] and v4.fileno() != -1 and v6.fileno() != -1
    store.released("lo")
    assert set(sent) == {f"FDSTOREREMOVE=1\nFDNAME={fdname_for('lo', a)}"
                         for a in ("127.0.0.1", "::1", "169.254.169.254")}
    v4.close()
    v6.close()
