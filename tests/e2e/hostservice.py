"""A host service on every address of the node namespace (run via Topology.rpc):
counts the TCP connections and UDP datagrams it receives, so a test can prove
guests never reach it."""

from __future__ import annotations

import socket
import threading


class HostService:
    def __init__(self, tcp_port: int, udp_port: int) -> None:
        self.counts = {"tcp": 0, "udp": 0}
        self._tcp = socket.create_server(("0.0.0.0", tcp_port), reuse_port=False)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("0.0.0.0", udp_port))
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._receive, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self._tcp.accept()
            self.counts["tcp"] += 1
            conn.close()

    def _receive(self) -> None:
        while True:
            self._udp.recv(2048)
            self.counts["udp"] += 1

    def seen(self) -> dict[str, int]:
        return dict(self.counts)
