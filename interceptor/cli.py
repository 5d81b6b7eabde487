"""The ``interceptor`` command: one console script, one subcommand per process.

Each subcommand parses its own arguments and returns an exit status; every
error a user can cause ends as one line on stderr and a documented status
(2: bad usage or configuration, 3: the datapath could not be installed).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from interceptor import __version__
from interceptor.common.errors import InterceptorError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "backend": ("interceptor.backend.cli", "run the central backend (REST API, change feed)"),
    "node": ("interceptor.node.cli", "run the node daemon (datapath + guest proxy)"),
    "ctl": ("interceptor.ctl", "admin client of the backend API"),
    "serial": ("interceptor.channels.serial_cli",
               "serve metadata over VMs' serial ports (UNIX sockets, concentrator)"),
}

USAGE = "usage: interceptor [--version] {" + ",".join(SUBCOMMANDS) + "} [args...]"


def _help() -> str:
    lines = [USAGE, "", "subcommands:"]
    lines += [f"  {name:<8} {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines.append("\n'interceptor SUBCOMMAND --help' describes each one.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_help())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"interceptor {__version__}")
        return 0
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(USAGE, file=sys.stderr)
        print(f"interceptor: unknown subcommand {args[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    run: Callable[[list[str]], int] = module.main
    try:
        return run(args[1:])
    except InterceptorError as exc:
        print(f"interceptor {args[0]}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
