"""Request and response schemas of the training-job and data-set routes.

A job spec is validated whole at submit time (ranges here, data set and dimension in the
router), so a bad spec is a 422 at once, never a job that fails later. The names of the
``training`` fields are those of ``training.config.TrainConfig``; the ``model`` fields are
those of ``cpflow.FlowConfig`` (without ``dim``, which comes from the data set).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from model_store.names import did_you_mean

__all__ = [
    "BUILTIN_DATASETS",
    "CONDITIONAL_BUILTIN_DATASETS",
    "JOB_PRESETS",
    "BuiltinDataset",
    "DatasetPublic",
    "JobAccepted",
    "JobProgress",
    "JobPublic",
    "JobResult",
    "JobSpec",
    "ModelSpec",
    "TrainingSpec",
    "UploadedDataset",
]

BUILTIN_DATASETS: dict[str, int] = {
    "eight_gaussians": 2,
    "two_moons": 2,
    "rings": 2,
    "pinwheel": 2,
    "two_spirals": 2,
    "checkerboard": 2,
    "swiss_roll": 2,
    "sklearn:iris": 4,
    "sklearn:wine": 13,
    "sklearn:breast_cancer": 30,
    "sklearn:diabetes": 10,
    "sklearn:digits": 64,
}
"""Built-in data sets a job may name, with their dimension (checked against training.datasets
by the tests, since the API does not import the training package)."""

CONDITIONAL_BUILTIN_DATASETS: dict[str, tuple[int, int]] = {"mog1d": (1, 1), "banana": (2, 1)}
"""Built-in conditional data sets (training.conditional's toys), with their data dimension and
context dimension: a job on one of these trains a conditional model p(x | c)."""

_Strict = ConfigDict(extra="forbid")


_BUILTIN_NAMES: list[JsonValue] = [
    *sorted([*BUILTIN_DATASETS, *CONDITIONAL_BUILTIN_DATASETS])
]  # the JSON schema's enum of data set names


# Named settings a job may ask for (training/presets.py; the service does not import training,
# tests/jobs/test_builtin_names.py keeps the two in step): those that fit any data set. auto:
# chosen from the data (training/recipes.py).
JobPreset = Literal["auto", "demo", "gaussian_ot", "small_tabular", "toy"]
JOB_PRESETS: tuple[str, ...] = get_args(JobPreset)


class BuiltinDataset(BaseModel):
    """Train on a data set that ships with cpflow."""

    model_config = _Strict
    builtin: str = Field(
        examples=["two_moons"],
        description="a data set name; mog1d and banana are conditional (a model p(x | c))",
        json_schema_extra={"enum": _BUILTIN_NAMES},
    )
    num_samples: int | None = Field(
        default=None,
        ge=30,
        le=5_000_000,
        description="rows to draw (toy sets) or keep; default: all (20000 for mog1d, banana)",
    )
    seed: int = Field(
        default=0, ge=0, description="seed of sampling and of the train/val/test split"
    )

    @field_validator("builtin")
    @classmethod
    def _known(cls, value: str) -> str:
        known = sorted([*BUILTIN_DATASETS, *CONDITIONAL_BUILTIN_DATASETS])
        if value not in known:
            raise ValueError(
                f"unknown built-in data set {value!r}{did_you_mean(value, known)}; choose one "
                "of " + ", ".join(known)
            )
        return value


class UploadedDataset(BaseModel):
    """Train on a data set uploaded with POST /v1/datasets."""

    model_config = _Strict
    id: str = Field(
        min_length=1,
        max_length=200,
        description="id returned by POST /v1/datasets, or a data set's name (the latest "
        "upload under that name)",
    )
    context_columns: list[int] | None = Field(
        default=None,
        max_length=4096,
        examples=[[2]],
        description="0-based indices of the columns that are the context c: the job then "
        "trains a conditional model p(x | c) on the other columns (checked against the data set "
        "at submit time: in range, no repeats, at least one data column left)",
    )
    val_fraction: float | None = Field(
        default=None,
        gt=0.0,
        lt=0.9,
        description="share of the rows held out for validation (default 0.15; none is cut "
        "when `validation` names a data set)",
    )
    test_fraction: float | None = Field(
        default=None,
        gt=0.0,
        lt=0.9,
        description="share of the rows held out for the test metrics (default 0.15; none is "
        "cut when `test` names a data set)",
    )
    validation: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="an uploaded data set (id or name) with the same columns to validate on "
        "instead of a share of this one",
    )
    test: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="an uploaded data set (id or name) with the same columns to report the "
        "test metrics on instead of a share of this one",
    )


class ModelSpec(BaseModel):
    """Architecture of the flow (cpflow.FlowConfig fields); ``dim`` is checked, not chosen.
    A field left out (null) is chosen from the data by the ``auto`` recipe (training.recipes);
    the manifest's ``training.auto`` says what it chose and why."""

    model_config = _Strict
    dim: int | None = Field(
        default=None, ge=1, description="if given, must equal the data set's dim"
    )
    blocks: int | None = Field(default=None, ge=1, le=32)
    hidden: int | None = Field(default=None, ge=2, le=1024)
    depth: int | None = Field(default=None, ge=1, le=8)
    icnn: Literal["vanilla", "augmented", "dense"] | None = None
    activation: Literal["logistic", "gaussian", "laplace"] | None = None
    symmetric_first: bool = True
    actnorm: bool = True
    standardization: Literal["diagonal", "isotropic", "whiten"] | None = Field(
        default=None,
        description="input scaling: per-coordinate std, one scalar std, or whitening by the"
        " full training covariance (not for conditional models)",
    )
    init_gain: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="softplus(w1) at init; small = near-identity blocks",
    )
    radial_units: int | None = Field(
        default=None,
        ge=0,
        le=256,
        description="radial convex units per block: steps of the map along |x| around the"
        " block's input origin, for radially structured data such as rings (not for"
        " conditional models)",
    )
    dtype: Literal["float32", "float64"] = "float32"

    def flow_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``FlowConfig(dim=..., **kwargs)`` (the fields given)."""
        return self.model_dump(exclude={"dim"}, exclude_none=True)


class TrainingSpec(BaseModel):
    """Optimisation settings (training.config.TrainConfig fields, in safe ranges); a field left
    out (null) beside the budget is chosen from the data by the ``auto`` recipe."""

    model_config = _Strict
    iterations: int | None = Field(
        default=2000,
        ge=1,
        le=1_000_000,
        description="optimiser steps; leave out (or null) with time_budget_s",
    )
    time_budget_s: float | None = Field(
        default=None,
        gt=0.0,
        le=30 * 24 * 3600,
        description="wall-clock seconds for the whole run instead of iterations: the worker "
        "plans the iterations from its measured step time and the auto recipe sizes its "
        "validation interval, lr decay and early stopping to them",
    )
    batch_size: int = Field(default=128, ge=1, le=65_536)
    lr: float | None = Field(default=None, gt=0.0, le=1.0, description="Adam learning rate")
    weight_decay: float | None = Field(default=None, ge=0.0, le=1.0)
    grad_clip: float | None = Field(default=None, gt=0.0)
    schedule: Literal["none", "plateau", "cosine"] | None = None
    warmup_iterations: int = Field(default=0, ge=0, le=1_000_000, description="linear lr warm-up")
    loss: Literal["auto", "surrogate", "exact"] | None = Field(
        default=None,
        description="training objective: CG surrogate, exact log-det, auto (exact d<=2)",
    )
    val_every: int | None = Field(default=None, ge=1, le=1_000_000)
    early_stopping_patience: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_budget(self) -> TrainingSpec:
        if self.time_budget_s is None:
            if self.iterations is None:
                raise ValueError("give training.iterations or training.time_budget_s")
        elif "iterations" in self.model_fields_set and self.iterations is not None:
            raise ValueError(
                "give training.iterations or training.time_budget_s, not both: a time budget "
                "plans its own iterations"
            )
        else:
            self.iterations = None  # the default 2000 does not apply to a timed job
        return self


class Resources(BaseModel):
    """What one job may use on its worker's machine."""

    model_config = _Strict
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="data-parallel training processes (a torchrun group on the worker: gloo on"
        " CPU, nccl with one GPU each on CUDA workers); training.batch_size is per process,"
        " so the global batch is processes x batch_size. At most CPFLOW_MAX_JOB_PROCESSES.",
    )


