"""/v1 inference routes: log_prob, sample and transport as JSON, and log_prob of a CSV file,
each for the latest or a pinned version. Thin adapters over the data plane
(service.inference): each parses its body into a typed request, calls the data plane and
renders the result; every check lives there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service import inference as dp
from service import schemas
from service.csv_codec import csv_header, csv_lines, read_csv_body
from service.deps import DataPlaneDep
from service.error_codes import ErrorCode
from service.errors import ApiError, error_responses
from service.json_codec import NumericJsonRoute, json_array, json_response
from service.routers.models import ModelName, VersionNumber

__all__ = ["require_json", "router"]


async def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON (``application/json`` or ``*+json``). Async,
    as every dependency on the inference path: FastAPI runs a plain ``def`` in a thread."""
    ctype = request.headers.get("content-type", "")
    main = ctype.split(";", 1)[0].strip().lower()
    if main != "application/json" and not (
        main.startswith("application/") and main.endswith("+json")
    ):
        shown = main or "none"
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"send the body as JSON with 'Content-Type: application/json' (got {shown})",
        )


# JSON bodies parsed and answers written by service.json_codec (orjson, numpy arrays)
router = APIRouter(prefix="/models", tags=["inference"], route_class=NumericJsonRoute)
_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 503)
_LATEST, _PINNED = "/{name}", "/{name}/versions/{version}"


def _route(summary: str, description: str, pinned: bool, **options: Any) -> dict[str, Any]:
    """The decorator arguments of one JSON route (``options`` override them: a CSV route's)."""
    which = "pinned version" if pinned else "latest version"
    route: dict[str, Any] = {"summary": f"{summary} ({which})", "description": description}
    route |= {"responses": _ERRORS, "dependencies": [Depends(require_json)]}
    return route | options


# ------------------------------------------------------------------------ log_prob

_LOG_PROB = "Log-density of rows"
_LOG_PROB_DOC = (
    "log p(x) of each row under the model's density, in the units of the data sent. "
    "`exact` builds each block's Hessian and takes a Cholesky log-det; `slq` estimates it by "
    "stochastic Lanczos quadrature and returns a standard error per row (repeatable with "
    "`seed`); `auto` is exact up to CPFLOW_EXACT_MAX_DIM dimensions. Concurrent exact "
    "requests to one model are computed together in one batch. Conditional models (with a "
    "`context_dim`) score log p(x | c): send `context`, one row per input or one for all. "
    "`percentile` and `outlier_level` rank each row among the held-out rows' log-densities "
    "the version was published with (its `training.calibration`)."
)


async def _log_prob(
    plane: dp.DataPlane, name: str, version: int | None, body: schemas.LogProbRequest
) -> Response:
    slq = body.slq
    result = await plane.log_prob(
        dp.LogProbRequest(
            name, version, body.inputs, body.method, probes=slq.probes if slq else None,
            steps=slq.steps if slq else None, seed=body.seed, context=body.context,
            calibration=dp.calibration_of(body.percentile, body.outlier_level),
        )
    )  # fmt: skip
    stderr, scores = result.stderr, result.scores
    return json_response(
        schemas.LogProbResponse, model=result.model, version=result.version,
        method=result.method, log_prob=json_array(result.log_prob),
        stderr=None if stderr is None else json_array(stderr), seed=result.seed,
        percentile=None if scores is None else np.asarray(scores.percentile, dtype=np.float64),
        outlier=None if scores is None or scores.outlier is None else scores.outlier.tolist(),
        outlier_level=None if scores is None else scores.outlier_level,
    )  # fmt: skip


@router.post(
    f"{_LATEST}/log_prob", name="log_prob", response_model=schemas.LogProbResponse,
    **_route(_LOG_PROB, _LOG_PROB_DOC, pinned=False),
)  # fmt: skip
async def log_prob(name: ModelName, body: schemas.LogProbRequest, plane: DataPlaneDep) -> Response:
    return await _log_prob(plane, name, None, body)


