# shellcheck shell=bash disable=SC2034  # variables used by the scripts that source this file
# Shared helpers for scripts/*.sh: repo paths, logging, settings defaults.
# Sourced, never run directly.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CPFLOW_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
VAR_DIR="${CPFLOW_VAR_DIR:-$ROOT/var}"
RUN_DIR="$VAR_DIR/run"
LOG_DIR="$VAR_DIR/log"

export CPFLOW_STORE_DIR="${CPFLOW_STORE_DIR:-$VAR_DIR/store}"
export CPFLOW_REDIS_URL="${CPFLOW_REDIS_URL:-redis://127.0.0.1:6379/0}"

say() { printf '[cpflow] %s\n' "$*"; }
warn() { printf '[cpflow] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[cpflow] ERROR: %s\n' "$*" >&2
    exit 1
}
