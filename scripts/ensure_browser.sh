#!/usr/bin/env bash
# Make sure a Chromium is installed for the web console's browser tests (tests/console drive it
# headless with Playwright; Playwright never downloads a browser). Found: CPFLOW_CHROMIUM, or
# chromium / chromium-browser / google-chrome on PATH. Missing: as root with apt-get, install
# Debian's chromium package. Best effort: without a browser those tests skip and say why.
# CPFLOW_NO_INSTALL=1 never installs packages. Idempotent.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

find_browser() {
    local cand
    for cand in "${CPFLOW_CHROMIUM:-}" chromium chromium-browser google-chrome; do
        [[ -n "$cand" ]] || continue
        if command -v "$cand" >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if browser="$(find_browser)"; then
    say "browser for the console tests: $browser"
    exit 0
fi

if [[ "${CPFLOW_NO_INSTALL:-0}" == "1" || "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null 2>&1; then
    warn "no Chromium found: the console's browser tests will skip. Install one (Debian/Ubuntu: sudo apt-get install -y chromium) or set CPFLOW_CHROMIUM=/path/to/chromium."
    exit 0
fi

say "installing Debian's chromium with apt-get for the console's browser tests"
export DEBIAN_FRONTEND=noninteractive
if ! timeout 600 apt-get install -y -q chromium >/dev/null; then
    timeout 300 apt-get update -q >/dev/null || warn "apt-get update failed"
    timeout 600 apt-get install -y -q chromium >/dev/null \
        || warn "apt-get install chromium failed: the console's browser tests will skip"
fi
if browser="$(find_browser)"; then
    say "browser for the console tests: $browser"
else
    warn "still no Chromium on PATH: the console's browser tests will skip"
fi
