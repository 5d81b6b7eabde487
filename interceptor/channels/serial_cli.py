"""``interceptor serial``: serve metadata over VMs' serial ports (UNIX sockets, concentrator)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from interceptor.channels.serial_config import SerialConfig
from interceptor.common import config as configlib
from interceptor.common.logsetup import setup_logging
from interceptor.node.config import NodeConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="interceptor serial",
        description="Serial-port metadata channel: one UNIX socket per bound VM "
                    "(<socket-dir>/<name>.sock) and a TCP port for serial concentrators, "
                    "answering !!REQUEST_…# packets and CloudSigma requests. Options come "
                    "from --config (TOML, section [serial]; the backend driver also reads "
                    "the node's [node] section), then INTERCEPTOR_SERIAL_* variables, then "
                    "flags (later wins).")
    p.add_argument("--config", metavar="PATH", help="TOML configuration file")
    configlib.add_flags(p, SerialConfig)
    return p


def load(argv: list[str]) -> tuple[SerialConfig, NodeConfig | None]:
    args = parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    cfg = configlib.load(SerialConfig, section="serial", path=args.config, flags=flags)
    node = None
    if cfg.driver == "backend":
        node = configlib.load(NodeConfig, section="node", path=args.config)
    return cfg, node


def main(argv: list[str]) -> int:
    from interceptor.channels.serial_app import prepare_socket_dir

    cfg, node = load(argv)
    setup_logging(cfg.log_format, cfg.log_level)
    prepare_socket_dir(cfg)
    return asyncio.run(_serve(cfg, node))


async def _serve(cfg: SerialConfig, node: NodeConfig | None) -> int:
    from interceptor.channels.serial_app import SerialDaemon

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await SerialDaemon(cfg, node).run(stop)
    return 0
