#!/usr/bin/env bash
# Stop the service and worker that up.sh started (by their pid files). Idempotent.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# Alive and not a zombie (a zombie only waits for its parent to reap it).
alive() {
    kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]
}

# Any live (non-zombie) process left in process group $1.
group_alive() {
    ps -eo pgid=,stat= 2>/dev/null | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

stop() {
    local name="$1" file="$RUN_DIR/$1.pid" pid target
    pid="$(cat "$file" 2>/dev/null || true)"
    if [[ -z "$pid" ]] || ! alive "$pid"; then
        rm -f "$file"
        say "$name not running"
        return 0
    fi
    # up.sh starts each under setsid: signal the whole group (uvicorn / RQ work horses too).
    target="$pid"
    [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]] && target="-$pid"
    kill -TERM -- "$target" 2>/dev/null || true
    # Wait for the leader and, when we signalled a group, every process in it.
    for _ in $(seq 1 40); do
        alive "$pid" || { [[ "$target" == "-$pid" ]] && group_alive "$pid"; } || break
        sleep 0.25
    done
    if alive "$pid" || { [[ "$target" == "-$pid" ]] && group_alive "$pid"; }; then
        warn "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL -- "$target" 2>/dev/null || true
    fi
    rm -f "$file"
    say "stopped $name (pid $pid)"
}

stop api
stop worker
