#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite:
# lint, types, then every pytest tier (unit, backend, e2e with real kernel
# objects, QEMU guest, cloud-init conformance, PostgreSQL, Prometheus).
# Extra arguments go to pytest, e.g. scripts/test.sh -k tokens
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
py=.venv/bin/python
echo "== ruff"; "$py" -m ruff check interceptor tests bench
echo "== mypy --strict"; "$py" -m mypy
echo "== import layers"; .venv/bin/lint-imports --no-cache
echo "== pytest"
status=0
"$py" -m pytest -p no:cacheprovider -ra "$@" || status=$?
# pytest's 5 means "no tests collected": that is a failure here, not a pass.
exit "$status"
