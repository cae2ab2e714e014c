"""Model catalogue: list models (broken ones too), describe a version, serve its plots,
re-verify a model's files (on demand, and periodically for loaded versions), and delete a
version or a whole model (admin role). Under CPFLOW_MODEL_SCOPE=tenant each route sees only
the caller's tenant's models and the shared ones (service.model_scope)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from model_store.manifest import manifest_columns, manifest_flow_config
from model_store.names import MAX_NAME_LENGTH
from service.deps import EngineDep, SettingsDep
from service.errors import error_responses
from service.images import image_shape
from service.model_health import catalogue, verify_model, verify_periodically
from service.model_scope import check_visible, visible_rows
from service.schemas import ModelDetail, ModelsResponse, ModelSummary
from service.tenancy import tenant_of

__all__ = ["ModelName", "VersionNumber", "lifespan", "router"]

router = APIRouter(prefix="/models", tags=["models"])
log = logging.getLogger("cpflow.models")

# The store's name rules (model_store.names), stated in the schema; the store enforces them
# (422 invalid_name, with a message saying which rule a name breaks).
_NAME_RULES = {
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
}
ModelName = Annotated[
    str,
    Path(
        description="Model name, as published to the store.",
        examples=["moons"],
        json_schema_extra=_NAME_RULES,
    ),
]
PlotFile = Annotated[
    str,
    Path(
        description="A plot's file name.", examples=["density.png"], json_schema_extra=_NAME_RULES
    ),
]
VersionNumber = Annotated[
    int, Path(ge=1, le=2**31, description="A published version number.", examples=[1])
]


def plot_urls(name: str, version: int, manifest: dict[str, Any]) -> dict[str, str]:
    """File name -> URL of each plot stored with a version."""
    plots = manifest.get("plots") or []
    names = list(plots) if isinstance(plots, list | dict) else []
    return {str(p): f"/v1/models/{name}/versions/{version}/plots/{p}" for p in names}


def _metrics_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    training = manifest.get("training") or {}
    return training.get("metrics") if isinstance(training, dict) else None


@router.get(
    "",
    summary="List models (latest version of each)",
    response_model=ModelsResponse,
    responses=error_responses(401),
)
async def list_models(
    engine: EngineDep, settings: SettingsDep, request: Request
) -> ModelsResponse:
    """Every model in the store (that the caller's tenant sees) with its latest version,
    dimension and test metrics; a model whose latest manifest is missing or damaged is listed
    with state broken and the error."""
    rows = visible_rows(await engine.io(catalogue, engine.store), tenant_of(request), settings)
    models = [ModelSummary.model_validate(row) for row in rows]
    return ModelsResponse(models=models, count=len(models))


async def _visible(request: Request, name: str, version: int | None) -> None:
    """404 model_not_found, as for a missing model, unless the caller's tenant sees it."""
    state = request.app.state
    await check_visible(state.engine, state.settings, tenant_of(request), name, version)


async def _detail(engine: Any, name: str, version: int | None) -> ModelDetail:
    versions = await engine.io(engine.store.versions, name)
    number = await engine.io(engine.store.resolve, name, "latest" if version is None else version)
    manifest = await engine.io(engine.store.manifest, name, number)
    return ModelDetail(
        name=name,
        version=number,
        latest_version=versions[-1] if versions else number,
        versions=versions,
        dim=int(manifest.get("dim", 0)),
        columns=manifest_columns(manifest),
        input_shape=list(shape) if (shape := image_shape(manifest)) else None,
        context_dim=getattr(manifest_flow_config(manifest), "context_dim", None),
        created_at=manifest.get("created_at"),
        library_version=manifest.get("library_version"),
        flow_config=manifest.get("flow_config") or {},
        standardization=manifest.get("standardization"),
        training=manifest.get("training"),
        metrics=_metrics_of(manifest),
        plots=plot_urls(name, number, manifest),
        onnx=manifest.get("onnx"),
        tenant=manifest.get("tenant"),
        runtime=engine.runtimes_of(name, number, manifest),
        loaded=engine.is_loaded(name, number),
    )


@router.get(
    "/{name}",
    summary="Describe a model (latest version): manifest summary, versions, plot URLs",
    response_model=ModelDetail,
    responses=error_responses(401, 404, 503),
)
async def get_model(name: ModelName, engine: EngineDep, request: Request) -> ModelDetail:
    """The latest version's manifest summary, every published version, metrics and plots."""
    await _visible(request, name, None)
    detail = await _detail(engine, name, None)
    request.state.metric_model = name  # labels only names that exist
    return detail


@router.get(
    "/{name}/versions/{version}",
    summary="Describe one version of a model",
    response_model=ModelDetail,
    responses=error_responses(401, 404, 503),
)
async def get_model_version(
    name: ModelName, version: VersionNumber, engine: EngineDep, request: Request
) -> ModelDetail:
    """The pinned version's manifest summary, every published version, metrics and plots."""
    await _visible(request, name, version)
    detail = await _detail(engine, name, version)
    request.state.metric_model = name  # labels only names that exist
    return detail


_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The PNG image."}
}


