"""The bytes real cloud-init sends, captured once per test session.

Debian's cloud-init (system Python, ``/usr/bin/python3``) asks a recording
server on 127.0.0.1 for what its EC2, OpenStack and NoCloud datasources
fetch: the IMDSv2 token (PUT with the TTL header), metadata paths with the
token, JSON documents. The recorded requests seed the mutation fuzzers.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import threading

_CLIENT = r"""
import sys
from cloudinit import url_helper
base = sys.argv[1]
token = url_helper.readurl(base + "/latest/api/token", request_method="PUT",
    headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, timeout=5).contents
hdr = {"X-aws-ec2-metadata-token": token.decode()}
for path in ("/latest/meta-data/instance-id", "/latest/meta-data/public-keys/0/openssh-key",
             "/latest/user-data", "/latest/dynamic/instance-identity/document"):
    url_helper.readurl(base + path, headers=hdr, timeout=5)
for path in ("/openstack/latest/meta_data.json", "/openstack/2018-08-27/network_data.json",
             "/meta-data", "/user-data"):
    url_helper.readurl(base + path, timeout=5)
"""


def _serve(listener: socket.socket, seen: list[bytes], stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(5)
            data = b""
            while True:
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    head = data[:end].lower()
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    if len(data) >= end + 4 + length:
                        break
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            seen.append(data)
            body = b"AQAEAFakeTokenForCapture=="
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(body) + body)


@functools.cache
def captured_requests() -> tuple[bytes, ...]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    seen: list[bytes] = []
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, seen, stop), daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        subprocess.run(["/usr/bin/python3", "-c", _CLIENT, f"http://127.0.0.1:{port}"],
                       check=True, capture_output=True, timeout=60)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    return tuple(seen)
