"""``python -m interceptor`` is the ``interceptor`` command."""

import sys

from interceptor.cli import main

sys.exit(main())
