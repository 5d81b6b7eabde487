"""``interceptor backend``: serve the API, or create customers and tokens in the store.

Usage::

    interceptor backend [serve] [--config FILE] [--listen-port N] …
    interceptor backend create-customer [--config FILE] [--id ID] [--name NAME] [--token]
    interceptor backend create-token [--config FILE] (--customer ID | --admin | --node NAME)

Every config option is also ``--flag`` and ``INTERCEPTOR_BACKEND_*``. A bad
config prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import sys
from typing import Any

from aiohttp import web

from interceptor.backend import model
from interceptor.backend.app import create_app
from interceptor.backend.auth import digest, new_token
from interceptor.backend.config import BackendConfig
from interceptor.backend.metrics import BackendMetrics
from interceptor.backend.operator import create_operator_app
from interceptor.backend.store import base, open_store
from interceptor.common import config as configlib
from interceptor.common import sdnotify
from interceptor.common.errors import ConfigError, InterceptorError

log = logging.getLogger("interceptor.backend")
COMMANDS = ("serve", "create-customer", "create-token")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interceptor backend",
                                     description="The central metadata backend.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "serve the API (default)"),
                       ("create-customer", "create a customer directly in the store"),
                       ("create-token", "create a token directly in the store")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", metavar="PATH", help="TOML file (section [backend])")
        configlib.add_flags(p, BackendConfig)
        if name == "create-customer":
            p.add_argument("--id", dest="customer_id", help="customer id (default: generated)")
            p.add_argument("--name", dest="customer_name", help="display name")
            p.add_argument("--token", dest="with_token", action="store_true",
                           help="also create and print a customer token")
        if name == "create-token":
            who = p.add_mutually_exclusive_group(required=True)
            who.add_argument("--customer", dest="token_customer", metavar="ID")
            who.add_argument("--admin", dest="token_admin", action="store_true")
            who.add_argument("--node", dest="token_node", metavar="NAME")
    return parser


async def _serve(cfg: BackendConfig) -> None:
    metrics = BackendMetrics()
    app = create_app(cfg, metrics=metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=cfg.shutdown_timeout)
    await runner.setup()
    op_runner: web.AppRunner | None = None
    try:
        site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port)
        await site.start()
        if cfg.operator_port:
            op_runner = web.AppRunner(create_operator_app(app, metrics), access_log=None)
            await op_runner.setup()
            await web.TCPSite(op_runner, cfg.operator_host, cfg.operator_port).start()
        log.info("backend listening on %s:%d (operator %s:%d)", cfg.listen_host,
                 cfg.listen_port, cfg.operator_host, cfg.operator_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sdnotify.notify(f"READY=1\nSTATUS=serving on {cfg.listen_host}:{cfg.listen_port}")
        watchdog = sdnotify.Watchdog.from_environment()
        pinger = (asyncio.create_task(watchdog.run(), name="watchdog")
                  if watchdog is not None else None)
        await stop.wait()
        log.info("shutting down")
        sdnotify.notify("STOPPING=1")
        if pinger is not None:
            pinger.cancel()
    finally:
        if op_runner is not None:
            await op_runner.cleanup()
        await runner.cleanup()


async def _create_customer(cfg: BackendConfig, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(cfg.database)
    await store.open()
    try:
        cid = model.check_id(args.customer_id, "--id") if args.customer_id else \
            f"c-{secrets.token_hex(6)}"
        data = {"name": args.customer_name or cid, "meta": model.empty_classes()}
        try:
            await store.commit([base.Put("customer", cid, data, expect=0)],
                               base.Change(kind="customer"))
        except base.Conflict:
            raise InterceptorError(f"customer {cid} already exists") from None
        out: dict[str, Any] = {"id": cid, "name": data["name"]}
        if args.with_token:
            token = new_token()
            await store.put_token(digest(token), base.Token("customer", cid))
            out["token"] = token
        return out
    finally:
        await store.close()


async def _create_token(cfg: BackendConfig, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(cfg.database)
    await store.open()
    try:
        if args.token_customer:
            if await store.get("customer", args.token_customer) is None:
                raise InterceptorError(f"customer {args.token_customer} does not exist")
            token_of = base.Token("customer", args.token_customer)
        elif args.token_node:
            token_of = base.Token("node", args.token_node)
        else:
            token_of = base.Token("admin", "")
        token = new_token()
        await store.put_token(digest(token), token_of)
        return {"kind": token_of.kind, "subject": token_of.subject, "token": token}
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "serve")
    args = _parser().parse_args(argv)
    try:
        cfg = configlib.load(BackendConfig, section="backend", path=args.config,
                             flags=vars(args))
        from interceptor.common.logsetup import setup_logging
        setup_logging(cfg.log_format, cfg.log_level, "interceptor-backend")
        if args.command == "serve":
            asyncio.run(_serve(cfg))
            return 0
        runner = _create_customer if args.command == "create-customer" else _create_token
        print(json.dumps(asyncio.run(runner(cfg, args))))
        return 0
    except ConfigError as exc:
        print(f"interceptor backend: {exc}", file=sys.stderr)
        return exc.exit_code
    except InterceptorError as exc:
        print(f"interceptor backend: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
