"""Inference routes: log_prob, sample and transport, for the latest or a pinned version."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from cpflow import ContextError, check_context
from service.deps import EngineDep, SettingsDep
from service.engine import InferenceEngine, ServedModel
from service.errors import ApiError, error_responses
from service.images import inputs_to_rows, rows_to_layout
from service.routers.models import ModelName, VersionNumber
from service.schemas import (
    LogProbRequest,
    LogProbResponse,
    SampleRequest,
    SampleResponse,
    TransportRequest,
    TransportResponse,
)
from service.settings import Settings
from service.uploads import UploadError, read_csv

__all__ = ["OPERATIONS", "context_tensor", "require_json", "router", "rows_to_tensor"]

_DTYPE_MAX = {torch.float32: "3.4e38", torch.float64: "1.8e308"}


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON (``application/json`` or ``*+json``)."""
    ctype = request.headers.get("content-type", "")
    main = ctype.split(";", 1)[0].strip().lower()
    if main != "application/json" and not (
        main.startswith("application/") and main.endswith("+json")
    ):
        shown = main or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the body as JSON with 'Content-Type: application/json' (got {shown})",
        )


router = APIRouter(prefix="/models", tags=["inference"])
_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 503)


def check_row_count(rows: list[list[float]], settings: Settings) -> None:
    if len(rows) > settings.max_batch:
        raise ApiError(
            422,
            "too_many_rows",
            f"inputs has {len(rows)} rows; at most {settings.max_batch} per request "
            "(CPFLOW_MAX_BATCH): split the batch",
        )


def check_iterations(max_iterations: int | None, settings: Settings) -> None:
    if max_iterations is not None and max_iterations > settings.max_inverse_iterations:
        raise ApiError(
            422,
            "too_many_iterations",
            f"max_iterations is {max_iterations}; at most {settings.max_inverse_iterations} "
            "(CPFLOW_MAX_INVERSE_ITERATIONS)",
        )


def rows_to_tensor(rows: list[list[float]], model: ServedModel) -> torch.Tensor:
    """Check every row has the model's dimension and fits its dtype; return an (n, d) tensor."""
    dim = model.dim
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise ApiError(
                422,
                "wrong_dimension",
                f"inputs row {i} has {len(row)} values; model {model.name!r} version "
                f"{model.version} expects {dim} per row",
            )
    x = torch.tensor(rows, dtype=model.dtype)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        i, j = (int(v) for v in (~finite).nonzero()[0])
        limit = _DTYPE_MAX.get(model.dtype, "the dtype's range")
        raise ApiError(
            422,
            "value_out_of_range",
            f"inputs[{i}][{j}] = {rows[i][j]!r} overflows to infinity in "
            f"{str(model.dtype).removeprefix('torch.')} (largest magnitude about {limit}): "
            "rescale the data",
        )
    return x


def _floats(t: torch.Tensor) -> list[Any]:
    """A tensor as nested lists, non-finite entries (overflow) as None (JSON null)."""
    values = t.tolist()
    if bool(torch.isfinite(t).all()):
        return values
    if t.dim() == 1:
        return [v if math.isfinite(v) else None for v in values]
    return [[v if math.isfinite(v) else None for v in row] for row in values]


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _solver(solver: str | None, model: ServedModel, shape: tuple[int, int, int] | None) -> Any:
    """Image models invert with their configured solver only: another one is a 422."""
    if shape is None or solver is None:
        return solver
    configured = getattr(getattr(model.flow, "config", None), "inverse_solver", "lbfgs")
    if solver != configured:
        raise ApiError(
            422,
            "unsupported_solver",
            f"model {model.name!r} is an image model inverted with {configured!r}; "
            f"solver {solver!r} is not offered for it: omit solver",
        )
    return None


def context_tensor(context: Any, rows: int, model: ServedModel) -> torch.Tensor | None:
    """The (rows, k) context of a conditional model's request in its dtype, or None for a plain
    model; every problem is a 422 with check_context's code (context_required, context_shape,
    context_rows, context_not_finite), or context_not_accepted for a plain model."""
    if model.context_dim is None:
        if context is not None:
            raise ApiError(
                422,
                "context_not_accepted",
                f"model {model.name!r} version {model.version} is not conditional: omit 'context'",
            )
        return None
    try:
        c = check_context(context, rows, model.context_dim)
    except ContextError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    c = c.to(model.dtype)
    finite = torch.isfinite(c)
    if not bool(finite.all()):  # finite in float64, overflows the model's dtype
        i, j = (int(v) for v in (~finite).nonzero()[0])
        limit = _DTYPE_MAX.get(model.dtype, "the dtype's range")
        raise ApiError(
            422,
            "context_not_finite",
            f"context[{min(i, len(context) - 1)}][{j}] overflows to infinity in "
            f"{str(model.dtype).removeprefix('torch.')} (largest magnitude about {limit})",
        )
    return c.contiguous()


