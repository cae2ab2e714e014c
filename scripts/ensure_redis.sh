#!/usr/bin/env bash
# Make sure the Redis named by CPFLOW_REDIS_URL (default redis://127.0.0.1:6379/0) answers.
# Local and down: start redis-server. With CPFLOW_REDIS_DIR set (scripts/up.sh sets var/redis),
# it keeps an append-only file there, so queued and running jobs survive a Redis restart;
# unset (scripts/test.sh), it keeps nothing on disk.
# Missing: as root with apt-get, install Debian's redis-server; otherwise say what to do.
# CPFLOW_NO_INSTALL=1 never installs packages. Idempotent.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# redis://[user:password@]host[:port][/db]  ->  host, port
url="${CPFLOW_REDIS_URL#*://}"
url="${url##*@}"
hostport="${url%%/*}"
host="${hostport%%:*}"
port=6379
[[ "$hostport" == *:* ]] && port="${hostport##*:}"
[[ -n "$host" ]] || host=127.0.0.1

# PING over bash's /dev/tcp so that no redis-cli is needed. Any RESP reply (+PONG, or
# -NOAUTH from a password-protected server) means a Redis is listening.
ping_once() {
    local reply=""
    exec 3<>"/dev/tcp/$1/$2" || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3<&- 3>&-
    [[ "$reply" == +* || "$reply" == -* ]]
}

redis_answers() {
    timeout 5 bash -c "$(declare -f ping_once); ping_once '$host' '$port'" 2>/dev/null
}

wait_for_redis() {
    for _ in $(seq 1 50); do
        redis_answers && return 0
        sleep 0.2
    done
    return 1
}

if redis_answers; then
    say "redis answers at $host:$port"
    exit 0
fi

case "$host" in
    127.0.0.1 | localhost | ::1) ;;
    *) die "redis at $host:$port (CPFLOW_REDIS_URL=$CPFLOW_REDIS_URL) does not answer. It is not local, so start it where it runs, or point CPFLOW_REDIS_URL at a running Redis." ;;
esac

if ! command -v redis-server >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" && "${CPFLOW_NO_INSTALL:-0}" != "1" ]] && command -v apt-get >/dev/null 2>&1; then
        say "redis-server is not installed; installing Debian's redis-server with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q || die "apt-get update failed"
        apt-get install -y -q redis-server || die "apt-get install redis-server failed"
        command -v redis-server >/dev/null 2>&1 \
            || die "redis-server was installed but is not on PATH ($PATH)"
        # Debian's package may have started its own service already.
        if [[ "$port" == 6379 ]] && wait_for_redis; then
            say "redis answers at $host:$port (started by the Debian package)"
            exit 0
        fi
    else
        die "Redis is not installed and not running at $host:$port. cpflow queues training jobs in Redis.
  Fix one of these ways, then rerun:
    - Debian/Ubuntu:  sudo apt-get install -y redis-server   (this script does it itself when run as root)
    - macOS:          brew install redis && brew services start redis
    - Docker:         docker run -d -p 6379:6379 redis:7
    - or point CPFLOW_REDIS_URL at a Redis you already run."
    fi
fi

if [[ -n "${CPFLOW_REDIS_DIR:-}" ]]; then
    mkdir -p "$CPFLOW_REDIS_DIR"
    persistence=(--appendonly yes --appendfsync everysec --dir "$CPFLOW_REDIS_DIR")
    say "starting redis-server on 127.0.0.1:$port (append-only file in $CPFLOW_REDIS_DIR: jobs survive a restart)"
else
    persistence=(--appendonly no)
    say "starting redis-server on 127.0.0.1:$port (no persistence: dev queue only)"
fi
start_log="$(redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" \
    "${persistence[@]}" 2>&1)" || warn "redis-server said: $start_log"
wait_for_redis || die "redis-server does not answer on 127.0.0.1:$port (is the port taken? $start_log)"
say "redis answers at 127.0.0.1:$port"
