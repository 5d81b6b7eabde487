"""Keep hypothesis' caches (``.hypothesis/``) out of the work tree: a private
temporary directory for this test process, removed when it exits."""

from __future__ import annotations

import atexit
import shutil
import tempfile

from hypothesis.configuration import set_hypothesis_home_dir

_HOME = tempfile.mkdtemp(prefix="interceptor-hypothesis-")
set_hypothesis_home_dir(_HOME)
atexit.register(shutil.rmtree, _HOME, True)
