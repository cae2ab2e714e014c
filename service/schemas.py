"""Request and response bodies of the v1 API (pydantic), with the examples /docs shows.

Request models forbid unknown fields so a typo ("num_sample") is a 422, not a silently
ignored option. Numbers are strict: strings, booleans, nested lists, NaN and Infinity are
rejected by validation; limits that depend on settings or on the model (row count,
dimension, float32 range) are checked by the routes, which know them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from service.json_codec import numeric_inputs

__all__ = [
    "HealthResponse",
    "InputRows",
    "LogProbRequest",
    "LogProbResponse",
    "ModelDetail",
    "ModelSummary",
    "ModelsResponse",
    "OutlierLevel",
    "ReadyResponse",
    "SampleRequest",
    "SampleResponse",
    "SlqOptions",
    "TransportRequest",
    "TransportResponse",
    "VersionSummary",
]

# StrictFloat accepts JSON integers and floats but not strings or booleans; allow_inf_nan=False
# keeps NaN/Infinity out (the JSON parser accepts them as an extension).
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]
# An image item is a C-long list of H x W lists (image models only: [n, C, H, W]). Inputs the
# body parser already made into one array of finite numbers are taken whole (numeric_inputs).
_ListRows = Annotated[list[list[Number | list[list[Number]]]], Field(min_length=1)]
# Or rows as objects keyed by the model's column names (GET /v1/models/{name}: columns).
_KEYED_ROWS = TypeAdapter(Annotated[list[dict[str, Number]], Field(min_length=1)])


def _keyed_or_lists(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Rows whose first is an object are all objects keyed by name; else lists (errors keep
    their plain locations, inputs.<row>.<column>)."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _KEYED_ROWS.validate_python(value)
    return handler(value)


InputRows = Annotated[
    _ListRows,
    WrapValidator(_keyed_or_lists),
    Field(
        description="Rows of raw (unstandardised) data, each a list of `dim` finite numbers in "
        "the model's column order, or each an object keyed by the model's column names (its "
        '`columns`, e.g. {"sepal_length": 5.1, ...}; a missing or unknown name is a 422); '
        "image models (with an `input_shape` (C, H, W)) also take [n, C, H, W] nested lists.",
    ),
    WrapValidator(numeric_inputs),
]
# Outputs follow the caller's layout: rows, or [n, C, H, W] for images.
OutputRows = list[list[float | None | list[list[float | None]]]]
# Context rows of a conditional model p(x | c). NaN/Infinity pass validation here on purpose:
# the route reports them as 422 context_not_finite (cpflow.check_context).
ContextRows = Annotated[
    list[list[StrictFloat]] | None,
    Field(
        description="Conditional models only (those with a `context_dim`): the context c of "
        "p(x | c), either one row of `context_dim` finite numbers per input row (aligned with "
        "`inputs`) or a single row broadcast to every input. Sending it to a plain model is a "
        "422 context_not_accepted; omitting it for a conditional model is a 422 "
        "context_required.",
    ),
]
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
OutlierLevel = Annotated[
    StrictFloat | None,
    Field(
        gt=0.0,
        lt=1.0,
        description="Flag rows whose percentile among the held-out scores is under this "
        "fraction (0.01: the 1% least likely); implies percentile.",
    ),
]
Solver = Annotated[
    Literal["lbfgs", "newton"] | None,
    Field(
        description="Inversion solver: lbfgs (batched L-BFGS, the paper's; the default unless "
        "the model was configured otherwise) or newton (damped Newton with the analytic "
        "Hessian; often fewer iterations in low dimension).",
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlqOptions(_Request):
    """Stochastic Lanczos quadrature settings (defaults come from the model's config)."""

    probes: StrictInt | None = Field(
        default=None, ge=1, le=1024, description="Random probe vectors per row."
    )
    steps: StrictInt | None = Field(default=None, ge=1, le=512, description="Lanczos steps.")


class LogProbRequest(_Request):
    """Score rows under the model's density."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": [[0.5, -1.2], [1.0, 0.3]], "method": "exact"},
                {"inputs": [[0.5, -1.2]], "method": "slq", "slq": {"probes": 8, "steps": 20},
                 "seed": 7},
            ]
        },
    )  # fmt: skip

    inputs: InputRows
    method: Literal["exact", "slq", "auto"] = Field(
        default="auto",
        description="exact: Cholesky log-det of each Hessian; slq: stochastic Lanczos estimate "
        "with a standard error per row; auto: exact up to CPFLOW_EXACT_MAX_DIM dimensions.",
    )
    slq: SlqOptions | None = Field(default=None, description="SLQ settings (method slq/auto).")
    seed: Seed | None = Field(
        default=None, description="Seed of the SLQ probes; same seed, same estimate."
    )
    context: ContextRows = None
    percentile: StrictBool = Field(
        default=False,
        description="Also return each row's percentile among the version's held-out scores "
        "(422 calibration_unavailable for a version published without them).",
    )
    outlier_level: OutlierLevel = None


class LogProbResponse(BaseModel):
    """log p(x) per row, in the units of the data sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "moons", "version": 3, "method": "exact",
                 "log_prob": [-1.93, -2.41], "stderr": None},
            ]
        }
    )  # fmt: skip

    model: str
    version: int
    method: Literal["exact", "slq"] = Field(description="The method actually used.")
    log_prob: list[float | None] = Field(
        description="Natural-log density per row; null where it overflows (extreme inputs)."
    )
    stderr: list[float | None] | None = Field(
        description="Standard error of each SLQ estimate; null for exact."
    )
    seed: int | None = Field(default=None, description="Seed the SLQ probes used.")
    percentile: list[float | None] | None = Field(
        default=None,
        description="With percentile or outlier_level: the fraction (0..1) of the version's "
        "held-out rows scoring below each row (uniform for rows like the training data; 0 "
        "below every held-out row, and where log_prob overflows to null).",
    )
    outlier: list[bool] | None = Field(
        default=None, description="With outlier_level: percentile < outlier_level, per row."
    )
    outlier_level: float | None = Field(default=None, description="The level asked for.")