class JobSpec(BaseModel):
    """POST /v1/jobs body: what to train on, what to train, and under which model name."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="store name the trained model is published under (a new version)",
    )
    dataset: BuiltinDataset | UploadedDataset
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: Resources = Field(default_factory=Resources)
    preset: JobPreset = Field(
        default="auto",
        examples=["auto", "toy"],
        description="named settings that fill the model and training fields left out: "
        + ", ".join(JOB_PRESETS)
        + " (auto: chosen from the data; the job record's resolved says what was chosen "
        "and why). iterations is 2000 unless given.",
    )
    plots: bool = Field(default=True, description="store density/curve plots with the model")
    timeout_s: int | None = Field(
        default=None,
        ge=1,
        le=30 * 24 * 3600,
        description="wall-clock limit; default: the server's",
    )

    @field_validator("model_name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "datasets":
            raise ValueError("model name 'datasets' is reserved; choose another")
        return value

    @model_validator(mode="after")
    def _budget_within_timeout(self) -> JobSpec:
        budget = self.training.time_budget_s
        if budget is not None and self.timeout_s is not None and budget >= self.timeout_s:
            raise ValueError(
                f"training.time_budget_s ({budget:g}) must be below timeout_s "
                f"({self.timeout_s}): the job would be stopped before its budget ends"
            )
        return self


class JobAccepted(BaseModel):
    """202 answer of POST /v1/jobs."""

    id: str
    status: Literal["queued"] = "queued"


class JobProgress(BaseModel):
    """Where a running job stands (updated by the worker every few seconds)."""

    iteration: int = 0
    total: int | None = None
    val_nll: float | None = None
    seconds_per_iteration: float | None = None
    eta_s: float | None = None
    loss: str | None = Field(
        default=None, description="the training objective: exact (an NLL) or surrogate"
    )
    curve: list[list[float | None]] | None = Field(
        default=None,
        description="the training curve so far: [iteration, train NLL, validation NLL] per "
        "validation (at most 200, thinned evenly)",
    )
    processes: list[int] | None = Field(
        default=None,
        description="pids of a multi-process job's group (torchrun first, then ranks)",
    )


class JobResult(BaseModel):
    """What a succeeded job published."""

    model: str
    version: int
    test_nll: float | None = None


class JobPublic(BaseModel):
    """A training job as GET /v1/jobs/{id} shows it."""

    model_config = ConfigDict(protected_namespaces=())
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model_name: str | None = None
    dataset: dict[str, Any] | None = Field(
        default=None, description="the job's data set (an uploaded one with its id and name)"
    )
    data_report: dict[str, Any] | None = Field(
        default=None, description="the data checks' findings on the uploaded data set"
    )
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: JobProgress | None = None
    phase: Literal["loading", "training", "evaluating", "plotting", "publishing"] | None = Field(
        default=None, description="what a running job is doing now (null before it starts)"
    )
    spec: dict[str, Any] | None = Field(
        default=None, description="the job as submitted (options, preset)"
    )
    resolved: dict[str, Any] | None = Field(
        default=None,
        description="what the job trains with once its data is loaded: the preset, the model "
        "and training settings after the preset or the auto recipe filled the rest, and (auto) "
        "each choice with its reason",
    )
    result: JobResult | None = None
    error: str | None = None
    cancel_requested: bool = False


class DatasetPublic(BaseModel):
    """An uploaded data set."""

    id: str
    name: str = Field(description="the latest name it was uploaded under")
    names: list[str] = Field(
        default_factory=list, description="every name it was uploaded under, the latest last"
    )
    rows: int
    dim: int
    columns: list[str] = Field(
        default_factory=list, description="column names: the CSV header's, else x1..xd"
    )
    sha256: str
    created_at: str | None = None
    uploaded_at: str | None = Field(default=None, description="when it was last uploaded")
    report: dict[str, Any] | None = Field(
        default=None,
        description="the data checks' findings (warnings; refusals are not stored): "
        "{rows, columns, dropped, errors, warnings}",
    )


JobSpecBody = Annotated[JobSpec, Field(description="the training job to run")]
