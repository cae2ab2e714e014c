"""Behaviour of the shell layer behind the README's commands (scripts/*.sh, .ci/run):
syntax, Redis discovery and start-up, the message a machine without Redis gets, and
stopping background processes by pid file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci/run"]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        args, check=False, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_ping(port: int, attempts: int = 100) -> bool:
    """True once a Redis on 127.0.0.1:port answers PING (polled every 0.1 s)."""
    for _ in range(attempts):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_syntax_and_strict_mode(script: Path) -> None:
    assert _run(["bash", "-n", str(script)]).returncode == 0
    if script.name != "_common.sh":
        assert "set -euo pipefail" in script.read_text()
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_shellcheck_is_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian: apt-get install shellcheck)")
    scripts = [str(p) for p in SCRIPTS] + [str(p) for p in (ROOT / "docker").glob("*.sh")]
    res = _run(["shellcheck", "-x", *scripts])
    assert res.returncode == 0, res.stdout


def test_ensure_redis_accepts_a_running_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert _wait_for_ping(port), "the test's own redis-server did not come up"
        url = f"redis://127.0.0.1:{port}/0"
        res = _run(["bash", "scripts/ensure_redis.sh"], {"CPFLOW_REDIS_URL": url})
        assert res.returncode == 0, res.stderr
        assert f"redis answers at 127.0.0.1:{port}" in res.stdout
        assert "starting" not in res.stdout
    finally:
        server.terminate()
        server.wait(10)


def test_ensure_redis_starts_a_local_redis_that_is_down() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    url = f"redis://localhost:{port}/0"
    res = _run(["bash", "scripts/ensure_redis.sh"], {"CPFLOW_REDIS_URL": url})
    try:
        assert res.returncode == 0, res.stderr
        assert "starting redis-server" in res.stdout
        # A second run is a no-op: the server it started answers.
        again = _run(["bash", "scripts/ensure_redis.sh"], {"CPFLOW_REDIS_URL": url})
        assert again.returncode == 0 and "starting" not in again.stdout
    finally:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"SHUTDOWN NOSAVE\r\n")
            s.settimeout(5)
            try:
                s.recv(100)  # the server closes the connection as it exits
            except OSError:
                pass


def _path_without_redis(tmp_path: Path) -> str:
    """A PATH holding every tool of /usr/bin and /bin except redis-*."""
    farm = tmp_path / "bin"
    farm.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = farm / entry.name
            if entry.name.startswith("redis") or target.exists():
                continue
            target.symlink_to(entry.path)
    return str(farm)


def test_machine_without_redis_is_told_what_to_do(tmp_path: Path) -> None:
    port = _free_port()
    res = _run(
        ["bash", "scripts/ensure_redis.sh"],
        {
            "PATH": _path_without_redis(tmp_path),
            "CPFLOW_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "CPFLOW_NO_INSTALL": "1",
        },
    )
    assert res.returncode == 1
    assert "Redis is not installed and not running" in res.stderr
    assert "apt-get install -y redis-server" in res.stderr
    assert "CPFLOW_REDIS_URL" in res.stderr


def test_remote_redis_that_does_not_answer_is_reported() -> None:
    res = _run(
        ["bash", "scripts/ensure_redis.sh"],
        {"CPFLOW_REDIS_URL": "redis://redis.invalid:6379/0"},
    )
    assert res.returncode == 1
    assert "redis.invalid:6379" in res.stderr and "not local" in res.stderr


def test_down_stops_process_groups_by_pid_file(tmp_path: Path) -> None:
    var = tmp_path / "var"
    (var / "run").mkdir(parents=True)
    # A leader that has a child, both in a new session, as up.sh starts services.
    proc = subprocess.Popen(
        ["setsid", "bash", "-c", "sleep 300 & wait"], stdout=subprocess.DEVNULL
    )
    (var / "run" / "worker.pid").write_text(f"{proc.pid}\n")
    (var / "run" / "api.pid").write_text("999999999\n")  # stale
    time.sleep(0.3)
    children = _run(["pgrep", "-g", str(proc.pid)]).stdout.split()
    assert len(children) >= 2
    res = _run(["bash", "scripts/down.sh"], {"CPFLOW_VAR_DIR": str(var)})
    assert res.returncode == 0, res.stderr
    assert proc.wait(10) is not None
    assert "stopped worker" in res.stdout and "api not running" in res.stdout
    # Killed children may linger as zombies until init reaps them: only live ones count.
    group = _run(["ps", "-eo", "pgid=,stat="]).stdout.split("\n")
    live = [
        ln
        for ln in group
        if ln.split()[:1] == [str(proc.pid)] and not ln.split()[1].startswith("Z")
    ]
    assert live == []
    assert not (var / "run" / "worker.pid").exists()
    again = _run(["bash", "scripts/down.sh"], {"CPFLOW_VAR_DIR": str(var)})
    assert again.returncode == 0 and "worker not running" in again.stdout
