"""A tiny HTTP server for testing the guest builder itself (run as a script).

    python http_fixture.py ADDRESS PORT ROUTES_JSON

ROUTES_JSON maps a path to the body served for GET. ``PUT /latest/api/token``
returns the token given as ``"__token__"`` in ROUTES_JSON; a GET that carries
that token in ``X-aws-ec2-metadata-token`` gets the header ``X-Token-Seen: yes``.
Every request is logged to stdout as ``REQ <method> <path> <client ip>``;
``READY`` is printed once the socket listens.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(routes: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    token = routes.get("__token__", "")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, extra: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            print(f"REQ GET {self.path} {self.client_address[0]}", flush=True)
            seen = bool(token) and self.headers.get("X-aws-ec2-metadata-token") == token
            extra = {"X-Token-Seen": "yes" if seen else "no"}
            if self.path in routes and self.path != "__token__":
                self._send(200, routes[self.path].encode(), extra)
            else:
                self._send(404, b"Not Found", extra)

        def do_PUT(self) -> None:
            print(f"REQ PUT {self.path} {self.client_address[0]}", flush=True)
            if self.path == "/latest/api/token" and token:
                self._send(200, token.encode(), {})
            else:
                self._send(405, b"Method Not Allowed", {})

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    address, port, routes = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    server = ThreadingHTTPServer((address, port), make_handler(routes))
    print("READY", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
