"""Bodies of the Open Inference Protocol (KServe v2) REST routes under /v2 (pydantic).

The shapes are the protocol's (server and model metadata, readiness, inference requests and
responses with named typed tensors, ``{"error": "..."}``). cpflow's own choices live in
:class:`InferParameters`: which operation an inference runs (log_prob, sample, transport) and
its options, with the same ranges as the /v1 bodies (service.schemas), so both APIs accept the
same requests. Tensor names are in :data:`INPUT`, :data:`CONTEXT` and :data:`OUTPUTS`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from service.schemas import Number, Seed, Solver

__all__ = [
    "CONTEXT",
    "INPUT",
    "OUTPUTS",
    "InferParameters",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "ModelReady",
    "ProtocolError",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerLive",
    "ServerMetadata",
    "ServerReady",
    "TensorMetadata",
]

INPUT = "input"
"""The data tensor: [n, d] rows, or [n, C, H, W] for an image model."""
CONTEXT = "context"
"""A conditional model's context tensor: [n, k], or [1, k] for one context shared by all rows."""
OutputName = Literal["log_prob", "stderr", "samples", "output", "max_residual", "converged"]
OUTPUTS: tuple[str, ...] = get_args(OutputName)
"""Every output tensor name (which ones an inference returns depends on its operation)."""

FloatType = Literal["FP32", "FP64"]


class ServerLive(BaseModel):
    """GET /v2/health/live."""

    live: bool


class ServerReady(BaseModel):
    """GET /v2/health/ready: the model store is readable."""

    ready: bool


class ServerMetadata(BaseModel):
    """GET /v2."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    """One input or output tensor of a model; -1 marks the batch dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """GET /v2/models/{name}[/versions/{version}]."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "moons", "versions": ["1", "2"], "platform": "cpflow",
                 "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
                 "outputs": [{"name": "log_prob", "datatype": "FP32", "shape": [-1]}]},
            ]
        }
    )  # fmt: skip

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    """GET /v2/models/{name}[/versions/{version}]/ready."""

    name: str
    ready: bool


class ProtocolError(BaseModel):
    """Every error answer under /v2."""

    error: str = Field(examples=["model 'mons' not found"])


class InferParameters(BaseModel):
    """The request's ``parameters``: which operation to run and its options (the /v1 bodies'
    fields and ranges). tritonclient's own request parameters are accepted and ignored."""

    model_config = ConfigDict(extra="forbid")

    operation: Literal["log_prob", "sample", "transport"] = Field(
        default="log_prob",
        description="log_prob: log p(x) of each row of `input`; sample: draw `num_samples` "
        "samples; transport: map `input` forward (x -> z) or inverse (z -> x).",
    )
    method: Literal["exact", "slq", "auto"] = Field(
        default="auto", description="log_prob: exact, slq (with a stderr output) or auto."
    )
    probes: StrictInt | None = Field(
        default=None, ge=1, le=1024, description="log_prob slq: random probe vectors per row."
    )
    steps: StrictInt | None = Field(
        default=None, ge=1, le=512, description="log_prob slq: Lanczos steps."
    )
    seed: Seed | None = Field(
        default=None, description="SLQ probes or sampling seed; same seed, same answer."
    )
    num_samples: StrictInt | None = Field(
        default=None, ge=1, description="sample: how many (at most CPFLOW_MAX_SAMPLES)."
    )
    direction: Literal["forward", "inverse"] = Field(default="forward", description="transport")
    tolerance: Number | None = Field(
        default=None, gt=0, le=1.0, description="sample, inverse transport: residual to reach."
    )
    max_iterations: StrictInt | None = Field(
        default=None, ge=1, le=100_000, description="sample, inverse transport: per block."
    )
    solver: Solver = None
    percentile: StrictBool | None = Field(
        default=None,
        description="log_prob: also output `percentile`, each row's rank (0..1) among the "
        "version's held-out scores.",
    )
    outlier_level: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] | None = Field(
        default=None,
        description="log_prob: also output `outlier` (BOOL), percentile < this level.",
    )
    binary_data_output: StrictBool | None = Field(
        default=None, description="Return every output as binary data (the binary extension)."
    )
    priority: StrictInt | None = Field(default=None, description="Accepted and ignored.")
    timeout: StrictInt | None = Field(default=None, description="Accepted and ignored.")


class TensorParameters(BaseModel):
    """A tensor's ``parameters``: the binary extension's sizes and flags."""

    model_config = ConfigDict(extra="forbid")

    binary_data_size: StrictInt | None = Field(
        default=None, ge=0, description="Bytes of this input appended after the JSON header."
    )
    binary_data: StrictBool | None = Field(
        default=None, description="Outputs: return this one as binary data."
    )


class RequestInput(BaseModel):
    """One named input tensor; ``data`` in row-major order (flat or nested), or binary."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["input", "context"] = Field(
        description="input: the data rows or images; context: a conditional model's context."
    )
    shape: list[Annotated[StrictInt, Field(ge=0, le=2**31)]] = Field(
        min_length=1, max_length=4, examples=[[2, 2]]
    )
    datatype: FloatType
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(default=None, examples=[[0.5, -1.2, 1.0, 0.3]])


class RequestOutput(BaseModel):
    """An output the caller wants (default: all of the operation's outputs)."""

    model_config = ConfigDict(extra="forbid")

    name: OutputName
    parameters: TensorParameters | None = None


class InferRequest(BaseModel):
    """POST /v2/models/{name}[/versions/{version}]/infer, JSON part."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32",
                             "data": [0.5, -1.2, 1.0, 0.3]}],
                 "parameters": {"operation": "log_prob", "method": "exact"}},
                {"inputs": [], "parameters": {"operation": "sample", "num_samples": 4,
                                              "seed": 0}},
            ]
        },
    )  # fmt: skip

    id: str | None = Field(default=None, max_length=256)
    parameters: InferParameters = Field(default_factory=InferParameters)
    inputs: list[RequestInput] = Field(max_length=2)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=len(OUTPUTS))


class ResponseOutput(BaseModel):
    """One named output tensor; ``data`` flat in row-major order unless sent as binary."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """The answer to an inference request."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]