async def _model(
    engine: InferenceEngine, request: Request, name: str, version: int | None
) -> ServedModel:
    model = await engine.get(name, version)
    request.state.metric_model = model.name  # only known names: bounded label cardinality
    return model


def _routes(
    op: str, handler: Any, doc: str, body: Any, response_model: Any, **options: Any
) -> None:
    """Register ``POST /{name}/<op>`` (the latest version) and
    ``POST /{name}/versions/{version}/<op>`` (a pinned one), both served by ``handler``, called
    as ``handler(name, version or None, body, engine, settings, request)``. ``options`` override
    the JSON routes' defaults (a CSV route's media types, say)."""

    async def latest(name, body, engine, settings, request):
        return await handler(name, None, body, engine, settings, request)

    async def pinned(name, version, body, engine, settings, request):
        return await handler(name, version, body, engine, settings, request)

    common = {"name": ModelName, "body": body, "engine": EngineDep}
    common |= {"settings": SettingsDep, "request": Request, "return": response_model}
    latest.__annotations__ = common
    pinned.__annotations__ = {"version": VersionNumber, **common}
    title, route_name = _SUMMARIES[op], op.replace(".", "_")
    route = {"response_model": response_model, "responses": _ERRORS}
    route |= {"dependencies": [Depends(require_json)], **options}
    for path, endpoint, which, suffix in (
        (f"/{{name}}/{op}", latest, "latest version", ""),
        (f"/{{name}}/versions/{{version}}/{op}", pinned, "pinned version", "_version"),
    ):
        router.add_api_route(
            path, endpoint, methods=["POST"], name=route_name + suffix,
            summary=f"{title} ({which})", description=doc, **route,
        )  # fmt: skip


_SUMMARIES = {
    "log_prob": "Log-density of rows",
    "sample": "Draw samples",
    "transport": "Transport rows forward (x -> z) or inverse (z -> x)",
    "log_prob.csv": "Log-density of the rows of a CSV file, as CSV",
}


# ------------------------------------------------------------------------ log_prob


async def _log_prob(
    name: str, version: int | None, body: LogProbRequest, engine: InferenceEngine,
    settings: Settings, request: Request,
) -> LogProbResponse:  # fmt: skip
    check_row_count(body.inputs, settings)
    model = await _model(engine, request, name, version)
    x, _ = inputs_to_rows(body.inputs, model, rows_to_tensor)
    context = context_tensor(body.context, x.shape[0], model)
    slq = body.slq
    result = await engine.log_prob(
        model,
        x,
        body.method,
        probes=slq.probes if slq else None,
        steps=slq.steps if slq else None,
        seed=body.seed,
        context=context,
    )
    return LogProbResponse(
        model=model.name,
        version=model.version,
        method=result.method,
        log_prob=_floats(result.log_prob),
        stderr=_floats(result.stderr) if result.stderr is not None else None,
        seed=result.seed,
    )


_LOG_PROB_DOC = (
    "log p(x) of each row under the model's density, in the units of the data sent. "
    "`exact` builds each block's Hessian and takes a Cholesky log-det; `slq` estimates it by "
    "stochastic Lanczos quadrature and returns a standard error per row (repeatable with "
    "`seed`); `auto` is exact up to CPFLOW_EXACT_MAX_DIM dimensions. Concurrent exact "
    "requests to one model are computed together in one batch. Conditional models (with a "
    "`context_dim`) score log p(x | c): send `context`, one row per input or one for all."
)


_routes("log_prob", _log_prob, _LOG_PROB_DOC, LogProbRequest, LogProbResponse)


# ------------------------------------------------------------------------ sample


async def _sample(
    name: str, version: int | None, body: SampleRequest, engine: InferenceEngine,
    settings: Settings, request: Request,
) -> SampleResponse:  # fmt: skip
    if body.num_samples > settings.max_samples:
        raise ApiError(
            422,
            "too_many_samples",
            f"num_samples is {body.num_samples}; at most {settings.max_samples} per request "
            "(CPFLOW_MAX_SAMPLES)",
        )
    check_iterations(body.max_iterations, settings)
    model = await _model(engine, request, name, version)
    shape = model.image_shape
    if body.layout == "image" and shape is None:
        raise ApiError(
            422,
            "wrong_shape",
            f"layout 'image' needs an image model; model {model.name!r} version "
            f"{model.version} takes rows [n, {model.dim}]: use layout 'rows'",
        )
    context = context_tensor(body.context, body.num_samples, model)
    result = await engine.sample(
        model,
        body.num_samples,
        seed=body.seed,
        tolerance=body.tolerance,
        max_iterations=body.max_iterations,
        solver=_solver(body.solver, model, shape),
        context=context,
    )
    as_image = shape is not None and body.layout != "rows"
    return SampleResponse(
        model=model.name,
        version=model.version,
        samples=rows_to_layout(result.samples, shape, as_image)
        if shape is not None
        else _floats(result.samples),
        max_residual=_finite_or_none(result.max_residual),
        converged=result.converged,
        seed=result.seed,
    )


