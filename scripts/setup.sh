#!/usr/bin/env bash
# Create the virtual environment (.venv) with Python >= 3.11 and install cpflow with its
# dev extra. Idempotent: a second run only reinstalls when pyproject.toml changed
# (CPFLOW_FORCE_INSTALL=1 forces it).
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$ROOT"

# Python 3.11 first: the pinned torch CPU wheel on this kind of machine is built for cp311.
find_python() {
    local cand
    for cand in "${PYTHON:-}" python3.11 python3 python3.12 python3.13; do
        [[ -n "$cand" ]] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
        then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if [[ ! -x "$PY" ]]; then
    base_py="$(find_python)" || die "Python >= 3.11 not found. Install it (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11."
    say "creating virtual environment $VENV with $base_py ($("$base_py" --version 2>&1))"
    "$base_py" -m venv "$VENV" || die "could not create $VENV (Debian/Ubuntu: apt-get install python3-venv)"
fi

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$VENV uses $("$PY" --version 2>&1); cpflow needs >= 3.11. Remove $VENV and rerun."

stamp="$VENV/.cpflow-install-stamp"
want="$(cksum <pyproject.toml | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "${CPFLOW_FORCE_INSTALL:-0}" != "1" && "$want" == "$have" ]] \
    && "$PY" -c 'import cpflow, pytest' >/dev/null 2>&1; then
    say "environment up to date ($VENV)"
    exit 0
fi

say "installing cpflow and its dev tools into $VENV (a first install takes a few minutes)"
start=$SECONDS
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off -e '.[dev]'; }
if ! pip_install; then
    warn "pip install failed; retrying once in 10 s (a registry hiccup is the usual cause)"
    sleep 10
    pip_install || die "pip install -e '.[dev]' failed (see the pip output above)"
fi
echo "$want" >"$stamp"
say "install done in $((SECONDS - start)) s; torch $("$PY" -c 'import torch; print(torch.__version__)')"
