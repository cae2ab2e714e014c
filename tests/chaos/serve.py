"""A real ``cpflow-serve`` process for the chaos tests, on a free loopback port."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers.procs import VENV_BIN, Proc, _spawn, free_port, wait_for

__all__ = ["start_serve"]


def start_serve(env: dict[str, str], log: Path, *args: str) -> tuple[Proc, str]:
    """``cpflow-serve --port <free> *args`` with ``env``; returns once /healthz answers."""
    port = free_port()
    cmd = [str(VENV_BIN / "cpflow-serve"), "--host", "127.0.0.1", "--port", str(port), *args]
    proc = _spawn(cmd, env, log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"cpflow-serve exited:\n{proc.tail()}")
        return httpx.get(url + "/healthz", timeout=2).status_code == 200

    wait_for(healthy, 90, "cpflow-serve to answer /healthz", step=0.2)
    return proc, url
