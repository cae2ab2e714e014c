"""Open Inference Protocol (KServe v2) REST routes: health, metadata, readiness and inference.

Inference builds the /v1 request body from the protocol's tensors and parameters and calls the
/v1 handler (``service.routers.inference.OPERATIONS``): the same engine, checks, limits and
numbers as /v1, answered as named typed tensors. Auth is the /v1 bearer key (the health probes
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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

import cpflow
from service.auth import bearer_scheme
from service.deps import EngineDep, SettingsDep
from service.engine import InferenceEngine, ServedModel
from service.errors import ApiError
from service.routers.health import store_status
from service.routers.inference import OPERATIONS
from service.routers.models import ModelName, VersionNumber
from service.settings import Settings
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


async def _served(
    engine: InferenceEngine, request: Request, name: str, version: int | None
) -> ServedModel:
    model = await engine.get(name, version)
    request.state.metric_model = model.name
    return model


def _datatype(model: ServedModel) -> str:
    return "FP64" if model.dtype == torch.float64 else "FP32"


def _data_shape(model: ServedModel) -> list[int]:
    shape = model.image_shape
    return [-1, *shape] if shape is not None else [-1, model.dim]


async def _metadata(
    name: str, version: int | None, request: Request, engine: InferenceEngine, _: Settings
) -> ModelMetadata:
    model = await _served(engine, request, name, version)
    versions = await engine.io(engine.store.versions, name)
    dt, data = _datatype(model), _data_shape(model)
    inputs = [TensorMetadata(name=INPUT, datatype=dt, shape=data)]
    if model.context_dim is not None:
        inputs.append(TensorMetadata(name=CONTEXT, datatype=dt, shape=[-1, model.context_dim]))
    outputs = [
        TensorMetadata(name="log_prob", datatype=dt, shape=[-1]),
        TensorMetadata(name="stderr", datatype=dt, shape=[-1]),
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


async def _ready(
    name: str, version: int | None, request: Request, engine: InferenceEngine, _: Settings
) -> ModelReady:
    model = await _served(engine, request, name, version)
    return ModelReady(name=model.name, ready=True)


def _latest_and_pinned(
    suffix: str, method: str, route_name: str, handler: Any, summary: str, **route: Any
) -> None:
    """Register ``/models/{name}<suffix>`` (the latest version) and
    ``/models/{name}/versions/{version}<suffix>`` (a pinned one), both served by ``handler``."""

    async def latest(name: ModelName, request: Request, engine: EngineDep, settings: SettingsDep):
        return await handler(name, None, request, engine, settings)

    async def pinned(
        name: ModelName, version: VersionNumber, request: Request, engine: EngineDep,
        settings: SettingsDep,
    ):  # fmt: skip
        return await handler(name, version, request, engine, settings)

    for path, endpoint, which, tail in (
        (f"/models/{{name}}{suffix}", latest, "latest version", ""),
        (f"/models/{{name}}/versions/{{version}}{suffix}", pinned, "pinned version", "_version"),
    ):
        router.add_api_route(
            path, endpoint, methods=[method], name=route_name + tail,
            summary=f"{summary} (v2, {which})", dependencies=_AUTH, **route,
        )  # fmt: skip


_MODEL_ERRORS = _errors(401, 404, 422, 503)
_latest_and_pinned(
    "", "GET", "model_metadata", _metadata, "Model metadata: input and output tensors",
    response_model=ModelMetadata, responses=_MODEL_ERRORS,
)  # fmt: skip
_latest_and_pinned(
    "/ready", "GET", "model_ready", _ready, "Model readiness: loaded and able to answer",
    response_model=ModelReady, responses=_MODEL_ERRORS,
)  # fmt: skip


# ------------------------------------------------------------------------ inference


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _rows(tensors: dict[str, np.ndarray], name: str, ndims: tuple[int, ...]) -> list[Any] | None:
    array = tensors.get(name)
    if array is None:
        return None
    if array.ndim not in ndims:
        wanted = " or ".join(f"{n}-D" for n in ndims)
        raise _bad(f"input {name!r} has shape {list(array.shape)}; send a {wanted} tensor")
    return array.tolist()


def _v1_fields(p: InferParameters, tensors: dict[str, np.ndarray], model: ServedModel) -> dict:
    """The /v1 body of the operation, from the protocol's tensors and parameters."""
    context = _rows(tensors, CONTEXT, (2,))
    if p.operation == "sample":
        if INPUT in tensors:
            raise _bad(f"operation 'sample' takes no {INPUT!r} tensor; set num_samples")
        if p.num_samples is None:
            raise _bad("operation 'sample' needs parameters.num_samples")
        layout = "image" if model.image_shape is not None else "rows"
        return {"num_samples": p.num_samples, "seed": p.seed, "tolerance": p.tolerance,
                "max_iterations": p.max_iterations, "solver": p.solver, "layout": layout,
                "context": context}  # fmt: skip
    inputs = _rows(tensors, INPUT, (2, 4))
    if inputs is None:
        raise _bad(f"operation {p.operation!r} needs the {INPUT!r} tensor")
    if p.operation == "log_prob":
        slq = {k: v for k, v in {"probes": p.probes, "steps": p.steps}.items() if v is not None}
        return {"inputs": inputs, "method": p.method, "slq": slq or None, "seed": p.seed,
                "context": context}  # fmt: skip
    return {"inputs": inputs, "direction": p.direction, "tolerance": p.tolerance,
            "max_iterations": p.max_iterations, "solver": p.solver, "context": context}  # fmt: skip


