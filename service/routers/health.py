"""Operational routes: liveness, readiness and Prometheus metrics (never behind auth)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.deps import EngineDep, MetricsDep, SettingsDep
from service.metrics import CONTENT_TYPE_LATEST
from service.schemas import HealthResponse, ReadyResponse

__all__ = ["router", "store_status"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Answers from the event loop without touching models, so it stays fast under load."""
    return HealthResponse(status="ok")


def _ping_redis(url: str) -> dict[str, Any]:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            client.ping()
        finally:
            client.close()
        return {"ok": True, "error": None}
    except Exception as exc:  # noqa: BLE001 - any failure is reported, never raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def store_status(engine: Any, settings: Any) -> dict[str, Any]:
    """Whether the model store can be listed: ok, where it is, how many models, the error."""
    where = settings.store_url or str(settings.store_dir)
    store: dict[str, Any] = {"ok": True, "path": where, "models": 0, "error": None}

    def list_store() -> int:
        if not settings.store_url and not settings.store_dir.is_dir():
            raise FileNotFoundError(f"store directory {settings.store_dir} does not exist")
        return len(engine.store.names())

    try:
        store["models"] = await engine.io(list_store)
    except Exception as exc:  # noqa: BLE001 - reported in the body
        store.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    return store


@router.get(
    "/readyz",
    summary="Readiness: the model store is readable (Redis reported, not required)",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "store not readable or stalled"}},
)
async def readyz(engine: EngineDep, settings: SettingsDep, request: Request) -> JSONResponse:
    """503 when the store cannot be listed or a model load is stalled past its deadline;
    Redis being down only shows in ``redis``; ``replicas`` compares this replica's loaded
    weights with the other replicas' (service.replica_views)."""
    redis_task = asyncio.create_task(asyncio.to_thread(_ping_redis, settings.redis_url))
    views = request.app.state.replica_views
    views_task = asyncio.create_task(views.exchange()) if settings.replica_view_s > 0 else None
    store = await store_status(engine, settings)
    redis_status = await redis_task
    replicas = await views_task if views_task is not None else None
    stalled = [f"{name}@{version}" for name, version in sorted(engine.stalled_loads)]
    ready = store["ok"] and not stalled
    body = ReadyResponse(
        status="ready" if ready else "unavailable",
        device=str(engine.device),
        store=store,
        redis=redis_status,
        loaded_models=len(engine.loaded()),
        stalled_loads=stalled,
        replicas=replicas,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"example": "cpflow_loaded_models 1.0\n"}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Requests, latency by route and model, rows scored, inversion figures, loaded models."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
