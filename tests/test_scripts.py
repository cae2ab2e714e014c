"""Behaviour of the shell layer behind the README's commands (scripts/*.sh, .ci/run):
syntax, Redis discovery and start-up, the message a machine without Redis gets, stopping
background processes by pid file, and what the test command and CI prepare before pytest."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci/run"]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        args, check=False, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


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
    port = free_port()
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
    port = free_port()
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
    port = free_port()
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


def _stub_venv(tmp_path: Path, mypy_rc: int = 0) -> tuple[Path, Path]:
    """A virtual environment of stubs whose python, ruff and mypy log their arguments (python
    passes its version and import checks), installed as far as setup.sh can tell; with the
    log file they write to."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    rcs = {"python": 0, "ruff": 0, "mypy": mypy_rc}
    for name, rc in rcs.items():
        stub = venv / "bin" / name
        stub.write_text(
            f'#!/usr/bin/env bash\n[[ "$1" == -c ]] && exit 0\necho "{name} $*" >>"{log}"\n'
            f"exit {rc}\n"
        )
        stub.chmod(0o755)
    cksum = _run(["bash", "-c", "cksum <pyproject.toml | cut -d' ' -f1"]).stdout.strip()
    (venv / ".cpflow-install-stamp").write_text(cksum + "\n")
    return venv, log


def _prepared_env(tmp_path: Path, venv: Path) -> dict[str, str]:
    """Environment for test.sh and .ci/run on stubs: the tests' Redis, a stub browser, no
    package installs."""
    browser = tmp_path / "fake-chromium"
    browser.write_text("#!/usr/bin/env bash\nexit 0\n")
    browser.chmod(0o755)
    return {
        "CPFLOW_VENV": str(venv),
        "CPFLOW_CHROMIUM": str(browser),
        "CPFLOW_NO_INSTALL": "1",
        "CPFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
        "CPFLOW_TESTS_PREPARED": "",
    }


def test_test_command_makes_sure_of_the_browser_before_pytest(tmp_path: Path) -> None:
    """The README's command prepares what .ci/run prepares (install, Redis, browser), so the
    browser tests run on a fresh machine, then hands its arguments to pytest."""
    venv, log = _stub_venv(tmp_path)
    env = _prepared_env(tmp_path, venv)
    res = _run(["bash", "scripts/test.sh", "-q", "tests/core"], env)
    assert res.returncode == 0, res.stderr
    assert "environment up to date" in res.stdout
    assert "redis answers at 127.0.0.1:6379" in res.stdout
    assert f"browser for the console tests: {env['CPFLOW_CHROMIUM']}" in res.stdout
    assert log.read_text().splitlines() == ["python -m pytest -q tests/core"]


def test_ci_prepares_once_then_lints_type_checks_and_tests(tmp_path: Path) -> None:
    venv, log = _stub_venv(tmp_path)
    res = _run(["bash", ".ci/run"], _prepared_env(tmp_path, venv), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("environment up to date") == 1  # setup.sh ran once
    assert res.stdout.count("browser for the console tests") == 1
    calls = [line.strip() for line in log.read_text().splitlines()]
    assert calls[:3] == ["ruff format --check .", "ruff check .", "mypy"]
    assert len(calls) == 4 and calls[3].startswith("python -m pytest -p no:cacheprovider")
    assert "CI passed" in res.stdout


def test_ci_fails_on_type_errors(tmp_path: Path) -> None:
    venv, _ = _stub_venv(tmp_path, mypy_rc=1)
    res = _run(["bash", ".ci/run"], _prepared_env(tmp_path, venv), timeout=120)
    assert res.returncode == 1
    assert "CI FAILED: mypy" in res.stderr
