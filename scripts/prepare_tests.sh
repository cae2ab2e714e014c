#!/usr/bin/env bash
# Everything a test run needs on this machine, each step idempotent: the venv and install
# (setup.sh), a Redis that answers (ensure_redis.sh), shellcheck for the scripts' lint test and
# Chromium for the console's browser tests (ensure_browser.sh). The last two are best effort:
# without them those tests skip and say why. CPFLOW_NO_INSTALL=1 never installs packages.
# scripts/test.sh runs this before pytest; .ci/run runs it once before its lint steps and
# then calls test.sh with CPFLOW_TESTS_PREPARED=1, so nothing is done twice.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/ensure_redis.sh"

if command -v shellcheck >/dev/null 2>&1; then
    say "shellcheck for the scripts' lint test: $(command -v shellcheck)"
elif [[ "${CPFLOW_NO_INSTALL:-0}" != "1" && "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    timeout 180 apt-get install -y -qq shellcheck >/dev/null 2>&1 \
        || warn "shellcheck could not be installed: its test will skip"
else
    warn "no shellcheck: the scripts' lint test will skip (Debian: apt-get install shellcheck)"
fi

bash "$ROOT/scripts/ensure_browser.sh"
