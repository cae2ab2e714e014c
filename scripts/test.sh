#!/usr/bin/env bash
# The README's second command: prepare the machine (scripts/prepare_tests.sh: the install,
# Redis, the shellcheck linter and Chromium), then run the whole pytest suite, so a fresh machine
# runs every test it can. Arguments pass through to pytest, e.g.
#   bash scripts/test.sh tests/core -x -q        bash scripts/test.sh -m slow
# CPFLOW_TESTS_PREPARED=1 skips the preparation (.ci/run has done it already).
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$ROOT"

if [[ "${CPFLOW_TESTS_PREPARED:-0}" != "1" ]]; then
    bash "$ROOT/scripts/prepare_tests.sh"
fi
exec "$PY" -m pytest "$@"
