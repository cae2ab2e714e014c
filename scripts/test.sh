#!/usr/bin/env bash
# The README's second command: install, make sure Redis answers (integration tests use the real
# one), then run the whole pytest suite. Arguments pass through to pytest, e.g.
#   bash scripts/test.sh tests/core -x -q        bash scripts/test.sh -m slow
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$ROOT"

bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/ensure_redis.sh"
exec "$PY" -m pytest "$@"
