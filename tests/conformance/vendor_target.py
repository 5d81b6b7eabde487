"""A dynamic vendor-data target (Nova DynamicJSON style) for the tests.

    python vendor_target.py PORT MODE TOKEN

Listens on 127.0.0.1:PORT (inside the node namespace the test runs it in),
prints ``ready`` and serves until stdin closes (at most 10 minutes).

* ``echo``: answers every POST with a JSON object derived from the request,
  so a test can check what the backend sent: the instance id and hostname it
  posted, whether the bearer token was the configured one, and a
  ``cloud-init`` entry (vendor cloud-config) naming the instance.
* ``hang``: accepts the connection and reads the request, then never
  answers (until stdin closes): a target that hangs.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(mode: str, token: str, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("vendor-target " + (format % args) + "\n")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if mode == "hang":
                stop.wait(600)
                return
            answer = {
                "cloud-init": "#cloud-config\nwrite_files:\n- path: /run/vendor-dynamic\n"
                              f"  content: {body.get('instance-id')}\n",
                "instance": body.get("instance-id"),
                "hostname": body.get("hostname"),
                "project": body.get("project-id"),
                "authorized": self.headers.get("Authorization") == f"Bearer {token}",
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main(port: int, mode: str, token: str) -> None:
    stop = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(mode, token, stop))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