@router.post(
    f"{_PINNED}/log_prob", name="log_prob_version", response_model=schemas.LogProbResponse,
    **_route(_LOG_PROB, _LOG_PROB_DOC, pinned=True),
)  # fmt: skip
async def log_prob_version(
    name: ModelName, version: VersionNumber, body: schemas.LogProbRequest, plane: DataPlaneDep
) -> Response:
    return await _log_prob(plane, name, version, body)


# ------------------------------------------------------------------------ sample

_SAMPLE = "Draw samples"
_SAMPLE_DOC = (
    "Draws standard-normal z (seeded: same seed, same samples on the same device) and inverts "
    "the flow block by block with batched L-BFGS (or damped Newton, `solver`). "
    "`max_residual` is the largest max|f(x) - z| reached and `converged` says whether every "
    "sample met `tolerance`. Conditional models sample p(x | c) at `context`."
)


async def _sample(
    plane: dp.DataPlane, name: str, version: int | None, body: schemas.SampleRequest
) -> Response:
    result = await plane.sample(
        dp.SampleRequest(
            name, version, body.num_samples, seed=body.seed, tolerance=body.tolerance,
            max_iterations=body.max_iterations, solver=body.solver, layout=body.layout,
            context=body.context,
        )
    )  # fmt: skip
    return json_response(
        schemas.SampleResponse, model=result.model, version=result.version,
        columns=result.columns, samples=json_array(result.samples, result.image_shape),
        max_residual=result.max_residual, converged=result.converged, seed=result.seed,
    )  # fmt: skip


@router.post(
    f"{_LATEST}/sample", name="sample", response_model=schemas.SampleResponse,
    **_route(_SAMPLE, _SAMPLE_DOC, pinned=False),
)  # fmt: skip
async def sample(name: ModelName, body: schemas.SampleRequest, plane: DataPlaneDep) -> Response:
    return await _sample(plane, name, None, body)


@router.post(
    f"{_PINNED}/sample", name="sample_version", response_model=schemas.SampleResponse,
    **_route(_SAMPLE, _SAMPLE_DOC, pinned=True),
)  # fmt: skip
async def sample_version(
    name: ModelName, version: VersionNumber, body: schemas.SampleRequest, plane: DataPlaneDep
) -> Response:
    return await _sample(plane, name, version, body)


_SAMPLE_CSV = "Draw samples as a CSV file"
_SAMPLE_CSV_DOC = (
    "The same draw as `sample` (same body, same seed, same samples), as a CSV download: a "
    "header of the model's column names, then one sample per line (image models: one "
    "flattened image per line). X-Cpflow-Seed, X-Cpflow-Max-Residual and X-Cpflow-Converged "
    "say how it was drawn."
)
_SAMPLE_CSV_OK = {200: {"content": {"text/csv": {}}, "description": "The samples."}}


async def _sample_csv(
    plane: dp.DataPlane, name: str, version: int | None, body: schemas.SampleRequest
) -> Response:
    result = await plane.sample(
        dp.SampleRequest(
            name, version, body.num_samples, seed=body.seed, tolerance=body.tolerance,
            max_iterations=body.max_iterations, solver=body.solver, layout="rows",
            context=body.context,
        )
    )  # fmt: skip
    columns = result.columns or [f"x{j + 1}" for j in range(result.samples.shape[1])]
    text = csv_header(columns) + await run_in_threadpool(csv_lines, result.samples.double(), [])
    headers = {
        "Content-Disposition": (
            f'attachment; filename="{result.model}-v{result.version}-samples.csv"'
        ),
        "X-Cpflow-Model-Version": str(result.version),
        "X-Cpflow-Seed": str(result.seed),
        "X-Cpflow-Max-Residual": repr(result.max_residual),
        "X-Cpflow-Converged": "true" if result.converged else "false",
    }
    return Response(text, media_type="text/csv", headers=headers)


@router.post(
    f"{_LATEST}/sample.csv", name="sample_csv", response_class=Response,
    **_route(_SAMPLE_CSV, _SAMPLE_CSV_DOC, False, responses={**_SAMPLE_CSV_OK, **_ERRORS}),
)  # fmt: skip
async def sample_csv(
    name: ModelName, body: schemas.SampleRequest, plane: DataPlaneDep
) -> Response:
    return await _sample_csv(plane, name, None, body)


