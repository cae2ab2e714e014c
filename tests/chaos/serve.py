"""A real ``cpflow-serve`` process for the chaos tests, on a free loopback port."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.procs import VENV_BIN, Proc, serve_until_healthy

__all__ = ["start_serve"]


def start_serve(env: dict[str, str], log: Path, *args: str) -> tuple[Proc, str]:
    """``cpflow-serve --host 127.0.0.1 --port <free> *args`` with ``env``; returns once /healthz
    answers."""
    return serve_until_healthy([str(VENV_BIN / "cpflow-serve"), *args], env, log)
