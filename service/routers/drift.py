"""Drift of a model version's live traffic from its held-out scores (service.drift)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from model_store.calibration import Reference
from service.deps import DataPlaneDep
from service.drift import MIN_ROWS, DriftMonitor, DriftStats
from service.errors import error_responses
from service.inference.checks import reference_of
from service.routers.models import ModelName, VersionNumber

__all__ = ["DriftResponse", "router"]

router = APIRouter(prefix="/models", tags=["models"])

_BINS = 30


class DriftWindow(BaseModel):
    rows: int = Field(description="Scored rows in the window now.")
    capacity: int = Field(description="Most rows it keeps (CPFLOW_DRIFT_WINDOW).")
    scope: Literal["shared", "process"] = Field(
        description="shared: one Redis window for every replica; process: this process's own."
    )


class DriftHistogram(BaseModel):
    edges: list[float] = Field(description="Bin edges over the held-out scores' range.")
    heldout: list[float] = Field(description="Fraction of the held-out rows per bin.")
    window: list[float] = Field(
        description="Fraction of the window per bin (clipped to the range)."
    )


class DriftResponse(BaseModel):
    """The KS test of the version's recent scores against its held-out scores."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "moons", "version": 3, "statistic": 0.021, "p_value": 0.74,
                 "mean_shift": -0.01, "drifted": False, "alpha": 0.01,
                 "window": {"rows": 4000, "capacity": 4000, "scope": "shared"},
                 "heldout_rows": 2000, "histogram": None},
            ]
        }
    )  # fmt: skip

    model: str
    version: int
    statistic: float | None = Field(
        description=f"KS statistic sup|F_window - F_heldout|; null under {MIN_ROWS} rows."
    )
    p_value: float | None = Field(description="Its asymptotic p-value.")
    mean_shift: float | None = Field(
        description="Window mean log p minus held-out mean (negative: less likely traffic)."
    )
    drifted: bool = Field(description="p_value < alpha (CPFLOW_DRIFT_ALPHA).")
    alpha: float
    window: DriftWindow
    heldout_rows: int = Field(description="Held-out rows the reference summarises.")
    histogram: DriftHistogram | None = Field(description="Both distributions, binned.")


def _histogram(result: DriftStats, reference: Reference) -> DriftHistogram | None:
    if result.rows == 0:
        return None
    edges = np.linspace(reference.values[0], reference.values[-1], _BINS + 1)
    heldout = np.diff(reference.percentiles(edges))
    counts, _ = np.histogram(np.clip(result.window, edges[0], edges[-1]), edges)
    return DriftHistogram(
        edges=edges.tolist(), heldout=heldout.tolist(), window=(counts / result.rows).tolist()
    )


async def _drift(
    plane: DataPlaneDep, request: Request, name: str, version: int | None
) -> DriftResponse:
    model = await plane.model(name, version)
    reference = reference_of(model, "drift")
    monitor: DriftMonitor = request.app.state.drift
    result, scope = await monitor.report(model.name, model.version, reference)
    alpha = plane.settings.drift_alpha
    return DriftResponse(
        model=model.name, version=model.version, statistic=result.statistic,
        p_value=result.p_value, mean_shift=result.mean_shift,
        drifted=result.p_value is not None and result.p_value < alpha, alpha=alpha,
        window=DriftWindow(rows=result.rows, capacity=plane.settings.drift_window, scope=scope),
        heldout_rows=reference.rows, histogram=_histogram(result, reference),
    )  # fmt: skip


_DOC = (
    "The version's last CPFLOW_DRIFT_WINDOW scored rows (every log_prob request under /v1 and "
    "/v2, CSV included; shared by the replicas through Redis) against the held-out rows' "
    "log-densities it was published with: two-sample Kolmogorov-Smirnov statistic, p-value "
    "and mean shift. 422 calibration_unavailable for a version published without them."
)
_ROUTE: dict[str, Any] = {"response_model": DriftResponse, "responses": error_responses(401, 404, 422, 503),
          "description": _DOC}  # fmt: skip


@router.get(
    "/{name}/drift", name="drift", summary="Drift of live traffic (latest version)", **_ROUTE
)
async def drift(name: ModelName, plane: DataPlaneDep, request: Request) -> DriftResponse:
    return await _drift(plane, request, name, None)


@router.get(
    "/{name}/versions/{version}/drift", name="drift_version",
    summary="Drift of live traffic (pinned version)", **_ROUTE,
)  # fmt: skip
async def drift_version(
    name: ModelName, version: VersionNumber, plane: DataPlaneDep, request: Request
) -> DriftResponse:
    return await _drift(plane, request, name, version)
