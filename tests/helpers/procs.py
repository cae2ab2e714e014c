"""Process helpers for the jobs integration tests: uvicorn, cpflow-worker, redis-server, and
the environment and Redis clean-up of one test stack.

Every process is started in its own session and killed (with its descendants) at teardown,
so no test leaves a server, worker or work horse behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers.ports import free_port

__all__ = [
    "REDIS_URL",
    "ROOT",
    "Proc",
    "connect_test_redis",
    "descendants",
    "free_port",
    "kill_tree",
    "new_queue_name",
    "purge",
    "replicas",
    "serve_until_healthy",
    "stack_env",
    "start_redis",
    "start_server",
    "start_worker",
    "wait_for",
]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/13"
"""The tests' Redis database; every test session adds a queue name of its own."""

# Small numbers keep the suite fast; they are settings, not assertions.
LEASE_S = 5.0  # generous: under heavy CPU contention a heartbeat thread can stall
HEARTBEAT_S = 0.25


def stack_env(store_dir: Path, queue_name: str, redis_url: str = REDIS_URL) -> dict[str, str]:
    """Environment shared by the service and the workers of one test stack."""
    return {
        "CPFLOW_STORE_DIR": str(store_dir),
        "CPFLOW_REDIS_URL": redis_url,
        "CPFLOW_QUEUE_NAME": queue_name,
        "CPFLOW_JOB_LEASE_S": str(LEASE_S),
        "CPFLOW_JOB_HEARTBEAT_S": str(HEARTBEAT_S),
        "CPFLOW_DEVICE": "cpu",
        "CPFLOW_POLL_INTERVAL_S": "0",
        "CPFLOW_INFERENCE_THREADS": "1",
        "CPFLOW_TORCH_THREADS": "1",
        "CPFLOW_WORKER_TORCH_THREADS": "1",
        "CPFLOW_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def connect_test_redis() -> redis.Redis:
    """A connection to the tests' Redis database; fails the test loudly when Redis is down."""
    conn = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not answering at {REDIS_URL}; start it (scripts/ensure_redis.sh)")
    return conn


def new_queue_name() -> str:
    """A queue name of this test's own: job records and RQ keys are namespaced by it."""
    return f"cpflow-test-{uuid.uuid4().hex[:10]}"


def purge(conn: redis.Redis, queue_name: str) -> None:
    """Delete every key of ``queue_name``: job records, RQ queue/registries, RQ jobs."""
    job_ids = {m.decode() for m in conn.zrange(f"cpflow:{queue_name}:jobs", 0, -1)}
    for key in conn.scan_iter(match="rq:job:*", count=1000, _type="HASH"):  # db 13: tests only
        if conn.hget(key, "origin") == queue_name.encode():
            job_ids.add(key.decode().split(":")[2])
    keys = set(conn.scan_iter(match=f"*{queue_name}*", count=1000))
    for job_id in job_ids:
        keys.update(conn.scan_iter(match=f"*{job_id}*", count=1000))
    for key in conn.scan_iter(match="rq:worker:*", count=1000, _type="HASH"):
        if conn.hget(key, "queues") == queue_name.encode():  # workers that were SIGKILLed
            keys.update({key, key + b":executions"})
            conn.srem("rq:workers", key)
    if keys:
        conn.delete(*keys)
    conn.srem("rq:queues", f"rq:queue:{queue_name}")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``.

    The timeout only bounds a hang; no test asserts on how fast something happened.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        time.sleep(step)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what} (last error: {last_exc})"
    )


def descendants(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill ``proc`` and everything it started (work horses live in their own groups)."""
    if proc.poll() is not None:
        return
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Proc:
    """A started subprocess with its log file (shown when a test fails)."""

    def __init__(self, popen: subprocess.Popen, log: Path) -> None:
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        kill_tree(self.popen)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> Proc:
    handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    popen = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Proc(popen, log)


def start_server(env: dict[str, str], log: Path) -> tuple[Proc, str]:
    """uvicorn serving ``service.app:create_app`` on a free port; returns (proc, base URL)."""
    app = ["-m", "uvicorn", "service.app:create_app", "--factory", "--log-level", "warning"]
    return serve_until_healthy([str(VENV_BIN / "python"), *app], env, log)


def serve_until_healthy(command: list[str], env: dict[str, str], log: Path) -> tuple[Proc, str]:
    """Start an HTTP server ``command`` (given --host 127.0.0.1 --port <free> after it) and
    return (proc, base URL) once /healthz answers; fail with its log if it exits first."""
    port = free_port()
    proc = _spawn([*command, "--host", "127.0.0.1", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{Path(command[0]).name} exited:\n{proc.tail()}")
        return httpx.get(url + "/healthz", timeout=2).status_code == 200

    wait_for(healthy, 90, f"{Path(command[0]).name} to answer /healthz", step=0.2)
    return proc, url


@contextlib.contextmanager
def replicas(env: dict[str, str], tmp: Path, n: int = 2) -> Iterator[list[httpx.Client]]:
    """``n`` API replicas (uvicorn processes) with one environment, as clients of each."""
    started: list[Proc] = []
    clients: list[httpx.Client] = []
    try:
        for i in range(n):
            proc, url = start_server(env, tmp / f"api{i}.log")
            started.append(proc)
            clients.append(httpx.Client(base_url=url, timeout=30))
        yield clients
    finally:
        for client in clients:
            client.close()
        for proc in started:
            proc.stop()


def start_worker(env: dict[str, str], log: Path) -> Proc:
    """A real ``cpflow-worker`` process (RQ worker forking a work horse per job)."""
    cmd = [str(VENV_BIN / "cpflow-worker"), "--log-level", "INFO"]
    return _spawn(cmd, env, log)


def start_redis(port: int, workdir: Path, log: Path) -> Proc:
    """A private redis-server with an append-only file (jobs survive its restart)."""
    cmd = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]
    proc = _spawn(cmd, {}, log)

    def up() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{proc.tail()}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    wait_for(up, 20, f"redis-server on port {port}")
    return proc
