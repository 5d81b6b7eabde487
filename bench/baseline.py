"""The baseline: a static nginx (Debian ``nginx-light``) behind the same wiring.

A second "node" namespace, guests attached by veth pairs exactly like the
product's guests, 169.254.169.254/32 on each host end (so the kernel
answers ARP and delivers locally, no interception) and one nginx worker
serving a file with the same bytes the product serves. One worker because
the node daemon is one Python process: the ratio compares one core with
one core.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.fleet import Fleet
from tests.lab import Guest, Topology, sh

NGINX = "/usr/sbin/nginx"

_CONF = """\
worker_processes 1;
daemon off;
master_process on;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  keepalive_requests 10000000;
  server {{
    listen 169.254.169.254:80;
    location / {{ root {dir}/www; default_type text/plain; }}
  }}
}}
"""


class Baseline:
    """nginx in its own node namespace; ``guest()`` and ``fleet`` attach guests."""

    def __init__(self, files: dict[str, bytes], workers: int = 1) -> None:
        if not Path(NGINX).exists():
            raise RuntimeError(f"{NGINX} missing: apt-get install nginx-light")
        self.topo = Topology()
        self.fleet = Fleet(self.topo, "b")
        self.dir = Path(tempfile.mkdtemp(prefix="interceptor-bench-nginx-"))
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "tmp").mkdir()
        for path, body in files.items():
            target = self.dir / "www" / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        conf = _CONF.format(dir=self.dir).replace("worker_processes 1;",
                                                   f"worker_processes {workers};")
        (self.dir / "nginx.conf").write_text(conf)

    def guest(self) -> Guest:
        g = self.topo.add_guest(ip="10.0.0.2/24")
        sh(["ip", "addr", "add", "169.254.169.254/32", "dev", g.tap], netns=self.topo.node)
        sh(["ip", "route", "add", "10.0.0.0/24", "dev", g.tap], netns=self.topo.node)
        self._start()
        return g

    def add_fleet(self, count: int) -> list[str]:
        guests = self.fleet.add(count, local_address=True)
        self._start()
        return [g.netns for g in guests]

    def _start(self) -> None:
        if self.proc is not None:
            return
        log = open(self.dir / "stdout.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.topo.node, NGINX, "-p", str(self.dir), "-c",
             str(self.dir / "nginx.conf")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log()}")
            r = sh(["ss", "-Hltn", "sport", "=", ":80"], netns=self.topo.node, check=False)
            if "169.254.169.254:80" in r.stdout:
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen: {self.log()}")

    def log(self) -> str:
        out = []
        for name in ("error.log", "stdout.log"):
            path = self.dir / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers exit too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.fleet.close()
        self.topo.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def baseline(files: dict[str, bytes], workers: int = 1) -> Iterator[Baseline]:
    b = Baseline(files, workers)
    try:
        yield b
    finally:
        b.close()
