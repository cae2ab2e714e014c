"""Model catalogue: list models (broken ones too), describe a version, serve its plots, and
re-verify a model's files (on demand, and periodically for loaded versions)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from model_store.manifest import manifest_columns, manifest_flow_config
from model_store.names import MAX_NAME_LENGTH
from service.deps import EngineDep
from service.errors import error_responses
from service.images import image_shape
from service.model_health import catalogue, verify_model, verify_periodically
from service.schemas import ModelDetail, ModelsResponse, ModelSummary

__all__ = ["ModelName", "VersionNumber", "lifespan", "router"]

router = APIRouter(prefix="/models", tags=["models"])

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
async def list_models(engine: EngineDep) -> ModelsResponse:
    """Every model in the store with its latest version, dimension and test metrics; a model
    whose latest manifest is missing or damaged is listed with state broken and the error."""
    rows = await engine.io(catalogue, engine.store)
    models = [ModelSummary.model_validate(row) for row in rows]
    return ModelsResponse(models=models, count=len(models))


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
    detail = await _detail(engine, name, None)
    request.state.metric_model = name
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
    detail = await _detail(engine, name, version)
    request.state.metric_model = name
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
async def get_plot(name: ModelName, file: PlotFile, engine: EngineDep) -> FileResponse:
    """A plot stored with the latest version (density, samples, transport...)."""
    return await _plot(engine, name, "latest", file)


@router.get(
    "/{name}/versions/{version}/plots/{file}",
    summary="A plot of one version (PNG)",
    response_class=FileResponse,
    responses={**_PNG, **error_responses(401, 404, 503)},
)
async def get_version_plot(
    name: ModelName, version: VersionNumber, file: PlotFile, engine: EngineDep
) -> FileResponse:
    """A plot stored with a pinned version."""
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
    rows = await verify_model(engine, name)
    request.state.metric_model = name
    return VerifyResponse(name=name, versions=[VersionCheck(**row) for row in rows])


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
