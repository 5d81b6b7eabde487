"""``interceptor node``: run the node daemon, or remove what it left behind."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from interceptor.common import config as configlib
from interceptor.common.logsetup import setup_logging
from interceptor.node.config import NodeConfig

log = logging.getLogger(__name__)

# Only ``--cleanup`` may run without these: it touches nothing but the kernel.
_CLEANUP_FALLBACK = {"node_name": "cleanup", "backend_url": "http://127.0.0.1",
                     "node_token": "unused", "signing_key": "unused"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="interceptor node",
        description="Node daemon: captures 169.254.169.254 per tap (nftables or eBPF) and "
                    "serves each VM its own metadata from the central backend. Options "
                    "come from --config (TOML, section [node]), then INTERCEPTOR_NODE_* "
                    "environment variables, then flags (later wins).")
    p.add_argument("--config", metavar="PATH", help="TOML configuration file")
    p.add_argument("--cleanup", action="store_true",
                   help="remove every table, rule, route, program and pin the daemon "
                        "makes (both datapaths), then exit")
    configlib.add_flags(p, NodeConfig)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "cleanup")}
    cfg = configlib.load(NodeConfig, section="node", path=args.config, flags=flags,
                         fallback=_CLEANUP_FALLBACK if args.cleanup else None)
    setup_logging(cfg.log_format, cfg.log_level, "interceptor-node")
    if args.cleanup:
        return cleanup(cfg)
    return asyncio.run(_serve(cfg))


def cleanup(cfg: NodeConfig) -> int:
    from interceptor.node.app import all_datapaths

    if cfg.keep_datapath_on_exit:
        # The unit runs --cleanup after every stop; an operator who keeps the
        # datapath across restarts (guests wait on SYN retransmits) keeps it here too.
        log.info("keep_datapath_on_exit is set: leaving the datapath in place")
        return 0
    for datapath in all_datapaths(cfg):
        datapath.remove()
        log.info("removed the %s datapath", datapath.name)
    return 0


async def _serve(cfg: NodeConfig) -> int:
    from interceptor.node.app import NodeDaemon

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await NodeDaemon(cfg).run(stop)
    return 0
