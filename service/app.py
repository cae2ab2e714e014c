"""The FastAPI application factory.

``create_app(settings)`` wires settings, the inference engine, middlewares, error handlers and
the routers. /v1 routers are found by module name in :data:`V1_ROUTERS`: a module that is not
there yet (jobs, datasets) is skipped, so new resources plug in by adding
``service/routers/<name>.py`` exposing ``router`` (and optionally ``lifespan(app)``, an async
context manager entered with the app's).

Run it with ``cpflow-serve`` or ``uvicorn --factory service.app:create_app``.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import ModuleType

from fastapi import APIRouter, FastAPI, Security
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

import cpflow
from service.api_docs import install_api_docs
from service.auth import ApiKeyMiddleware, bearer_scheme
from service.console import install_console
from service.drift import DriftMonitor
from service.engine import InferenceEngine
from service.errors import install_error_handlers
from service.logging import configure_logging
from service.metrics import ServiceMetrics
from service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.openapi_limits import install_limits
from service.ratelimit import RateLimiter, RateLimitMiddleware
from service.replica_views import ReplicaViews
from service.routers import health, v2
from service.server_bounds import exit_soon
from service.settings import Settings, get_settings
from service.tenancy import KeyRing

__all__ = ["V1_ROUTERS", "create_app"]

V1_ROUTERS = ("models", "inference", "drift", "datasets", "jobs")

_DESCRIPTION = """\
Convex Potential Flows over HTTP: log-densities (exact or stochastic Lanczos), samples by
inverting the flow, and transport maps, from models trained into the cpflow model store.

Errors always come as `{"error": {"code": "...", "message": "..."}}`. When the server has API
keys (CPFLOW_API_KEYS), every /v1 route needs `Authorization: Bearer <key>`.
"""


def _unique_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def _load_router_modules() -> list[ModuleType]:
    modules = []
    for name in V1_ROUTERS:
        qualified = f"service.routers.{name}"
        try:
            modules.append(importlib.import_module(qualified))
        except ModuleNotFoundError as exc:
            if exc.name != qualified:  # the module exists but one of its imports is missing
                raise
    return modules


def _install_home(app: FastAPI, home: str) -> None:
    """A browser opening the service's address lands on ``home`` (the console, or the docs)."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(home)


def _lifespan(
    settings: Settings,
    engine: InferenceEngine,
    metrics: ServiceMetrics,
    views: ReplicaViews,
    drift: DriftMonitor,
    modules: list[ModuleType],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: start the engine, the preloads, the replica views, the drift monitor
    and the routers' own lifespans; on the way out stop them and the engine."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        preload = views_task = None
        if settings.preload_models:
            preload = asyncio.create_task(engine.preload(settings.preload_models))
        if settings.replica_view_s > 0:
            views_task = asyncio.create_task(views.run())
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(drift.running())
            for module in modules:
                hook = getattr(module, "lifespan", None)
                if hook is not None:
                    await stack.enter_async_context(hook(app))
            try:
                yield
            finally:
                for task in (preload, views_task):
                    if task is not None:
                        task.cancel()
                if views_task is not None:
                    views.close()
                engine.close()
                metrics.close()
                if settings.serve_process:
                    exit_soon()  # bounded: do not wait for inference threads still running

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service app for ``settings`` (default: from the CPFLOW_* environment)."""
    settings = settings if settings is not None else get_settings()
    configure_logging(settings.log_level)
    metrics = ServiceMetrics(settings.metrics_dir)
    engine = InferenceEngine(settings, metrics)
    views = ReplicaViews(engine, settings)
    drift = DriftMonitor(settings, metrics)
    modules = _load_router_modules()

    lifespan = _lifespan(settings, engine, metrics, views, drift, modules)

    app = FastAPI(
        title="cpflow",
        version=cpflow.__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_unique_id,
        docs_url=None,  # served from local assets by install_api_docs, not from a CDN
        redoc_url=None,
    )
    install_api_docs(app)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.replica_views = views
    app.state.drift = drift
    install_error_handlers(app)
    install_limits(app, settings)  # the settings' limits, stated in /openapi.json

    app.include_router(health.router)
    v1 = APIRouter(prefix="/v1", dependencies=[Security(bearer_scheme)])
    for module in modules:
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(v2.router)  # Open Inference Protocol (KServe v2)
    if settings.console:
        install_console(app)  # /ui: browser pages over /v1, outside the OpenAPI schema
    _install_home(app, "/ui" if settings.console else "/docs")
    # Route templates for metrics labels, keyed by route object: recent FastAPI versions put the
    # router's own (unprefixed) route in the ASGI scope.
    templates = {id(r): getattr(r, "path", "") for r in health.router.routes}
    for module in modules:
        templates.update({id(r): "/v1" + getattr(r, "path", "") for r in module.router.routes})

    def route_template(route: object) -> str:
        return templates.get(id(route)) or getattr(route, "path", None) or "unmatched"

    def body_limit(path: str) -> int:
        if path.startswith("/v1/datasets") or path.endswith("/log_prob.csv"):
            return settings.max_upload_bytes
        return settings.max_body_bytes

    # Added innermost first: RequestContext wraps everything, so 401/413/429 are logged and
    # counted.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    limiter = RateLimiter(settings)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)  # after auth: knows the key
    # failed auth is rate limited too, per client address
    ring = KeyRing.from_settings(settings)
    app.add_middleware(ApiKeyMiddleware, ring=ring, gate=limiter.refuse_address)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, route_template=route_template)
    return app