class SampleRequest(_Request):
    """Draw samples by inverting the flow on standard-normal draws."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"num_samples": 16, "seed": 0, "tolerance": 1e-5}]},
    )

    num_samples: StrictInt = Field(
        ge=1, description="How many samples (at most CPFLOW_MAX_SAMPLES)."
    )
    seed: Seed | None = Field(default=None, description="Same seed, same samples.")
    tolerance: Number | None = Field(
        default=None, gt=0, le=1.0, description="Stop when max|f(x) - z| is below this."
    )
    max_iterations: StrictInt | None = Field(
        default=None, ge=1, le=100_000, description="Most solver iterations per block."
    )
    solver: Solver = None
    layout: Literal["rows", "image"] | None = Field(
        default=None,
        description="rows: [n, dim]; image: [n, C, H, W] (image models only). Default: image "
        "for image models, rows otherwise.",
    )
    context: list[list[StrictFloat]] | None = Field(
        default=None,
        description="Conditional models only (those with a `context_dim`): the context c of "
        "p(x | c) to sample at. One row of `context_dim` numbers: all `num_samples` samples "
        "use it. Several rows: one sample per row, and `num_samples` must equal the number of "
        "rows (else 422 context_rows). Required for a conditional model (422 "
        "context_required); a plain model refuses it (422 context_not_accepted).",
    )


class SampleResponse(BaseModel):
    """Samples in the data's units, with how exactly they invert the flow."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "moons", "version": 3, "samples": [[0.41, -0.22], [1.73, 0.05]],
                 "max_residual": 3.1e-6, "converged": True, "seed": 0},
            ]
        }
    )  # fmt: skip

    model: str
    version: int
    columns: list[str] | None = Field(
        default=None, description="The names of the samples' columns (null for images)."
    )
    samples: OutputRows
    max_residual: float | None = Field(description="Largest max|f(x) - z| over the samples.")
    converged: bool = Field(description="Whether every sample reached the tolerance.")
    seed: int = Field(description="The seed used (random when none was sent).")


class TransportRequest(_Request):
    """Map rows through the flow: forward x -> z (data to base), inverse z -> x."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": [[0.5, -1.2]], "direction": "forward"},
                {"inputs": [[0.1, 0.7]], "direction": "inverse", "tolerance": 1e-6},
            ]
        },
    )

    inputs: InputRows
    direction: Literal["forward", "inverse"] = Field(default="forward")
    tolerance: Number | None = Field(
        default=None, gt=0, le=1.0, description="Inverse only: stop below this residual."
    )
    max_iterations: StrictInt | None = Field(
        default=None, ge=1, le=100_000, description="Inverse only: most iterations per block."
    )
    solver: Solver = None
    context: ContextRows = None


class TransportResponse(BaseModel):
    """Mapped rows; the inverse also reports how exactly it solved."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "moons", "version": 3, "direction": "forward",
                 "outputs": [[0.12, -0.93]], "max_residual": None, "converged": None},
            ]
        }
    )  # fmt: skip

    model: str
    version: int
    direction: Literal["forward", "inverse"]
    columns: list[str] | None = Field(
        default=None,
        description="The names of the outputs' columns: the model's for inverse (data x), "
        "z1..zd for forward (base space); null for images.",
    )
    outputs: OutputRows = Field(description="In the layout of the inputs (rows or images).")
    max_residual: float | None = Field(description="Inverse: largest max|f(x) - z|; else null.")
    converged: bool | None = Field(default=None, description="Inverse: all rows converged.")


