"""Moved to ``tests/lab`` (the one lab helper module). This name is kept
only so that test files written on other branches against it still import
while they are merged; new code imports ``tests.lab``. Delete it once no
file imports ``tests.e2e.netns``."""

from tests.lab import (  # noqa: F401
    PYTHON,
    REPO,
    Guest,
    NetnsRpc,
    Topology,
    ifindex,
    mac_of,
    readline,
    sh,
    stderr_tail,
    unique,
)
from tests.lab import readline as _readline  # noqa: F401
from tests.lab import stderr_tail as _stderr  # noqa: F401