_SAMPLE_DOC = (
    "Draws standard-normal z (seeded: same seed, same samples on the same device) and inverts "
    "the flow block by block with batched L-BFGS (or damped Newton, `solver`). "
    "`max_residual` is the largest max|f(x) - z| reached and `converged` says whether every "
    "sample met `tolerance`. Conditional models sample p(x | c) at `context`."
)


_routes("sample", _sample, _SAMPLE_DOC, SampleRequest, SampleResponse)


# ------------------------------------------------------------------------ transport


async def _transport(
    name: str, version: int | None, body: TransportRequest, engine: InferenceEngine,
    settings: Settings, request: Request,
) -> TransportResponse:  # fmt: skip
    check_row_count(body.inputs, settings)
    check_iterations(body.max_iterations, settings)
    model = await _model(engine, request, name, version)
    x, as_image = inputs_to_rows(body.inputs, model, rows_to_tensor)
    shape = model.image_shape
    context = context_tensor(body.context, x.shape[0], model)
    result = await engine.transport(
        model,
        x,
        body.direction,
        tolerance=body.tolerance,
        max_iterations=body.max_iterations,
        solver=_solver(body.solver, model, shape),
        context=context,
    )
    return TransportResponse(
        model=model.name,
        version=model.version,
        direction=body.direction,
        outputs=rows_to_layout(result.outputs, shape, as_image)
        if shape is not None
        else _floats(result.outputs),
        max_residual=_finite_or_none(result.max_residual),
        converged=result.converged,
    )


_TRANSPORT_DOC = (
    "forward maps data x to the base space z = f(x) (the flow's transport map; for one block "
    "the Brenier optimal-transport map); inverse solves f(x) = z and reports the residual. Conditional models "
    "map with the context c sent in `context` (one row per input or one for all)."
)


_routes("transport", _transport, _TRANSPORT_DOC, TransportRequest, TransportResponse)


OPERATIONS: dict[str, tuple[Any, type]] = {
    "log_prob": (_log_prob, LogProbRequest),
    "sample": (_sample, SampleRequest),
    "transport": (_transport, TransportRequest),
}
"""Operation name -> (handler, request body model): other protocols (/v2) call the same handlers
with a body built from their own request, so every check and answer is the /v1 one."""


# ------------------------------------------------------------------------ log_prob of a CSV

_CSV_TYPES = ("text/csv", "application/csv", "text/plain")
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


async def _csv_rows(request: Request, settings: Settings) -> tuple[list[str] | None, np.ndarray]:
    """The body as (header or None, float64 array); 415 unless sent as CSV, 422 when unusable."""
    main = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if main not in _CSV_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the rows as CSV with 'Content-Type: text/csv' (got {main or 'none'})",
        )
    content = await request.body()
    try:
        header, array = await run_in_threadpool(read_csv, content)
    except UploadError as exc:
        raise ApiError(422, "invalid_csv", str(exc).replace("the .csv file", "the CSV")) from None
    if len(array) > settings.max_csv_rows:
        raise ApiError(
            422,
            "too_many_rows",
            f"the CSV has {len(array)} rows; at most {settings.max_csv_rows} per request "
            "(CPFLOW_MAX_CSV_ROWS): split the file",
        )
    if header is not None and len(header) != array.shape[1]:
        raise ApiError(
            422,
            "invalid_csv",
            f"the header has {len(header)} names but the rows have {array.shape[1]} values",
        )
    return header, array


def _csv_inputs(array: np.ndarray, model: ServedModel) -> tuple[torch.Tensor, Any]:
    """(x, context or None) from the CSV's columns: the model's dim, then its context columns."""
    extra = model.context_dim or 0
    if array.shape[1] != model.dim + extra:
        context = f" plus {extra} context columns (last)" if extra else ""
        raise ApiError(
            422,
            "wrong_dimension",
            f"the CSV rows have {array.shape[1]} values; model {model.name!r} version "
            f"{model.version} expects {model.dim}{context}",
        )
    x = torch.from_numpy(array[:, : model.dim]).to(model.dtype)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        i, j = (int(v) for v in (~finite).nonzero()[0])
        value = float(array[i, j])
        problem = (
            f"overflows to infinity in {str(model.dtype).removeprefix('torch.')}: rescale the data"
            if math.isfinite(value)
            else "is not a number: every value must be finite"
        )
        raise ApiError(
            422, "value_out_of_range", f"data row {i + 1}, column {j + 1} ({value:g}) {problem}"
        )
    context = context_tensor(array[:, model.dim :], len(array), model) if extra else None
    return x.contiguous(), context