class VersionSummary(BaseModel):
    """One stored version."""

    version: int
    created_at: str | None = None
    metrics: dict[str, Any] | None = None
    plots: dict[str, str] = Field(default_factory=dict, description="Plot file name -> URL.")


class ModelSummary(BaseModel):
    """A model's latest version, as listed by GET /v1/models."""

    name: str
    version: int | None
    dim: int | None = None
    created_at: str | None = None
    metrics: dict[str, Any] | None = None
    state: str = Field(
        default="ready",
        description="ready, or broken (its manifest is missing or damaged: see error)",
    )
    error: str | None = None
    tenant: str | None = Field(
        default=None, description="The tenant whose model this is; null: shared by every tenant."
    )


class ModelsResponse(BaseModel):
    """Every model in the store."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"models": [{"name": "moons", "version": 3, "dim": 2,
                             "created_at": "2026-11-28T12:00:00Z",
                             "metrics": {"test_nll": 1.52}}], "count": 1},
            ]
        }
    )  # fmt: skip

    models: list[ModelSummary]
    count: int


class ModelDetail(BaseModel):
    """Manifest summary of one version plus the list of versions."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "moons", "version": 3, "latest_version": 3, "versions": [1, 2, 3],
                 "dim": 2, "created_at": "2026-11-28T12:00:00Z", "library_version": "0.1.0",
                 "flow_config": {"dim": 2, "blocks": 5, "hidden": 32},
                 "training": {"dataset": "two_moons", "metrics": {"test_nll": 1.52}},
                 "metrics": {"test_nll": 1.52},
                 "plots": {"density.png": "/v1/models/moons/versions/3/plots/density.png"},
                 "onnx": None, "loaded": True},
            ]
        }
    )  # fmt: skip

    name: str
    version: int
    latest_version: int
    versions: list[int]
    dim: int
    columns: list[str] = Field(
        default_factory=list,
        description="The names of the data columns (the training table's header, else "
        "x1..xd): the order of each input row, and the keys of rows sent as objects.",
    )
    input_shape: list[int] | None = Field(
        default=None, description="(C, H, W) of an image model; null for a model over rows."
    )
    context_dim: int | None = Field(
        default=None,
        description="Values per context row of a conditional model p(x | c) (requests must "
        "send `context`); null for an unconditional model.",
    )
    created_at: str | None = None
    library_version: str | None = None
    flow_config: dict[str, Any]
    standardization: Any = None
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    plots: dict[str, str] = Field(default_factory=dict, description="Plot file name -> URL.")
    onnx: Any = None
    tenant: str | None = Field(
        default=None, description="The tenant whose model this is; null: shared by every tenant."
    )
    runtime: dict[str, str] = Field(
        default_factory=dict,
        description="Operation -> runtime answering it (onnx or torch): the loaded version's, "
        "else what loading it would give under CPFLOW_RUNTIME.",
    )
    loaded: bool = Field(description="Whether this version is in the server's memory now.")


class HealthResponse(BaseModel):
    """Liveness."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """Readiness: the store is readable; Redis is reported, not required."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ready", "device": "cpu",
                 "store": {"ok": True, "path": "/data/store", "models": 2, "error": None},
                 "redis": {"ok": False, "error": "Connection refused"}, "loaded_models": 1},
            ]
        }
    )  # fmt: skip

    status: Literal["ready", "unavailable"]
    device: str
    store: dict[str, Any]
    redis: dict[str, Any]
    loaded_models: int
    stalled_loads: list[str] = Field(
        default_factory=list,
        description="'name@version' of loads that passed CPFLOW_LOAD_TIMEOUT_S and have not "
        "loaded since (a stalled store read): the replica answers 503 until one does",
    )
    replicas: dict[str, Any] | None = Field(
        default=None,
        description="This replica's view compared with the other live replicas' "
        "(CPFLOW_REPLICA_VIEW_S; null when off): ok, replicas (how many others), "
        "disagreements (versions served with different weights: model, version, "
        "weights_sha256 here, replicas: {id: sha256}), error. Reported, not a reason for 503.",
    )