@router.post(
    f"{_PINNED}/sample.csv", name="sample_csv_version", response_class=Response,
    **_route(_SAMPLE_CSV, _SAMPLE_CSV_DOC, True, responses={**_SAMPLE_CSV_OK, **_ERRORS}),
)  # fmt: skip
async def sample_csv_version(
    name: ModelName, version: VersionNumber, body: schemas.SampleRequest, plane: DataPlaneDep
) -> Response:
    return await _sample_csv(plane, name, version, body)


# ------------------------------------------------------------------------ transport

_TRANSPORT = "Transport rows forward (x -> z) or inverse (z -> x)"
_TRANSPORT_DOC = (
    "forward maps data x to the base space z = f(x) (the flow's transport map; for one block "
    "the Brenier optimal-transport map); inverse solves f(x) = z and reports the residual. Conditional models "
    "map with the context c sent in `context` (one row per input or one for all)."
)


async def _transport(
    plane: dp.DataPlane, name: str, version: int | None, body: schemas.TransportRequest
) -> Response:
    result = await plane.transport(
        dp.TransportRequest(
            name, version, body.inputs, body.direction, tolerance=body.tolerance,
            max_iterations=body.max_iterations, solver=body.solver, context=body.context,
        )
    )  # fmt: skip
    return json_response(
        schemas.TransportResponse, model=result.model, version=result.version,
        direction=result.direction, columns=result.columns,
        outputs=json_array(result.outputs, result.image_shape),
        max_residual=result.max_residual, converged=result.converged,
    )  # fmt: skip


@router.post(
    f"{_LATEST}/transport", name="transport", response_model=schemas.TransportResponse,
    **_route(_TRANSPORT, _TRANSPORT_DOC, pinned=False),
)  # fmt: skip
async def transport(
    name: ModelName, body: schemas.TransportRequest, plane: DataPlaneDep
) -> Response:
    return await _transport(plane, name, None, body)


@router.post(
    f"{_PINNED}/transport", name="transport_version", response_model=schemas.TransportResponse,
    **_route(_TRANSPORT, _TRANSPORT_DOC, pinned=True),
)  # fmt: skip
async def transport_version(
    name: ModelName, version: VersionNumber, body: schemas.TransportRequest, plane: DataPlaneDep
) -> Response:
    return await _transport(plane, name, version, body)


# ------------------------------------------------------------------------ log_prob of a CSV

_CSV = "Log-density of the rows of a CSV file, as CSV"
_CSV_DOC = (
    "Upload rows as CSV (`Content-Type: text/csv`; numbers, optionally one header row; a "
    "conditional model's context columns last) and get them back as CSV with a `log_prob` "
    "column (and `stderr` for SLQ). The file is checked whole first, so a bad row is a 422 "
    "naming it; then rows are scored CPFLOW_MAX_BATCH at a time and streamed out as each "
    "batch finishes. Limits: CPFLOW_MAX_CSV_ROWS rows and CPFLOW_MAX_UPLOAD_BYTES bytes. "
    "`percentile=true` adds a `percentile` column (each row's rank among the version's "
    "held-out scores), `outlier_level=0.01` also an `outlier` column (1.0 or 0.0)."
)
_CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {"type": "string"},
                "example": "x,y\n0.5,-1.2\n1.0,0.3\n",
            }
        },
    }
}
_CSV_OK = {200: {"content": {"text/csv": {}}, "description": "The rows with their log_prob."}}
_CSV_ROUTE: dict[str, Any] = {
    "response_class": StreamingResponse, "responses": {**_CSV_OK, **_ERRORS},
    "openapi_extra": _CSV_BODY, "dependencies": [],
}  # fmt: skip
_Method = Annotated[
    Literal["exact", "slq", "auto"],
    Query(description="exact, slq (with a stderr column) or auto (exact up to "
          "CPFLOW_EXACT_MAX_DIM dimensions)"),
]  # fmt: skip
_Probes = Annotated[int | None, Query(ge=1, le=1024, description="SLQ probe vectors per row")]
_Steps = Annotated[int | None, Query(ge=1, le=512, description="SLQ Lanczos steps")]
_Seed = Annotated[int | None, Query(ge=0, le=2**63 - 1, description="seed of the SLQ probes")]


