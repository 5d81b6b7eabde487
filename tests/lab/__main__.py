"""``python -m tests.lab rpc|pump ...``: the helper processes of the lab
(tests/lab/rpc.py)."""

import sys

from tests.lab.netns import REPO
from tests.lab.rpc import pump_main, rpc_main

if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1] == "rpc":
        rpc_main(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "pump":
        pump_main(*sys.argv[2:6])
    else:
        raise SystemExit(f"unknown helper {sys.argv[1]!r}")
