#!/usr/bin/env bash
# The README's first command: install, make sure Redis answers, train the "demo" model if the
# store lacks it, then start a training worker and the HTTP service in the background
# (pid files in var/run/, logs in var/log/). Idempotent: what already runs is left running.
#   CPFLOW_HOST / CPFLOW_PORT   where the service listens (default 127.0.0.1:8000)
#   CPFLOW_STORE_DIR            model store (default ./var/store)
#   CPFLOW_REDIS_DIR            append-only file of the Redis it starts (default ./var/redis)
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$ROOT"

HOST="${CPFLOW_HOST:-127.0.0.1}"
PORT="${CPFLOW_PORT:-8000}"
DEMO="${CPFLOW_DEMO_MODEL:-demo}"

bash "$ROOT/scripts/setup.sh"
# Jobs survive a Redis restart: the Redis up.sh starts keeps an append-only file here.
export CPFLOW_REDIS_DIR="${CPFLOW_REDIS_DIR:-$VAR_DIR/redis}"
bash "$ROOT/scripts/ensure_redis.sh"
# A Redis that was running already keeps its own persistence: say so when it keeps nothing.
if ! "$PY" - <<'PY'
import os
import sys

import redis

try:
    conn = redis.Redis.from_url(os.environ["CPFLOW_REDIS_URL"], socket_timeout=2)
    aof = conn.config_get("appendonly").get("appendonly")
    rdb = conn.config_get("save").get("save")
except redis.RedisError:  # CONFIG refused (managed Redis): nothing to say
    sys.exit(0)
sys.exit(0 if aof == "yes" or rdb else 1)
PY
then
    warn "the Redis at $CPFLOW_REDIS_URL keeps nothing on disk (appendonly no, no save points): a Redis restart loses queued and running jobs. Turn on its append-only file (redis-cli CONFIG SET appendonly yes), or stop it and rerun this script, which then starts one that keeps it in $CPFLOW_REDIS_DIR."
fi

# Each entry point must be importable before we start it; say which part is missing.
missing="$("$PY" - <<'PY'
import importlib

needed = {
    "cpflow-train": ("training.cli", "main"),
    "cpflow-worker": ("service.worker_cli", "main"),
    "cpflow-serve": ("service.cli", "main"),
    "model store": ("model_store", "ModelStore"),
}
for label, (module, attr) in needed.items():
    try:
        ok = callable(getattr(importlib.import_module(module), attr, None))
    except ImportError as exc:
        print(f"  - {label}: cannot import {module} ({exc})")
        continue
    if not ok:
        print(f"  - {label}: {module}.{attr} does not exist yet")
PY
)"
if [[ -n "$missing" ]]; then
    die "cpflow is not complete yet; these parts are missing:
$missing
The install, Redis and the test suite work already: bash scripts/test.sh"
fi

mkdir -p "$RUN_DIR" "$LOG_DIR" "$CPFLOW_STORE_DIR"

has_model() {
    "$PY" - "$1" <<'PY'
import os
import sys

from model_store import ModelStore

try:
    names = {m["name"] for m in ModelStore(os.environ["CPFLOW_STORE_DIR"]).list_models()}
except Exception as exc:  # an unreadable store is reported, then treated as empty
    print(f"[cpflow] could not list the store: {exc}", file=sys.stderr)
    names = set()
sys.exit(0 if sys.argv[1] in names else 1)
PY
}

if has_model "$DEMO"; then
    say "store $CPFLOW_STORE_DIR already has model '$DEMO'"
else
    say "training model '$DEMO' on eight_gaussians into $CPFLOW_STORE_DIR (about a minute)"
    start=$SECONDS
    "$VENV/bin/cpflow-train" --dataset eight_gaussians --name "$DEMO" --preset demo \
        2>&1 | tee "$LOG_DIR/train-demo.log" \
        || die "cpflow-train failed: the demo model could not be trained (output above, also in var/log/train-demo.log)"
    has_model "$DEMO" || die "training finished but the store has no model '$DEMO' (log: var/log/train-demo.log)"
    say "trained '$DEMO' in $((SECONDS - start)) s"
fi

running() {
    local pid
    pid="$(cat "$RUN_DIR/$1.pid" 2>/dev/null)" || return 1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# setsid: each process leads its own group, so down.sh also stops its children.
start_bg() {
    local name="$1"
    shift
    if running "$name"; then
        say "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"
        return 0
    fi
    setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
    say "started $name (pid $!, log var/log/$name.log)"
}

# glibc malloc: keep the few-MB blocks of each request in the heap instead of mapping and
# unmapping them per call (exact log_prob 1.3x faster; python -m bench run malloc_tuning).
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-67108864}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-268435456}"

start_bg worker "$VENV/bin/cpflow-worker"
CPFLOW_PRELOAD_MODELS="${CPFLOW_PRELOAD_MODELS:-$DEMO}" \
    start_bg api "$VENV/bin/cpflow-serve" --host "$HOST" --port "$PORT"

say "waiting for http://$HOST:$PORT/healthz"
for _ in $(seq 1 120); do
    if "$PY" -c "import sys, urllib.request
try:
    urllib.request.urlopen('http://$HOST:$PORT/healthz', timeout=2)
except Exception:
    sys.exit(1)" 2>/dev/null; then
        say "cpflow is up: API http://$HOST:$PORT, worker running, store $CPFLOW_STORE_DIR"
        cat <<TXT

Open the web console: http://$HOST:$PORT/ui
Or try it with curl:
  curl -s http://$HOST:$PORT/healthz
  curl -s http://$HOST:$PORT/v1/models
  curl -s -X POST http://$HOST:$PORT/v1/models/$DEMO/log_prob \\
       -H 'Content-Type: application/json' -d '{"inputs": [[0.0, 0.0], [2.0, 0.0]]}'
  curl -s -X POST http://$HOST:$PORT/v1/models/$DEMO/sample \\
       -H 'Content-Type: application/json' -d '{"num_samples": 3, "seed": 0}'
Stop it with: bash scripts/down.sh
TXT
        exit 0
    fi
    if ! running api; then
        tail -n 30 "$LOG_DIR/api.log" >&2 || true
        die "cpflow-serve exited (log above, var/log/api.log); is port $PORT free?"
    fi
    sleep 0.5
done
tail -n 30 "$LOG_DIR/api.log" >&2 || true
die "cpflow-serve did not answer /healthz within 60 s (log: var/log/api.log)"