async def _plot(engine: Any, name: str, version: int | str, file: str) -> FileResponse:
    path = await engine.io(engine.store.plot_path, name, version, file)
    if not path.is_file():
        from model_store import CorruptModel

        number = await engine.io(engine.store.resolve, name, version)
        raise CorruptModel(name, number, f"plots/{file}", "is missing")
    media = "image/png" if file.lower().endswith(".png") else None
    return FileResponse(path, media_type=media)


@router.get(
    "/{name}/plots/{file}",
    summary="A plot of the latest version (PNG)",
    response_class=FileResponse,
    responses={**_PNG, **error_responses(401, 404, 503)},
)
async def get_plot(
    name: ModelName, file: PlotFile, engine: EngineDep, request: Request
) -> FileResponse:
    """A plot stored with the latest version (density, samples, transport...)."""
    await _visible(request, name, None)
    return await _plot(engine, name, "latest", file)


@router.get(
    "/{name}/versions/{version}/plots/{file}",
    summary="A plot of one version (PNG)",
    response_class=FileResponse,
    responses={**_PNG, **error_responses(401, 404, 503)},
)
async def get_version_plot(
    name: ModelName, version: VersionNumber, file: PlotFile, engine: EngineDep, request: Request
) -> FileResponse:
    """A plot stored with a pinned version."""
    await _visible(request, name, version)
    return await _plot(engine, name, version, file)


class VersionCheck(BaseModel):
    """One version's files, checked against its manifest on this replica just now."""

    version: int
    state: str
    loaded: bool
    error: str | None = None


class VerifyResponse(BaseModel):
    """Every version of a model, re-verified."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "moons",
                    "versions": [
                        {"version": 1, "state": "ready", "loaded": False, "error": None},
                        {
                            "version": 2,
                            "state": "broken",
                            "loaded": False,
                            "error": "model 'moons' version 2: weights.safetensors does not "
                            "match its sha256 (altered or truncated)",
                        },
                    ],
                }
            ]
        }
    )

    name: str
    versions: list[VersionCheck]


@router.post(
    "/{name}/verify",
    summary="Re-check every version's files now; unload versions that no longer verify",
    response_model=VerifyResponse,
    responses=error_responses(401, 404, 503),
)
async def verify(name: ModelName, engine: EngineDep, request: Request) -> VerifyResponse:
    """Hash every file of every version of the model against its manifest on this replica.
    A loaded version whose files changed is unloaded, so it is refused from now on (as a
    fresh replica refuses it); ask each replica to compare their views."""
    await _visible(request, name, None)
    rows = await verify_model(engine, name)
    request.state.metric_model = name
    return VerifyResponse(name=name, versions=[VersionCheck(**row) for row in rows])


class ModelDeleted(BaseModel):
    """What a deletion removed, and the model's latest version after it."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "moons", "deleted": [3], "latest_version": 2}]}
    )

    name: str
    deleted: list[int]
    latest_version: int | None = Field(
        description="The latest version now (null: the model has none left). Version numbers "
        "are never reused: the next publish gets a new one."
    )


async def _delete(request: Request, name: str, version: int | None) -> ModelDeleted:
    """Remove one version (or every one, oldest first), then forget them on this replica at
    once; other replicas drop them at their next look-up (CPFLOW_POLL_INTERVAL_S)."""
    await _visible(request, name, version)
    engine = request.app.state.engine
    if version is None:
        deleted = await engine.io(engine.store.delete_model, name)
    else:
        await engine.io(engine.store.delete, name, version)
        deleted = [version]
    engine.unpublished(name)
    request.state.metric_model = name
    left = await engine.published(name)
    log.info("model deleted", extra={"model": name, "versions": deleted,
                                     "tenant": tenant_of(request)})  # fmt: skip
    return ModelDeleted(name=name, deleted=deleted, latest_version=left[-1] if left else None)


_ADMIN_ONLY = error_responses(401, 403, 404, 503)


@router.delete(
    "/{name}",
    summary="Delete a model: every version (admin role)",
    response_model=ModelDeleted,
    responses=_ADMIN_ONLY,
)
async def delete_model(name: ModelName, request: Request) -> ModelDeleted:
    """Every version of the model goes, oldest first; other models are untouched. Needs a key
    with the admin role (403 forbidden otherwise)."""
    return await _delete(request, name, None)


@router.delete(
    "/{name}/versions/{version}",
    summary="Delete one version of a model (admin role)",
    response_model=ModelDeleted,
    responses=_ADMIN_ONLY,
)
async def delete_model_version(
    name: ModelName, version: VersionNumber, request: Request
) -> ModelDeleted:
    """The version goes; deleting the latest makes the previous one latest. Needs a key with
    the admin role (403 forbidden otherwise)."""
    return await _delete(request, name, version)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Re-verify the loaded versions every CPFLOW_VERIFY_INTERVAL_S (0: never)."""
    interval = app.state.settings.verify_interval_s
    task = None
    if interval > 0:
        task = asyncio.create_task(verify_periodically(app.state.engine, interval))
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
