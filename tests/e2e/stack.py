"""The whole product on one machine, for end-to-end tests.

``ProductStack`` runs the real processes — ``interceptor backend`` (SQLite)
and ``interceptor node`` — inside the topology's node namespace, exactly as
an operator would start them (config files, the console script), and talks
to the backend API with the real admin client (``interceptor ctl``) or curl,
from inside that namespace. Guests are the topology's guest namespaces.
``close()`` stops both processes (SIGTERM: the daemon removes its datapath)
and keeps their logs for the failure message.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.fdstore import FdStore
from tests.lab import PYTHON, REPO, Guest, Topology, metric_sum, sh

BACKEND_PORT = 8700
BACKEND_OPERATOR_PORT = 8701
NODE_OPERATOR_PORT = 9100


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml(section: str, values: dict[str, Any], tables: dict[str, dict[str, str]] | None = None
          ) -> str:
    lines = [f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for name, table in (tables or {}).items():
        lines.append(f"[{section}.{name}]")
        lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class ProductStack:
    def __init__(self, topo: Topology, *, datapath: str = "nft", node_name: str = "node-a",
                 taps: str = "routed",
                 node_options: dict[str, Any] | None = None,
                 backend_options: dict[str, Any] | None = None,
                 fdstore: bool = False) -> None:
        self.topo = topo
        self.netns = topo.node
        self.datapath = datapath
        self.taps = taps
        self._bridge: str | None = None
        self.node_name = node_name
        self.work = Path(tempfile.mkdtemp(prefix="interceptor-e2e-"))
        self.admin_token = secrets.token_hex(16)
        self.node_token = secrets.token_hex(16)
        self.other_node_token = secrets.token_hex(16)
        self.signing_key = secrets.token_hex(16)
        self.bpf_instance = f"test-{topo.prefix}"
        self.pin_dir = f"/sys/fs/bpf/interceptor/{self.bpf_instance}"
        self.backend_options = {
            "listen_host": "127.0.0.1", "listen_port": BACKEND_PORT,
            "operator_port": BACKEND_OPERATOR_PORT,
            "database": f"sqlite:///{self.work}/backend.sqlite",
            "admin_token": self.admin_token, "signing_key": self.signing_key,
            **(backend_options or {})}
        self.node_options = {
            "node_name": node_name, "backend_url": f"http://127.0.0.1:{BACKEND_PORT}",
            "node_token": self.node_token, "signing_key": self.signing_key,
            "datapath": datapath, "tap_patterns": ["mdtap*", "tap*"],
            "operator_port": NODE_OPERATOR_PORT, "bpf_instance": self.bpf_instance,
            "reconcile_interval": 5.0, "state_dir": str(self.work / "node-state"),
            **(node_options or {})}
        self.backend: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self.extra_backends: list[subprocess.Popen[bytes]] = []
        self.api_port = BACKEND_PORT  # which backend process api() talks to
        # The node under a service manager's fd store (restart hand-over).
        self.fdstore = FdStore(self.work) if fdstore else None

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str],
               fdstore: FdStore | None = None) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = ["ip", "netns", "exec", self.netns, PYTHON, "-m", "interceptor", *args]
        if fdstore is not None:
            return fdstore.spawn(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

    def start_backend(self) -> None:
        cfg = self.work / "backend.toml"
        cfg.write_text(_toml("backend", self.backend_options, {"node_tokens": {
            self.node_name: self.node_token, "node-other": self.other_node_token}}))
        self.backend = self._spawn("backend", ["backend", "serve", "--config", str(cfg)])
        self.wait_http(f"http://127.0.0.1:{BACKEND_OPERATOR_PORT}/healthz", self.backend)

    def start_extra_backend(self, name: str, port: int, operator_port: int
                            ) -> subprocess.Popen[bytes]:
        """Another backend process on the same database (a PostgreSQL DSN in
        ``backend_options``), on its own ports; stopped by ``close()``."""
        cfg = self.work / f"{name}.toml"
        cfg.write_text(_toml("backend", {**self.backend_options, "listen_port": port,
                                         "operator_port": operator_port},
                             {"node_tokens": {self.node_name: self.node_token,
                                              "node-other": self.other_node_token}}))
        proc = self._spawn(name, ["backend", "serve", "--config", str(cfg)])
        self.extra_backends.append(proc)
        self.wait_http(f"http://127.0.0.1:{operator_port}/healthz", proc)
        return proc

    def start_node(self, wait_ready: bool = True, timeout: float = 20.0) -> None:
        cfg = self.work / "node.toml"
        cfg.write_text(_toml("node", self.node_options))
        self.node = self._spawn("node", ["node", "--config", str(cfg)], self.fdstore)
        self.wait_http(f"http://127.0.0.1:{NODE_OPERATOR_PORT}/healthz", self.node, timeout)
        if wait_ready:
            self.wait_http(f"http://127.0.0.1:{NODE_OPERATOR_PORT}/readyz", self.node,
                           allow_unready=True)

    def wait_http(self, url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0,
                  allow_unready: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"process exited ({proc.returncode}):\n{self.logs()}")
            r = sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1",
                    url], netns=self.netns, check=False)
            if r.stdout == "200" or (allow_unready and r.stdout == "503"):
                return
            time.sleep(0.1)
        raise AssertionError(f"{url} not up within {timeout}s:\n{self.logs()}")

    def stop_node(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.node is not None
        proc, self.node = self.node, None
        return _stop(proc, sig, timeout)

    def stop_backend(self, sig: int = signal.SIGTERM) -> int:
        assert self.backend is not None
        proc, self.backend = self.backend, None
        return _stop(proc, sig, 20.0)

    def logs(self) -> str:
        out = []
        for path in sorted(self.work.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(out)

    def close(self) -> None:
        if self.node is not None:
            self.stop_node()
        if self.backend is not None:
            self.stop_backend()
        for proc in self.extra_backends:
            _stop(proc, signal.SIGTERM, 20.0)
        # Whatever a failed test left: the daemon's own cleanup command.
        if self.fdstore is not None:
            self.fdstore.close()
        sh([PYTHON, "-m", "interceptor", "node", "--cleanup", "--datapath", self.datapath,
            "--bpf-instance", self.bpf_instance, "--no-keep-datapath-on-exit"],
           netns=self.netns, check=False, timeout=60)
        shutil.rmtree(self.work)

    def add_guest(self, **kwargs: Any) -> Guest:
        """A guest on a routed tap, or (``taps="bridged"``) on a tap enslaved to
        one Linux bridge shared by all of this stack's guests, as libvirt does."""
        if self.taps == "bridged":
            if self._bridge is None:
                self._bridge = self.topo.add_bridge()
            kwargs.setdefault("bridge", self._bridge)
        return self.topo.add_guest(**kwargs)

    # -- the backend API ---------------------------------------------------------------

    def ctl(self, *args: str, token: str | None = None) -> Any:
        r = sh([PYTHON, "-m", "interceptor", "ctl", "--url", f"http://127.0.0.1:{BACKEND_PORT}",
                "--token", token or self.admin_token, *args], netns=self.netns, check=False,
               timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"ctl {' '.join(args)} -> {r.returncode}: {r.stderr}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        args = ["curl", "-s", "-X", method, "-w", "\n%{http_code}", "--max-time", "10",
                "-H", f"Authorization: Bearer {token or self.admin_token}"]
        for k, v in (headers or {}).items():
            args += ["-H", f"{k}: {v}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        r = sh([*args, f"http://127.0.0.1:{self.api_port}{path}"], netns=self.netns,
               input=json.dumps(body) if body is not None else None)
        text, _, code = r.stdout.rpartition("\n")
        try:
            payload = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            payload = text
        return int(code), payload

    def node_metrics(self) -> str:
        return sh(["curl", "-fsS", f"http://127.0.0.1:{NODE_OPERATOR_PORT}/metrics"],
                  netns=self.netns).stdout

    def create_instance(self, iid: str, *, hostname: str, ifname: str | None,
                        keys: dict[str, str] | None = None, user_data: str | None = None,
                        customer: str = "cust-e2e") -> None:
        status, _ = self.api("GET", f"/v1/customers/{customer}")
        if status == 404:
            self.ctl("customer", "create", "--id", customer, "--name", customer)
        self.ctl("server", "create", "--id", iid, "--customer", customer,
                 "--hostname", hostname)
        if keys:
            self.ctl("server", "set-keys", iid, *[f"{k}={v}" for k, v in keys.items()])
        if user_data is not None:
            path = self.work / f"{iid}.userdata"
            path.write_text(user_data)
            self.ctl("server", "set-user-data", iid, str(path))
        if ifname is not None:
            self.ctl("server", "bind", iid, "--node", self.node_name, "--ifname", ifname)

    # -- more of the API, for the conformance and live-change tests --------------------

    def ensure_customer(self, customer: str = "cust-e2e") -> None:
        status, _ = self.api("GET", f"/v1/customers/{customer}")
        if status == 404:
            status, body = self.api("POST", "/v1/customers", {"id": customer, "name": customer})
            assert status == 201, body

    def put_server(self, iid: str, *, hostname: str, ifname: str | None,
                   customer: str = "cust-e2e", **spec: Any) -> dict[str, Any]:
        """Create or replace a server in one REST call (``PUT /v1/servers/{id}``);
        ``spec`` is any of the server fields (user_data parts, network, …)."""
        self.ensure_customer(customer)
        body = {"customer_id": customer, "hostname": hostname, **spec}
        status, payload = self.api("PUT", f"/v1/servers/{iid}", body)
        assert status in (200, 201), (status, payload)
        if ifname is not None:
            self.bind(iid, ifname)
        return dict(payload)

    def bind(self, iid: str, ifname: str, mac: str | None = None) -> dict[str, Any]:
        """The platform plugs ``ifname`` into ``iid`` (a new incarnation)."""
        status, payload = self.api("PUT", f"/v1/servers/{iid}/bindings/{self.node_name}/"
                                   f"{ifname}", {"mac": mac} if mac else None)
        assert status == 200, (status, payload)
        return dict(payload)

    def unbind(self, iid: str, ifname: str | None = None) -> None:
        """The platform unplugs one tap of ``iid`` (all of them when None)."""
        path = f"/v1/servers/{iid}/bindings" + (
            f"/{self.node_name}/{ifname}" if ifname else "")
        status, payload = self.api("DELETE", path)
        assert status == 204, (status, payload)

    def document(self, iid: str) -> dict[str, Any]:
        """What the API says the VM sees (``GET /v1/servers/{id}/document``)."""
        status, payload = self.api("GET", f"/v1/servers/{iid}/document")
        assert status == 200, (status, payload)
        return dict(payload)

    def backend_metrics(self) -> str:
        return sh(["curl", "-fsS", f"http://127.0.0.1:{BACKEND_OPERATOR_PORT}/metrics"],
                  netns=self.netns).stdout

    def restart_backend(self) -> None:
        """Stop the backend and start it again on the same database file."""
        self.stop_backend()
        self.start_backend()

    def wait_listeners(self, count: int, timeout: float = 20.0) -> None:
        """Wait until the node has ``count`` per-tap guest listeners (steered taps),
        without any guest request (which would fill the document cache)."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            out = sh(["ss", "-Hltn", "sport", "=", ":80"], netns=self.netns).stdout
            seen = len([ln for ln in out.splitlines() if "%" in ln])
            if seen >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"{seen} of {count} tap listeners after {timeout}s\n{self.logs()}")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return metric_sum(text, name, labels)


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@contextmanager
def product(topo: Topology, **kwargs: Any) -> Iterator[ProductStack]:
    stack = ProductStack(topo, **kwargs)
    try:
        stack.start_backend()
        stack.start_node()
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.close()


def get(guest: Guest, path: str, *headers: str, max_time: float = 3.0,
        host: str = "169.254.169.254") -> tuple[int, str, float]:
    """(status, body, seconds) of a guest's GET to ``host`` (the metadata
    address; ``[fd00:ec2::254]`` for IPv6); status 0 = no answer."""
    extra: list[str] = []
    for h in headers:
        extra += ["-H", h]
    r = guest.curl(f"http://{host}{path}", *extra, max_time=max_time)
    body, _, tail = r.stdout.rpartition("\n")
    code, _, secs = tail.partition(" ")
    return int(code or 0), body, float(secs or 0)


def guest_request(guest: Guest, method: str, path: str, body: str | None = None) -> int:
    """The HTTP status of a guest's ``method`` to 169.254.169.254 (0 = no answer)."""
    args = ["-X", method]
    if body is not None:
        args += ["--data-binary", body, "-H", "Content-Type: text/plain"]
    r = guest.curl(f"http://169.254.169.254{path}", *args)
    return int(r.stdout.rpartition("\n")[2].split()[0] or 0)


def seconds_until_served(stack: ProductStack, guest: Guest, iid: str,
                         timeout: float = 30.0, host: str = "169.254.169.254") -> float:
    """Seconds until ``guest`` reads ``iid`` as its instance id (polled every 20 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, body, _ = get(guest, "/latest/meta-data/instance-id", max_time=1.0, host=host)
        if (status, body) == (200, iid):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{iid} not served within {timeout}s\n{stack.logs()[-4000:]}")
