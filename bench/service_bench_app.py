"""App factory for bench/service_load.py: the real service app plus a bare constant route.

The constant route sits behind the same middlewares (request id, access log, metrics, body
limit, auth) and the same uvicorn settings, so the ratio of a model route's requests/s to
its requests/s is the cost of the model work and the model routes' own handling.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.app import create_app

__all__ = ["create_bench_app"]


def create_bench_app() -> FastAPI:
    app = create_app()

    @app.post("/bench/constant", include_in_schema=False)
    async def constant() -> dict[str, bool]:
        return {"ok": True}

    return app