def _array(values: Any, dtype: np.dtype) -> np.ndarray:
    """A /v1 answer's nested lists (null where non-finite) as an array."""
    return np.array(values, dtype=np.float64).astype(dtype)


def _solve_outputs(answer: Any) -> list[tuple[str, np.ndarray]]:
    residual = np.nan if answer.max_residual is None else answer.max_residual
    return [
        ("max_residual", np.array([residual], dtype=np.float64)),
        ("converged", np.array([bool(answer.converged)])),
    ]


def _outputs(op: str, answer: Any, dtype: np.dtype) -> tuple[list, dict[str, Any]]:
    """(named output arrays, response parameters) of a /v1 answer."""
    if op == "log_prob":
        outputs = [("log_prob", _array(answer.log_prob, dtype))]
        if answer.stderr is not None:
            outputs.append(("stderr", _array(answer.stderr, dtype)))
        params = {"method": answer.method}
        return outputs, params if answer.seed is None else {**params, "seed": answer.seed}
    if op == "sample":
        samples = ("samples", _array(answer.samples, dtype))
        return [samples, *_solve_outputs(answer)], {"seed": answer.seed}
    outputs = [("output", _array(answer.outputs, dtype))]
    if answer.direction == "inverse":
        outputs += _solve_outputs(answer)
    return outputs, {"direction": answer.direction}


def _selected(
    request: InferRequest, outputs: list[tuple[str, np.ndarray]]
) -> tuple[list[tuple[str, np.ndarray]], set[str]]:
    """The outputs the caller asked for (all by default) and those to send as binary."""
    everything = request.parameters.binary_data_output is True
    if request.outputs is None:
        return outputs, {name for name, _ in outputs} if everything else set()
    produced = dict(outputs)
    chosen, binary = [], set()
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
    name: str,
    version: int | None,
    request: Request,
    engine: InferenceEngine,
    settings: Settings,
) -> Response:
    decoded = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    params = decoded.request.parameters
    model = await _served(engine, request, name, version)
    handler, body_model = OPERATIONS[params.operation]
    try:
        body = body_model.model_validate(_v1_fields(params, decoded.tensors, model))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    # pinned to the version resolved above, so metadata and answer describe one version
    answer = await handler(name, model.version, body, engine, settings, request)
    dtype = np.dtype(np.float64 if model.dtype == torch.float64 else np.float32)
    outputs, parameters = _outputs(params.operation, answer, dtype)
    chosen, binary = _selected(decoded.request, outputs)
    head = {"model_name": answer.model, "model_version": str(answer.version),
            "parameters": parameters}  # fmt: skip
    if decoded.request.id is not None:
        head["id"] = decoded.request.id
    return encode_response(head, chosen, binary)


_INFER_DOC = (
    "Open Inference Protocol inference. `parameters.operation` selects log_prob (default; "
    "`method` exact|slq|auto, `probes`, `steps`, `seed`), sample (`num_samples`, `seed`, "
    "`tolerance`, `max_iterations`, `solver`) or transport (`direction` forward|inverse and the "
    "solver options). Inputs: `input` ([n, d] FP32/FP64, or [n, C, H, W] for image models) and, "
    "for conditional models, `context` ([n, k] or [1, k]). Outputs: log_prob and stderr, "
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


_latest_and_pinned(
    "/infer", "POST", "infer", _infer, "Inference", description=_INFER_DOC,
    responses=_INFER_RESPONSES, openapi_extra=_INFER_BODY,
)  # fmt: skip
