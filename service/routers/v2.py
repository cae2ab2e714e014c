"""Open Inference Protocol (KServe v2) REST routes: health, metadata, readiness and inference.

Inference turns the protocol's tensors and parameters into a typed request of the data plane
(service.inference), the one /v1 uses: the same checks, limits and numbers as /v1, answered as
named typed tensors; no /v1 handler is called. Auth is the /v1 bearer key (the health probes
stay open); errors take the protocol's ``{"error": "..."}`` shape (service.errors).

Mapping (``parameters.operation``): log_prob (input -> log_prob, stderr for slq), sample
(num_samples -> samples, max_residual, converged), transport (input -> output, plus max_residual
and converged for the inverse). Conditional models also take the ``context`` tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, Response

import cpflow
from service import inference as dp
from service.auth import bearer_scheme
from service.deps import DataPlaneDep, EngineDep, SettingsDep
from service.engine import ServedModel
from service.error_codes import ErrorCode
from service.errors import ApiError
from service.routers.health import store_status
from service.routers.models import ModelName, VersionNumber
from service.v2_codec import HEADER_LENGTH, encode_response, parse_request
from service.v2_schemas import (
    CONTEXT,
    INPUT,
    InferParameters,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ProtocolError,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
)

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["open-inference"])
_AUTH = [Security(bearer_scheme)]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ProtocolError, "description": "error"} for s in statuses}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs references inlined (for an openapi_extra body)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline(InferRequest.model_json_schema())}},
        "description": "JSON, or the binary tensor data extension: a JSON header of "
        "Inference-Header-Content-Length bytes followed by the inputs' raw bytes.",
    }
}


# ------------------------------------------------------------------------ server


@router.get("/health/live", response_model=ServerLive, summary="Server liveness (v2)")
async def server_live() -> ServerLive:
    """Answers from the event loop, like /healthz."""
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="Server readiness (v2): the model store is readable",
    responses={503: {"model": ServerReady, "description": "store not readable"}},
)
async def server_ready(engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    """200 with ready true when the store can be listed, 503 with ready false otherwise."""
    ok = (await store_status(engine, settings))["ok"]
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get(
    "",
    response_model=ServerMetadata,
    summary="Server metadata (v2)",
    dependencies=_AUTH,
    responses=_errors(401),
)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(
        name="cpflow", version=cpflow.__version__, extensions=["binary_tensor_data"]
    )


# ------------------------------------------------------------------------ models


def _datatype(model: ServedModel) -> str:
    return "FP64" if model.dtype == torch.float64 else "FP32"


def _data_shape(model: ServedModel) -> list[int]:
    shape = model.image_shape
    return [-1, *shape] if shape is not None else [-1, model.dim]


async def _metadata(plane: dp.DataPlane, name: str, version: int | None) -> ModelMetadata:
    model = await plane.model(name, version)
    versions = await plane.versions(name)
    dt, data = _datatype(model), _data_shape(model)
    inputs = [TensorMetadata(name=INPUT, datatype=dt, shape=data)]
    if model.context_dim is not None:
        inputs.append(TensorMetadata(name=CONTEXT, datatype=dt, shape=[-1, model.context_dim]))
    outputs = [
        TensorMetadata(name="log_prob", datatype=dt, shape=[-1]),
        TensorMetadata(name="stderr", datatype=dt, shape=[-1]),
        TensorMetadata(name="percentile", datatype="FP64", shape=[-1]),
        TensorMetadata(name="outlier", datatype="BOOL", shape=[-1]),
        TensorMetadata(name="samples", datatype=dt, shape=data),
        TensorMetadata(name="output", datatype=dt, shape=data),
        TensorMetadata(name="max_residual", datatype="FP64", shape=[1]),
        TensorMetadata(name="converged", datatype="BOOL", shape=[1]),
    ]
    return ModelMetadata(
        name=model.name,
        versions=[str(v) for v in versions],
        platform="cpflow",
        inputs=inputs,
        outputs=outputs,
    )


def _route(summary: str, pinned: bool, **route: Any) -> dict[str, Any]:
    """The decorator arguments of a model route, for the latest or a pinned version."""
    which = "pinned version" if pinned else "latest version"
    return {"summary": f"{summary} (v2, {which})", "dependencies": _AUTH, **route}


_MODEL_ERRORS = _errors(401, 404, 422, 503)
_METADATA = "Model metadata: input and output tensors"
_READY = "Model readiness: loaded and able to answer"
_LATEST, _PINNED = "/models/{name}", "/models/{name}/versions/{version}"
_META_ROUTE = {"response_model": ModelMetadata, "responses": _MODEL_ERRORS}
_READY_ROUTE = {"response_model": ModelReady, "responses": _MODEL_ERRORS}


@router.get(_LATEST, name="model_metadata", **_route(_METADATA, False, **_META_ROUTE))
async def model_metadata(name: ModelName, plane: DataPlaneDep) -> ModelMetadata:
    return await _metadata(plane, name, None)


@router.get(_PINNED, name="model_metadata_version", **_route(_METADATA, True, **_META_ROUTE))
async def model_metadata_version(
    name: ModelName, version: VersionNumber, plane: DataPlaneDep
) -> ModelMetadata:
    return await _metadata(plane, name, version)


@router.get(f"{_LATEST}/ready", name="model_ready", **_route(_READY, False, **_READY_ROUTE))
async def model_ready(name: ModelName, plane: DataPlaneDep) -> ModelReady:
    return ModelReady(name=(await plane.model(name, None)).name, ready=True)


@router.get(f"{_PINNED}/ready", name="model_ready_version", **_route(_READY, True, **_READY_ROUTE))
async def model_ready_version(
    name: ModelName, version: VersionNumber, plane: DataPlaneDep
) -> ModelReady:
    return ModelReady(name=(await plane.model(name, version)).name, ready=True)


# ------------------------------------------------------------------------ inference


def _bad(message: str) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, message)


def _tensor(
    tensors: dict[str, np.ndarray], name: str, ndims: tuple[int, ...]
) -> np.ndarray | None:
    array = tensors.get(name)
    if array is not None and array.ndim not in ndims:
        wanted = " or ".join(f"{n}-D" for n in ndims)
        raise _bad(f"input {name!r} has shape {list(array.shape)}; send a {wanted} tensor")
    return array


_Typed = dp.LogProbRequest | dp.SampleRequest | dp.TransportRequest


def _typed(
    name: str, version: int | None, p: InferParameters, tensors: dict[str, np.ndarray]
) -> _Typed:
    """The data plane's request for the operation, from the protocol's tensors and parameters."""
    context = _tensor(tensors, CONTEXT, (2,))
    if p.operation == "sample":
        if INPUT in tensors:
            raise _bad(f"operation 'sample' takes no {INPUT!r} tensor; set num_samples")
        if p.num_samples is None:
            raise _bad("operation 'sample' needs parameters.num_samples")
        return dp.SampleRequest(
            name, version, p.num_samples, seed=p.seed, tolerance=p.tolerance,
            max_iterations=p.max_iterations, solver=p.solver, context=context,
        )  # fmt: skip
    inputs = _tensor(tensors, INPUT, (2, 4))
    if inputs is None:
        raise _bad(f"operation {p.operation!r} needs the {INPUT!r} tensor")
    if p.operation == "log_prob":
        return dp.LogProbRequest(
            name, version, inputs, p.method, probes=p.probes, steps=p.steps, seed=p.seed,
            context=context, calibration=dp.calibration_of(p.percentile, p.outlier_level),
        )  # fmt: skip
    return dp.TransportRequest(
        name, version, inputs, p.direction, tolerance=p.tolerance,
        max_iterations=p.max_iterations, solver=p.solver, context=context,
    )  # fmt: skip


def _array(t: torch.Tensor, image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """A result tensor as an array, non-finite values (overflow) as NaN, images as [n, C, H, W]."""
    array = t.numpy()
    if not bool(np.isfinite(array).all()):
        array = np.where(np.isfinite(array), array, np.nan).astype(array.dtype)
    return array if image_shape is None else array.reshape(len(array), *image_shape)


def _solve_outputs(residual: float | None, converged: bool | None) -> list[tuple[str, np.ndarray]]:
    return [
        ("max_residual", np.array([np.nan if residual is None else residual], dtype=np.float64)),
        ("converged", np.array([bool(converged)])),
    ]


_Outputs = tuple[list[tuple[str, np.ndarray]], dict[str, Any]]


def _outputs(result: dp.LogProbResult | dp.SampleResult | dp.TransportResult) -> _Outputs:
    """(named output arrays, response parameters) of a data plane result."""
    if isinstance(result, dp.LogProbResult):
        outputs = [("log_prob", _array(result.log_prob))]
        if result.stderr is not None:
            outputs.append(("stderr", _array(result.stderr)))
        params: dict[str, Any] = {"method": result.method}
        if result.scores is not None:
            outputs.append(("percentile", result.scores.percentile))
            if result.scores.outlier is not None:
                outputs.append(("outlier", result.scores.outlier))
                params["outlier_level"] = result.scores.outlier_level
        return outputs, params if result.seed is None else {**params, "seed": result.seed}
    if isinstance(result, dp.SampleResult):
        samples = ("samples", _array(result.samples, result.image_shape))
        return [samples, *_solve_outputs(result.max_residual, result.converged)], {
            "seed": result.seed
        }
    outputs = [("output", _array(result.outputs, result.image_shape))]
    if result.direction == "inverse":
        outputs += _solve_outputs(result.max_residual, result.converged)
    return outputs, {"direction": result.direction}


async def _run(
    plane: dp.DataPlane, request: _Typed
) -> dp.LogProbResult | dp.SampleResult | dp.TransportResult:
    if isinstance(request, dp.LogProbRequest):
        return await plane.log_prob(request)
    if isinstance(request, dp.SampleRequest):
        return await plane.sample(request)
    return await plane.transport(request)


def _selected(
    request: InferRequest, outputs: list[tuple[str, np.ndarray]]
) -> tuple[list[tuple[str, np.ndarray]], set[str]]:
    """The outputs the caller asked for (all by default) and those to send as binary."""
    everything = request.parameters.binary_data_output is True
    if request.outputs is None:
        return outputs, {name for name, _ in outputs} if everything else set()
    produced = dict(outputs)
    chosen: list[tuple[str, np.ndarray]] = []
    binary: set[str] = set()
    for wanted in request.outputs:
        if wanted.name not in produced:
            raise _bad(
                f"output {wanted.name!r} is not produced by operation "
                f"{request.parameters.operation!r} here; it returns {sorted(produced)}"
            )
        chosen.append((wanted.name, produced[wanted.name]))
        flag = wanted.parameters.binary_data if wanted.parameters else None
        if flag or (flag is None and everything):
            binary.add(wanted.name)
    return chosen, binary


async def _infer(
    plane: dp.DataPlane, name: str, version: int | None, request: Request
) -> Response:
    decoded = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    typed = _typed(name, version, decoded.request.parameters, decoded.tensors)
    result = await _run(plane, typed)
    outputs, parameters = _outputs(result)
    chosen, binary = _selected(decoded.request, outputs)
    head = {"model_name": result.model, "model_version": str(result.version),
            "parameters": parameters}  # fmt: skip
    if decoded.request.id is not None:
        head["id"] = decoded.request.id
    return encode_response(head, chosen, binary)


_INFER = "Inference"
_INFER_DOC = (
    "Open Inference Protocol inference. `parameters.operation` selects log_prob (default; "
    "`method` exact|slq|auto, `probes`, `steps`, `seed`, `percentile`, `outlier_level`), sample (`num_samples`, `seed`, "
    "`tolerance`, `max_iterations`, `solver`) or transport (`direction` forward|inverse and the "
    "solver options). Inputs: `input` ([n, d] FP32/FP64, or [n, C, H, W] for image models) and, "
    "for conditional models, `context` ([n, k] or [1, k]). Outputs: log_prob and stderr, "
    "percentile and outlier, "
    "samples, output, max_residual, converged, equal to the /v1 answers."
)
_INFER_RESPONSES = {
    200: {
        "model": InferResponse,
        "content": {"application/octet-stream": {}},
        "description": "Output tensors (JSON, or a JSON header and binary data).",
    },
    **_errors(400, 401, 404, 413, 422, 503),
}
_INFER_ROUTE = {
    "description": _INFER_DOC, "responses": _INFER_RESPONSES, "openapi_extra": _INFER_BODY,
}  # fmt: skip


@router.post(f"{_LATEST}/infer", name="infer", **_route(_INFER, False, **_INFER_ROUTE))
async def infer(name: ModelName, request: Request, plane: DataPlaneDep) -> Response:
    return await _infer(plane, name, None, request)


@router.post(f"{_PINNED}/infer", name="infer_version", **_route(_INFER, True, **_INFER_ROUTE))
async def infer_version(
    name: ModelName, version: VersionNumber, request: Request, plane: DataPlaneDep
) -> Response:
    return await _infer(plane, name, version, request)