def _csv_lines(inputs: np.ndarray, scored: list[torch.Tensor]) -> bytes:
    """Rows as CSV lines: the inputs as sent, then the scores (Python's shortest round-trip
    spelling, so the file holds exactly the values the JSON route returns)."""
    rows = np.hstack([inputs, *(t.double().numpy()[:, None] for t in scored)]).tolist()
    return "".join(",".join(map(repr, row)) + "\n" for row in rows).encode()


def _csv_header(names: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(names)
    return out.getvalue().encode()


async def _log_prob_csv(
    name: str, version: int | None, options: CsvScoring, engine: InferenceEngine,
    settings: Settings, request: Request,
) -> StreamingResponse:  # fmt: skip
    method, probes, steps, seed = options.method, options.probes, options.steps, options.seed
    header, array = await _csv_rows(request, settings)
    model = await _model(engine, request, name, version)
    x, context = _csv_inputs(array, model)
    columns = header or [f"x{j + 1}" for j in range(array.shape[1])]
    resolved = method
    if method == "auto":
        resolved = "exact" if model.dim <= settings.exact_max_dim else "slq"
    seed = secrets.randbits(63) if seed is None and resolved == "slq" else seed
    extra = ["log_prob", "stderr"] if resolved == "slq" else ["log_prob"]
    step = settings.max_batch

    def score(start: int) -> asyncio.Future:
        stop = start + step
        c = None if context is None else context[start:stop]
        return asyncio.ensure_future(
            engine.log_prob(
                model, x[start:stop], resolved, probes=probes, steps=steps, seed=seed, context=c
            )
        )

    async def body() -> AsyncIterator[bytes]:
        yield _csv_header([*columns, *extra])
        starts = range(0, len(array), step)
        pending = score(0)
        try:
            for start in starts:
                result = await pending
                if start + step < len(array):
                    pending = score(start + step)  # the next batch scores while this one is sent
                scored = [result.log_prob]
                if result.stderr is not None:
                    scored.append(result.stderr)
                # Off the event loop: formatting a batch takes tens of milliseconds.
                yield await run_in_threadpool(_csv_lines, array[start : start + step], scored)
        finally:
            pending.cancel()  # the client went away: no batch left running for nobody

    headers = {
        "Content-Disposition": f'attachment; filename="{model.name}-v{model.version}-scored.csv"',
        "X-Cpflow-Model-Version": str(model.version),
        "X-Cpflow-Method": resolved,
    }
    if seed is not None:
        headers["X-Cpflow-Seed"] = str(seed)
    return StreamingResponse(body(), media_type="text/csv", headers=headers)


_CSV_DOC = (
    "Upload rows as CSV (`Content-Type: text/csv`; numbers, optionally one header row; a "
    "conditional model's context columns last) and get them back as CSV with a `log_prob` "
    "column (and `stderr` for SLQ). The file is checked whole first, so a bad row is a 422 "
    "naming it; then rows are scored CPFLOW_MAX_BATCH at a time and streamed out as each "
    "batch finishes. Limits: CPFLOW_MAX_CSV_ROWS rows and CPFLOW_MAX_UPLOAD_BYTES bytes."
)
_Method = Annotated[
    Literal["exact", "slq", "auto"],
    Query(description="exact, slq (with a stderr column) or auto (exact up to "
          "CPFLOW_EXACT_MAX_DIM dimensions)"),
]  # fmt: skip
_Probes = Annotated[int | None, Query(ge=1, le=1024, description="SLQ probe vectors per row")]
_Steps = Annotated[int | None, Query(ge=1, le=512, description="SLQ Lanczos steps")]
_Seed = Annotated[int | None, Query(ge=0, le=2**63 - 1, description="seed of the SLQ probes")]


@dataclass(frozen=True)
class CsvScoring:
    """The query options of a CSV scoring request."""

    method: Literal["exact", "slq", "auto"]
    probes: int | None
    steps: int | None
    seed: int | None


def _csv_scoring(
    method: _Method = "auto", probes: _Probes = None, steps: _Steps = None, seed: _Seed = None
) -> CsvScoring:
    return CsvScoring(method, probes, steps, seed)


_routes(
    "log_prob.csv", _log_prob_csv, _CSV_DOC, Annotated[CsvScoring, Depends(_csv_scoring)], None,
    response_class=StreamingResponse, responses={**_CSV_OK, **_ERRORS}, openapi_extra=_CSV_BODY,
    dependencies=[],
)  # fmt: skip
