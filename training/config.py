"""Trainer settings: one pydantic model that travels as JSON into manifests and job specs."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpflow.config import EXACT_MAX_DIM

__all__ = ["VALIDATION_POINTS", "TrainConfig"]

VALIDATION_POINTS = 20
"""Validations over a run whose ``val_every`` is left unset (the training curve's points)."""
UNPLANNED = 2**62
"""The validation interval of a time-budgeted run before its plan: none until the plan."""


class TrainConfig(BaseModel):
    """How to train a CP-Flow: optimiser, schedule, budget, validation and checkpoints.

    The budget is ``iterations`` (optimiser steps) unless ``epochs`` is given, in which case
    it is ``epochs`` passes over the training split (rounded up to whole batches), or
    ``time_budget_s`` seconds of wall clock instead of either (training.budget plans the
    iterations from the measured step time).
    """

    model_config = ConfigDict(extra="forbid")

    # Optimiser (Adam).
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm; None = off")

    # Learning-rate schedule.
    schedule: Literal["none", "plateau", "cosine"] = "none"
    plateau_patience: int = Field(
        6,
        ge=1,
        description="validations without improvement before each 10x decay (at most 2 decays),"
        " as the paper's tabular code",
    )
    cosine_min_lr: float = Field(0.0, ge=0)
    warmup_iterations: int = Field(
        0, ge=0, description="linear lr warm-up over the first iterations (0 = off)"
    )

    # Budget.
    batch_size: int = Field(128, ge=1)
    iterations: int | None = Field(2000, ge=1)
    epochs: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="wall-clock seconds for the whole run (training, validations, final "
        "scoring) instead of iterations or epochs; the trainer plans the iterations from its "
        "measured step time",
    )
    budget_validations: int | None = Field(
        None,
        ge=1,
        description="with time_budget_s: validations spread over the planned run (val_every "
        "follows from the planned iterations); None keeps val_every",
    )

    # Training objective. "surrogate" is Algorithm 2 (CG, an unbiased gradient estimate);
    # "exact" back-propagates through the exact (Cholesky) log-det, an exact gradient that is
    # cheaper than the surrogate in very low dimension; "auto" takes exact up to
    # exact_loss_max_dim and the surrogate above.
    loss: Literal["auto", "surrogate", "exact"] = "auto"
    exact_loss_max_dim: int = Field(
        2, ge=1, description="with loss='auto', train on the exact log-det up to this dim"
    )

    # The CG solve inside the training surrogate (None keeps the FlowConfig's value).
    cg_atol: float | None = Field(None, ge=0)
    cg_rtol: float | None = Field(None, ge=0)

    # Reproducibility and placement.
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float64"] | None = None

    # Data preparation.
    standardize: bool = Field(
        True,
        description="fit the model's standardisation on the train split (per-coordinate or"
        " isotropic, as FlowConfig.standardization says)",
    )
    init_batch_size: int = Field(
        1024, ge=1, description="rows used for data-dependent ActNorm init"
    )

    # Validation (always a real likelihood, never the surrogate).
    val_every: int | None = Field(
        None,
        ge=1,
        description="iterations between validations; None: the run's iterations divided by "
        f"{VALIDATION_POINTS}, so that the training curve has at least {VALIDATION_POINTS} points",
    )
    train_nll_points: int | None = Field(
        512,
        ge=1,
        description="fixed train rows scored at each validation, as the training curve's train "
        "NLL (the surrogate loss has no NLL value); None = not scored",
    )
    val_max_points: int | None = Field(
        2000, ge=1, description="fixed subset of val rows scored during training; None = all"
    )
    eval_batch_size: int = Field(
        1024,
        ge=1,
        description="most rows scored at a time; the memory budget (CPFLOW_EVAL_MEMORY_MB) "
        "may allow fewer",
    )
    final_train_max_points: int | None = Field(
        10000, ge=1, description="rows of the train split scored for the final train NLL"
    )
    exact_max_dim: int = Field(
        EXACT_MAX_DIM, ge=1, description="exact log-det up to this dim, SLQ above"
    )
    slq_probes: int | None = Field(None, ge=1)
    slq_steps: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many validations without improvement"
    )

    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="a validation NLL must beat the best by this much to count"
    )

    # Checkpoints (private trainer state, never the store).
    checkpoint_every: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _budget(self) -> TrainConfig:
        if self.time_budget_s is not None:
            given = [
                k
                for k in ("iterations", "epochs")
                if k in self.model_fields_set and getattr(self, k) is not None
            ]
            if given:
                raise ValueError(f"give time_budget_s or {given[0]}, not both")
            self.iterations = None  # the default 2000 does not apply to a timed run
        elif self.iterations is None and self.epochs is None:
            raise ValueError("set iterations, epochs or time_budget_s")
        return self

    def loss_method(self, dim: int) -> Literal["surrogate", "exact"]:
        """The training objective used for data of dimension ``dim``."""
        if self.loss == "auto":
            return "exact" if dim <= self.exact_loss_max_dim else "surrogate"
        return self.loss

    def validation_interval(self, total: int | None) -> int:
        """Iterations between validations in a run of ``total`` iterations (None: a time
        budget not planned yet, validated only at its end until the plan sets the interval)."""
        if self.val_every is not None:
            return self.val_every
        if total is None:
            return UNPLANNED
        return max(1, total // VALIDATION_POINTS)

    def total_iterations(self, num_train: int) -> int | None:
        """Optimiser steps this config runs on a training split of ``num_train`` rows (None for
        a time budget: the trainer plans them once it has timed its steps)."""
        if self.epochs is not None:
            return self.epochs * iterations_per_epoch(num_train, self.batch_size)
        return self.iterations


def iterations_per_epoch(num_train: int, batch_size: int) -> int:
    """Whole batches per pass; a split smaller than one batch is one (short) batch."""
    return max(1, math.floor(num_train / batch_size))
