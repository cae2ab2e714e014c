"""The data plane: one typed entry per operation, under every protocol (/v1 JSON, /v1 CSV,
/v2). It resolves the model, runs the checks (service.inference.checks), calls the engine and
returns typed results; the routes only translate their wire format to and from it."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch

from service.drift import DriftMonitor
from service.engine import InferenceEngine, ServedModel
from service.error_codes import ErrorCode
from service.errors import ApiError
from service.inference import checks
from service.inference.types import (
    Calibration,
    LogProbRequest,
    LogProbResult,
    Method,
    SampleRequest,
    SampleResult,
    Scores,
    TableBatch,
    TableRequest,
    TransportRequest,
    TransportResult,
)
from service.model_scope import check_visible
from service.settings import DEFAULT_TENANT, Settings

__all__ = ["DataPlane", "TableScoring"]


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class DataPlane:
    """Answers typed inference requests from ``engine`` within ``settings``' limits.

    ``on_model`` is told the name of each model a request resolves (the HTTP layer labels its
    metrics with it: only names that exist, so the label set stays bounded). ``tenant`` is the
    caller's: another tenant's model answers as a missing one (service.model_scope)."""

    def __init__(
        self,
        engine: InferenceEngine,
        settings: Settings,
        on_model: Callable[[str], None] | None = None,
        tenant: str = DEFAULT_TENANT,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.on_model = on_model
        self.tenant = tenant
        self.drift = drift

    def scored(
        self, model: ServedModel, log_prob: torch.Tensor, calibration: Calibration | None
    ) -> Scores | None:
        """Feed the scores to the version's drift window and, when asked, rank them among its
        held-out scores (one vectorised pass over the batch)."""
        reference = model.reference
        if reference is None:
            return None
        lp = log_prob.numpy()
        if self.drift is not None:
            self.drift.record(model.name, model.version, reference, lp)
        if calibration is None:
            return None
        pct = reference.percentiles(lp)
        level = calibration.outlier_level
        return Scores(pct, None if level is None else pct < level, level)

    async def model(self, name: str, version: int | None) -> ServedModel:
        """The served model (the latest version when ``version`` is None); 404 if unknown."""
        await check_visible(self.engine, self.settings, self.tenant, name, version)
        model = await self.engine.get(name, version)
        if self.on_model is not None:
            self.on_model(model.name)
        return model

    async def versions(self, name: str) -> list[int]:
        """The published versions of ``name``, oldest first (read off the event loop)."""
        await check_visible(self.engine, self.settings, self.tenant, name, None)
        return await self.engine.io(self.engine.store.versions, name)

    async def log_prob(self, request: LogProbRequest) -> LogProbResult:
        """log p(x) per row (log p(x | c) for a conditional model)."""
        checks.check_row_count(len(request.inputs), self.settings)
        model = await self.model(request.model, request.version)
        checks.check_calibration(request.calibration, model)
        x, _ = checks.inputs_tensor(request.inputs, model)
        context = checks.context_tensor(request.context, x.shape[0], model)
        result = await self.engine.log_prob(
            model, x, request.method, probes=request.probes, steps=request.steps,
            seed=request.seed, context=context,
        )  # fmt: skip
        method: Literal["exact", "slq"] = "slq" if result.method == "slq" else "exact"
        return LogProbResult(
            model.name, model.version, method, result.log_prob, result.stderr, result.seed,
            self.scored(model, result.log_prob, request.calibration),
        )  # fmt: skip

    async def sample(self, request: SampleRequest) -> SampleResult:
        """``num_samples`` samples in data units, with how exactly they invert the flow."""
        checks.check_samples(request.num_samples, self.settings)
        checks.check_iterations(request.max_iterations, self.settings)
        model = await self.model(request.model, request.version)
        shape = model.image_shape
        if request.layout == "image" and shape is None:
            raise ApiError(
                ErrorCode.WRONG_SHAPE,
                f"layout 'image' needs an image model; model {model.name!r} version "
                f"{model.version} takes rows [n, {model.dim}]: use layout 'rows'",
            )
        context = checks.context_tensor(request.context, request.num_samples, model)
        result = await self.engine.sample(
            model, request.num_samples, seed=request.seed, tolerance=request.tolerance,
            max_iterations=request.max_iterations, solver=checks.solver_for(request.solver, model),
            context=context,
        )  # fmt: skip
        layout = shape if request.layout != "rows" else None
        return SampleResult(
            model.name, model.version, result.samples, layout,
            _finite_or_none(result.max_residual), result.converged, result.seed,
            None if layout is not None else model.columns,
        )  # fmt: skip

    async def transport(self, request: TransportRequest) -> TransportResult:
        """Rows mapped forward (x -> z) or inverse (z -> x, with its residual)."""
        checks.check_row_count(len(request.inputs), self.settings)
        checks.check_iterations(request.max_iterations, self.settings)
        model = await self.model(request.model, request.version)
        x, images = checks.inputs_tensor(request.inputs, model)
        context = checks.context_tensor(request.context, x.shape[0], model)
        result = await self.engine.transport(
            model, x, request.direction, tolerance=request.tolerance,
            max_iterations=request.max_iterations, solver=checks.solver_for(request.solver, model),
            context=context,
        )  # fmt: skip
        columns = (
            model.columns if request.direction == "inverse"
            else [f"z{j + 1}" for j in range(model.dim)]
        )  # fmt: skip
        return TransportResult(
            model.name, model.version, request.direction, result.outputs,
            model.image_shape if images else None, _finite_or_none(result.max_residual),
            result.converged, None if images else columns,
        )  # fmt: skip

    async def table(self, request: TableRequest) -> TableScoring:
        """Check a whole table against the model and fix its method and seed; the scoring
        itself runs batch by batch as the caller iterates :meth:`TableScoring.batches`."""
        if len(request.table) > self.settings.max_csv_rows:
            raise ApiError(
                ErrorCode.TOO_MANY_ROWS,
                f"the CSV has {len(request.table)} rows; at most {self.settings.max_csv_rows} "
                "per request (CPFLOW_MAX_CSV_ROWS): split the file",
            )
        model = await self.model(request.model, request.version)
        checks.check_calibration(request.calibration, model)
        x, context = checks.table_tensors(request.table, model)
        method = cast(Method, self.engine.method_for(model, request.method))
        seed = request.seed
        if seed is None and method == "slq":
            seed = secrets.randbits(63)  # one seed for every batch, reported to the caller
        return TableScoring(self, model, method, seed, request, x, context)


@dataclass
class TableScoring:
    """A checked table with its model, method and seed, scored CPFLOW_MAX_BATCH rows at a time."""

    plane: DataPlane
    model: ServedModel
    method: Method
    seed: int | None
    request: TableRequest
    x: torch.Tensor
    context: torch.Tensor | None

    def _score(self, start: int) -> asyncio.Future:
        stop = start + self.plane.settings.max_batch
        c = None if self.context is None else self.context[start:stop]
        r = self.request
        return asyncio.ensure_future(
            self.plane.engine.log_prob(
                self.model, self.x[start:stop], self.method,
                probes=r.probes, steps=r.steps, seed=self.seed, context=c,
            )
        )  # fmt: skip

    async def batches(self) -> AsyncIterator[TableBatch]:
        """The scored batches in order; the next one is computed while the caller handles
        this one, and a caller that stops early leaves no batch running."""
        n, step, r = len(self.request.table), self.plane.settings.max_batch, self.request
        pending = self._score(0)
        try:
            for start in range(0, n, step):
                result = await pending
                if start + step < n:
                    pending = self._score(start + step)
                scores = self.plane.scored(self.model, result.log_prob, r.calibration)
                yield TableBatch(
                    start, min(start + step, n), result.log_prob, result.stderr, scores
                )
        finally:
            pending.cancel()
