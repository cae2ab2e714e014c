"""Typed FastAPI dependencies shared by the routers (settings, engine, store, metrics).

Everything hangs off ``app.state`` (set up by :func:`service.app.create_app`), so routers added
later (jobs, datasets) reach the same objects with ``SettingsDep``, ``StoreDep`` and so on.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from model_store import ModelStore
from service.engine import InferenceEngine
from service.inference import DataPlane
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.tenancy import tenant_of

__all__ = [
    "DataPlaneDep",
    "EngineDep",
    "MetricsDep",
    "SettingsDep",
    "StoreDep",
    "get_dataplane",
    "get_engine",
    "get_metrics",
    "get_settings_dep",
    "get_store",
]


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> InferenceEngine:
    return request.app.state.engine


def get_store(request: Request) -> ModelStore:
    return request.app.state.engine.store


async def get_dataplane(request: Request) -> DataPlane:
    """The data plane over the app's engine and settings, for the caller's tenant; the models
    a request resolves label its metrics (``request.state.metric_model``). Async: FastAPI
    would run a plain ``def`` in a worker thread, a thread hop on every inference request."""
    state = request.app.state

    def label(name: str) -> None:
        request.state.metric_model = name

    return DataPlane(state.engine, state.settings, label, tenant_of(request), state.drift)


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