_Percentile = Annotated[
    bool, Query(description="add a percentile column: each row's rank among the held-out scores")
]
_Level = Annotated[
    float | None,
    Query(gt=0.0, lt=1.0, description="add an outlier column (1.0 where percentile < level)"),
]


@dataclass(frozen=True)
class CsvScoring:
    """The query options of a CSV scoring request."""

    method: Literal["exact", "slq", "auto"]
    probes: int | None
    steps: int | None
    seed: int | None
    calibration: dp.Calibration | None = None


def _csv_scoring(
    method: _Method = "auto", probes: _Probes = None, steps: _Steps = None, seed: _Seed = None,
    percentile: _Percentile = False, outlier_level: _Level = None,
) -> CsvScoring:  # fmt: skip
    return CsvScoring(method, probes, steps, seed, dp.calibration_of(percentile, outlier_level))


_CsvOptions = Annotated[CsvScoring, Depends(_csv_scoring)]


async def _log_prob_csv(
    plane: dp.DataPlane, name: str, version: int | None, options: CsvScoring, request: Request
) -> StreamingResponse:
    header, table = await read_csv_body(request)
    scoring = await plane.table(
        dp.TableRequest(
            name, version, table, options.method, probes=options.probes, steps=options.steps,
            seed=options.seed, calibration=options.calibration,
        )
    )  # fmt: skip
    model = scoring.model
    # The header as sent, else the model's column names (then a conditional model's context)
    context = [f"c{j + 1}" for j in range(table.shape[1] - model.dim)]
    columns = header or [*model.columns, *context]
    extra = ["log_prob", "stderr"] if scoring.method == "slq" else ["log_prob"]
    calibration = options.calibration
    if calibration is not None:
        extra += ["percentile"] if calibration.outlier_level is None else ["percentile", "outlier"]

    async def body() -> AsyncIterator[bytes]:
        yield csv_header([*columns, *extra])
        async for batch in scoring.batches():
            scored: list[torch.Tensor | np.ndarray] = [batch.log_prob]
            scored += [] if batch.stderr is None else [batch.stderr]
            if batch.scores is not None:
                scored.append(batch.scores.percentile)
                scored += [] if batch.scores.outlier is None else [batch.scores.outlier]
            # Off the event loop: formatting a batch takes tens of milliseconds.
            yield await run_in_threadpool(csv_lines, table[batch.start : batch.stop], scored)

    headers = {
        "Content-Disposition": f'attachment; filename="{model.name}-v{model.version}-scored.csv"',
        "X-Cpflow-Model-Version": str(model.version),
        "X-Cpflow-Method": scoring.method,
    }
    if scoring.seed is not None:
        headers["X-Cpflow-Seed"] = str(scoring.seed)
    return StreamingResponse(body(), media_type="text/csv", headers=headers)


@router.post(
    f"{_LATEST}/log_prob.csv", name="log_prob_csv", **_route(_CSV, _CSV_DOC, False, **_CSV_ROUTE)
)
async def log_prob_csv(
    name: ModelName, options: _CsvOptions, plane: DataPlaneDep, request: Request
) -> StreamingResponse:
    return await _log_prob_csv(plane, name, None, options, request)


@router.post(
    f"{_PINNED}/log_prob.csv", name="log_prob_csv_version",
    **_route(_CSV, _CSV_DOC, True, **_CSV_ROUTE),
)  # fmt: skip
async def log_prob_csv_version(
    name: ModelName, version: VersionNumber, options: _CsvOptions, plane: DataPlaneDep,
    request: Request,
) -> StreamingResponse:  # fmt: skip
    return await _log_prob_csv(plane, name, version, options, request)
