"""Train a CP-Flow on data splits: Adam on the CG surrogate, validation on the real likelihood.

One loop for every kind of flow: rows, images (integer pixels, dequantised afresh every batch;
val/test once, with fixed noise) and conditional densities p(x | c) (splits with ``contexts``).

The surrogate loss (Algorithm 2) only has the right *gradient*; its value is not an NLL and is
reported as ``surrogate`` only. Every NLL this module reports (validation, final metrics) is
``-flow.log_prob`` with the exact log-det up to ``exact_max_dim`` and SLQ (with its standard
error) above. The model returned is the one with the best validation NLL.

With a time budget (``TrainConfig.time_budget_s``) the iterations are planned once the first
steps are timed (training.budget) and the run stops within the budget, keeping the best
validated weights; a resumed timed run plans again from the time left.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cpflow import CPFlow, FlowConfig
from training.budget import CALIBRATION_SHARE, CALIBRATION_STEPS, BudgetPlan, plan_budget
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config import VALIDATION_POINTS, TrainConfig, iterations_per_epoch
from training.distributed import current
from training.images import bits_per_dim
from training.memory import activation_floats, eval_chunk_rows
from training.run_data import DataShape, RunData
from training.settings import TrainingSettings
from training.splits_protocol import Splits
from training.state import TrainState, restore_state, state_to_checkpoint

__all__ = [
    "ProgressEvent",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingCancelled",
    "TrainingDiverged",
    "TrainingError",
    "curve_points",
    "evaluate_nll",
    "fit_standardization",
    "parameter_count",
    "resolve_device",
    "train",
]


class TrainingError(RuntimeError):
    """Base class of trainer failures that a job reports to its user."""


class TrainingDiverged(TrainingError):
    """Loss, gradient, weights or validation NLL became NaN/inf at ``iteration``."""

    def __init__(self, iteration: int, what: str, hint: str = "") -> None:
        self.iteration = iteration
        self.what = what
        message = f"training diverged at iteration {iteration}: {what}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class TrainingCancelled(TrainingError):
    """``should_stop`` asked the run to stop; a checkpoint was written if a directory was given."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration
        super().__init__(f"training cancelled at iteration {iteration}")


@dataclass
class ProgressEvent:
    """What the trainer reports after each iteration and each validation."""

    phase: str  # "train" | "validate" | "evaluate" | "done"
    iteration: int
    total: int | None  # None while a time budget is still timing its first steps
    epoch: float
    surrogate_loss: float | None  # training objective: the surrogate, or the batch NLL if exact
    val_nll: float | None
    val_nll_stderr: float | None
    cg_iterations: float | None
    seconds_per_iteration: float | None
    eta_s: float | None
    lr: float
    curve: list[list[float | None]] = field(default_factory=list)  # see curve_points
    loss: str | None = None  # the training objective: "exact" or "surrogate"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the best flow (by val NLL) and real-likelihood metrics."""

    flow: CPFlow
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    wall_time_s: float
    parameter_count: int
    iterations_run: int
    best_iteration: int
    stopped_early: bool
    flow_config: FlowConfig
    train_config: TrainConfig
    extra: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]
ValidateHook = Callable[[CPFlow, int], dict[str, Any] | None]


CURVE_POINTS = 200
"""Most points of the training curve a progress event carries (a longer one is thinned)."""


def curve_points(
    history: list[dict[str, Any]], most: int = CURVE_POINTS
) -> list[list[float | None]]:
    """``[iteration, train NLL, validation NLL]`` per validation, thinned evenly to at most
    ``most`` points (the first and the last kept): the live training curve."""
    picks: list[int] = list(range(len(history)))
    if len(history) > most:
        picks = sorted(set(np.linspace(0, len(history) - 1, most).round().astype(int).tolist()))
    return [
        [history[i]["iteration"], history[i].get("train_nll"), history[i]["val_nll"]]
        for i in picks
    ]


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def parameter_count(module: torch.nn.Module) -> int:
    """Trainable parameters (what the manifest reports)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def fit_standardization(train: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and scale of the training split (NaN rows ignored, zero spread mapped to 1).

    ``isotropic`` uses one scale for all dimensions, which keeps the composed map a gradient of
    a convex function (needed for the OT experiment); ``diagonal`` scales each column (scale =
    std); ``whiten`` returns the covariance (scale is (d, d)), with a ridge of 1e-6 times each
    column's variance so that collinear columns stay invertible.
    """
    if mode == "none":
        return None
    data = np.asarray(train, dtype=np.float64)
    finite = np.isfinite(data).all(axis=1)
    data = data[finite] if finite.any() else data
    mean = data.mean(axis=0)
    if mode == "isotropic":
        scale = float(np.sqrt(np.mean(data.var(axis=0))))
        std = np.full(data.shape[1], scale if scale > 1e-12 else 1.0)
    elif mode in ("diagonal", "per_dim"):
        std = data.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
    elif mode == "whiten":
        cov = np.atleast_2d(np.cov(data, rowvar=False, bias=True))
        var = np.diag(cov).copy()
        cov[np.diag_indices_from(cov)] = np.where(var > 1e-24, var * (1 + 1e-6), 1.0)
        return mean, cov
    else:
        raise ValueError(f"unknown standardize mode {mode!r}")
    return mean, std


def evaluate_nll(
    flow: CPFlow,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    *,
    method: str,
    batch_size: int = 1024,
    probes: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    keep: list[torch.Tensor] | None = None,
) -> tuple[float, float | None]:
    """Mean NLL (nats per example) of ``x`` under ``flow`` and, for SLQ, its standard error;
    ``keep``, when given, receives the per-row log-densities (on the CPU), chunk by chunk.

    The SLQ standard error combines the per-example estimator errors (independent probes), so
    it measures the Monte Carlo error of the log-det estimate, not the spread of the data.
    """
    if x.shape[0] == 0:
        return float("nan"), None
    generator = torch.Generator(device=x.device).manual_seed(seed)
    total = 0.0
    var_sum = 0.0
    have_stderr = False
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        c = None if context is None else context[start : start + batch_size]
        with torch.no_grad():
            if method == "exact":
                logp = flow.log_prob(chunk, c, method="exact")
                err = None
            else:
                logp, err = flow.log_prob(
                    chunk,
                    c,
                    method=method,
                    probes=probes,
                    steps=steps,
                    generator=generator,
                    return_stderr=True,
                )
        total += float(logp.detach().double().sum())
        if keep is not None:
            keep.append(logp.detach().cpu())
        if err is not None:
            have_stderr = True
            var_sum += float((err.detach().double() ** 2).sum())
    n = x.shape[0]
    stderr = math.sqrt(var_sum) / n if have_stderr else None
    return -total / n, stderr


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _fingerprint(flow_cfg: FlowConfig, cfg: TrainConfig, data_sha: str) -> str:
    """Identity of a run for resume: what changes the trajectory (not the budget)."""
    train_part = cfg.model_dump(mode="json", exclude={"iterations", "epochs", "checkpoint_every"})
    blob = json.dumps(
        {"flow": flow_cfg.model_dump(mode="json"), "train": train_part, "data": data_sha},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _Objective(torch.nn.Module):
    """The training loss as a module's forward: what DDP wraps (its gradient hooks are armed
    by the forward call), and the same code path with one process."""

    def __init__(self, flow: CPFlow, method: str) -> None:
        super().__init__()
        self.flow, self.method = flow, method

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        generator: torch.Generator,
        rows: tuple[int, int],
    ) -> tuple[torch.Tensor, Any]:
        if self.method == "exact":
            return -self.flow.log_prob(x, c, method="exact").mean(), None
        return self.flow.training_loss(x, c, generator, batch_rows=rows)


class _Schedule:
    """Learning rate as a pure function of (iteration, decays), so resume reproduces it.

    ``lr_at`` and ``decays_after`` are pure (the trainer keeps ``decays`` in its TrainState);
    ``lr`` and ``on_validation`` keep a count of their own, for use without a trainer."""

    def __init__(self, cfg: TrainConfig, total: int) -> None:  # total: planned iterations
        self.cfg = cfg
        self.total = total
        self.decays = 0

    def lr(self, iteration: int) -> float:
        return self.lr_at(iteration, self.decays)

    def lr_at(self, iteration: int, decays: int) -> float:
        warm = self.cfg.warmup_iterations
        scale = min(1.0, (iteration + 1) / warm) if warm else 1.0
        return scale * self._scheduled(iteration, decays)

    def _scheduled(self, iteration: int, decays: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "cosine":
            frac = min(iteration, self.total) / max(self.total, 1)
            return cfg.cosine_min_lr + (cfg.lr - cfg.cosine_min_lr) * 0.5 * (
                1 + math.cos(math.pi * frac)
            )
        if cfg.schedule == "plateau":
            return cfg.lr / 10**decays
        return cfg.lr

    def on_validation(self, validations_without_improvement: int) -> None:
        self.decays = self.decays_after(validations_without_improvement, self.decays)

    def decays_after(self, validations_without_improvement: int, decays: int) -> int:
        """Paper's tabular rule: divide by 10 after ``p`` and again after ``2p`` bad validations."""
        if self.cfg.schedule != "plateau":
            return decays
        p = self.cfg.plateau_patience
        if decays == 0 and validations_without_improvement >= p:
            return 1
        if decays == 1 and validations_without_improvement >= 2 * p:
            return 2
        return decays


def _effective_flow_config(
    flow_config: FlowConfig | dict,
    dim: int,
    cfg: TrainConfig,
    *,
    context_dim: int | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> FlowConfig:
    data = flow_config.model_dump() if isinstance(flow_config, FlowConfig) else dict(flow_config)
    data.setdefault("dim", dim)
    if image_shape is not None and "potential" not in data:
        data.setdefault("input_shape", image_shape)
    if context_dim is not None:  # the data decide the context's width
        if "potential" in data:
            data["potential"] = {**data["potential"], "context_dim": context_dim}
        else:
            data["context_dim"] = context_dim
    if data["dim"] != dim:
        raise ValueError(f"flow_config.dim={data['dim']} but the data has {dim} columns")
    for key in ("cg_atol", "cg_rtol", "dtype"):
        value = getattr(cfg, key)
        if value is not None:
            data[key] = value
    data["exact_max_dim"] = data.get("exact_max_dim", cfg.exact_max_dim)
    return FlowConfig.model_validate(data)


def _budget_validations(cfg: TrainConfig) -> int | None:
    """Validations a time budget spreads over its planned run: the recipe's count, else
    VALIDATION_POINTS when val_every is left unset (the curve's points), else None (keep it)."""
    if cfg.budget_validations is not None:
        return cfg.budget_validations
    return VALIDATION_POINTS if cfg.val_every is None else None


class Trainer:
    """One training run: the data on the device, the flow, its optimiser and one
    :class:`~training.state.TrainState` (everything a resume needs).

    ``run`` trains to the budget; ``step``, ``validate``, ``checkpoint`` and ``finish`` are
    its parts, usable on their own. Construction restores the checkpoint in
    ``checkpoint_dir`` (when ``resume``) or initialises the flow from the data.
    Raises TrainingDiverged (naming the iteration) on NaN/inf, TrainingCancelled when
    ``should_stop()`` returns True (after checkpointing). ``on_validate(flow, iteration)`` may
    return extra numbers recorded in the history at each validation (e.g. transport cost).
    ``eval_memory_mb`` bounds the memory of one scoring chunk (None: the
    ``CPFLOW_EVAL_MEMORY_MB`` setting); the rows per chunk follow from it
    (:func:`training.memory.eval_chunk_rows`), at most ``eval_batch_size``.
    """

    def __init__(
        self,
        flow_config: FlowConfig | dict,
        splits: Splits,
        train_config: TrainConfig | dict | None = None,
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = True,
        on_validate: ValidateHook | None = None,
        eval_memory_mb: float | None = None,
    ) -> None:
        self._t0 = time.perf_counter()
        cfg = (
            train_config
            if isinstance(train_config, TrainConfig)
            else TrainConfig.model_validate(train_config or {})
        )
        self.cfg = cfg
        self.group = current()  # one process, or a torchrun group (see training.distributed)
        self.device = resolve_device(cfg.device)
        if self.group.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.group.local_rank)
        shape = DataShape.of(splits)
        self.flow_config = _effective_flow_config(
            flow_config,
            shape.dim,
            cfg,
            context_dim=shape.context_dim,
            image_shape=shape.image_shape,
        )
        dtype = torch.float64 if self.flow_config.dtype == "float64" else torch.float32
        self.data = RunData(splits, shape, cfg, self.device, dtype)
        self.method = "exact" if shape.dim <= cfg.exact_max_dim else "slq"  # the NLLs reported
        self.loss_method = cfg.loss_method(shape.dim)
        self.eval_rows = self._eval_rows(eval_memory_mb, dtype)
        self.batch_size = min(cfg.batch_size * self.group.world, self.data.n_train)  # global
        self.iterations_per_epoch = iterations_per_epoch(self.data.n_train, self.batch_size)
        self.total = cfg.total_iterations(self.data.n_train)  # None: a time budget, unplanned
        self.schedule = _Schedule(cfg, self.total or 0)
        self.val_every = cfg.validation_interval(self.total)
        self.budget_plan: BudgetPlan | None = None
        self.stopped_by_budget = False
        self._validation_s = 0.0  # the last validation's wall time
        self._calibration: list[float] = []  # step times before the budget plan
        self.fingerprint = _fingerprint(self.flow_config, cfg, self.data.info.sha256)
        self.progress, self.should_stop, self.on_validate = progress, should_stop, on_validate
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.flow, self.state = self._new_state(dtype)
        self.objective = self.group.wrap(_Objective(self.flow, self.loss_method), self.device)
        self._sec_per_it: float | None = None
        self._step_time = 0.0  # optimiser steps only (this process), for seconds/iteration
        self.heldout: tuple[str, np.ndarray] | None = None  # set by _final_metrics
        self._steps_here = 0
        self._curve: list[list[float | None]] = []
        if not (resume and self._restore()):
            self._initialise()

    # -- set-up ---------------------------------------------------------------------------
    def _new_state(self, dtype: torch.dtype) -> tuple[CPFlow, TrainState]:
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            flow = CPFlow(self.flow_config)
        flow = flow.to(device=self.device, dtype=dtype)
        params = [p for p in flow.parameters() if p.requires_grad]
        # fused: one kernel for all parameters (a 20-block toy flow has 400 tensors; the
        # per-tensor loop took 21 ms of its 280 ms step, fused 6 ms)
        optimizer = torch.optim.Adam(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
        )
        state = TrainState(
            model=flow,
            optimizer=optimizer,
            rng_batch=torch.Generator().manual_seed(cfg.seed + 1),
            rng_loss=torch.Generator(device=self.device).manual_seed(cfg.seed + 2),
        )
        return flow, state

    def _restore(self) -> bool:
        """Continue from the checkpoint directory's checkpoint; False when there is none."""
        saved = load_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if saved is None:
            return False
        tensors, meta = saved
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"checkpoint in {self.checkpoint_dir} belongs to a different run (model, "
                "trainer settings or data differ); use another directory or resume=False"
            )
        restore_state(self.state, tensors, meta)
        self._curve = curve_points(self.state.history)
        return True

    def _initialise(self) -> None:
        """Standardisation fitted on the train split, then the flow's data-dependent init."""
        cfg, data = self.cfg, self.data
        x_init, c_init, stats_rows = data.init_rows()
        mode = "none" if not cfg.standardize else self.flow_config.standardization
        stats = fit_standardization(stats_rows, mode)
        if stats is not None:
            contexts = data.info.contexts
            c_stats = () if contexts is None else fit_standardization(contexts[0], "diagonal")
            # float64; the flow casts to its own dtype
            self.flow.set_standardization(
                *(torch.as_tensor(v, device=self.device) for v in (*stats, *(c_stats or ())))
            )
        if x_init.shape[0] > 0:
            with torch.no_grad():
                self.flow.initialize(x_init, c_init)

    # -- the run --------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the budget (or early stop), checkpointing as configured; final metrics."""
        cfg, state = self.cfg, self.state
        self.flow.train()
        if state.iteration == 0 and not state.history:
            self.validate()  # the starting point: the curve and the "best" both begin here
        while not self._finished():
            if self._stop_requested():
                self.checkpoint()
                raise TrainingCancelled(state.iteration)
            self.step()
            self._plan_budget()
            last = state.iteration == self.total or self._budget_spent()
            if state.iteration % self.val_every == 0 or last:
                self.validate()
            if cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0:
                self.checkpoint()
        self.checkpoint()
        return self.finish()

    def _finished(self) -> bool:
        state = self.state
        if state.stopped_early or self.stopped_by_budget:
            return True
        return self.total is not None and state.iteration >= self.total

    def _plan_budget(self) -> None:
        """With a time budget: once the first steps are timed, plan the iterations and the
        validation interval (training.budget.plan_budget; rank 0's plan for a group)."""
        cfg, group = self.cfg, self.group
        if cfg.time_budget_s is None or self.budget_plan is not None:
            return
        times = self._calibration
        calibrating = self._elapsed() < CALIBRATION_SHARE * cfg.time_budget_s
        if not group.any(len(times) >= CALIBRATION_STEPS or not calibrating)[0]:
            return
        plan = group.share(
            plan_budget(
                cfg.time_budget_s, self._elapsed(), self.state.iteration,
                step_s=float(np.mean(times[1:] or times)), validation_s=self._validation_s,
                final_s=self._final_scoring_s(), val_every=cfg.val_every or 1,
                validations=_budget_validations(cfg),
            )
            if group.main
            else None
        )  # fmt: skip
        self.budget_plan, self.total, self.val_every = plan, plan.iterations, plan.val_every
        self.schedule.total = plan.iterations

    def _budget_spent(self) -> bool:
        """True (and the run ends) when one more validation and the final scoring would
        take the run past its time budget (on any rank of a group: every rank stops)."""
        budget = self.cfg.time_budget_s
        if budget is None:
            return False
        reserve = self._validation_s + self._final_scoring_s()
        self.stopped_by_budget = self.group.any(self._elapsed() + reserve >= budget)[0]
        return self.stopped_by_budget

    def _final_scoring_s(self) -> float:
        """The final scoring's time, from the last validation's rows per second (it scored
        the validation rows and the train probe's)."""
        probe = self.data.train_probe
        scored = len(self.data.x_val) + (0 if probe is None else len(probe[0]))
        return self._validation_s * self.data.final_row_count() / max(scored, 1)

    def _stop_requested(self) -> bool:
        stop = self.should_stop is not None and self.group.main and self.should_stop()
        return self.group.any(stop)[0]  # rank 0 asks; every rank stops at the same iteration

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """This rank's rows of the next global batch, and (first row, global batch size)."""
        state, bs = self.state, self.batch_size
        if state.perm is None:
            state.perm = torch.randperm(self.data.n_train, generator=state.rng_batch)
        pos = state.epoch_rows // bs  # whole batches drawn (a resume may change the world size)
        idx = state.perm[pos * bs : (pos + 1) * bs].to(self.device)
        state.epoch_rows = (pos + 1) * bs
        if pos + 1 >= self.iterations_per_epoch:
            state.epoch_rows, state.epoch, state.perm = 0, state.epoch + 1, None
        x, c = self.data.batch(idx, state.rng_batch)  # the global batch: fresh image noise
        start, stop = self.group.rows(len(idx))
        return x[start:stop], None if c is None else c[start:stop], (start, len(idx))

    def step(self) -> float:
        """One optimiser step on the next batch; returns the training loss of the batch."""
        t_it = time.perf_counter()
        state, optimizer = self.state, self.state.optimizer
        x, c, rows = self._next_batch()
        lr = self.schedule.lr_at(state.iteration, state.lr_decays)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step = state.iteration + 1
        loss, stats = self.objective(x, c, state.rng_loss, rows)
        if self.group.any(not _finite(loss))[0]:
            hint = (
                "the batch contains non-finite input values; clean the data"
                if not _finite(x)
                else f"lower the learning rate (lr={lr:g}) or set grad_clip"
            )
            raise TrainingDiverged(
                step, f"{self.loss_method} loss is {float(loss.detach())}", hint
            )
        # DDP averages the ranks' gradients: weight each slice so the average is the mean over
        # the global batch (slices differ in size when the batch does not split evenly)
        (loss * (x.shape[0] * self.group.world / rows[1])).backward()
        self._apply_gradient(step, lr)
        state.iteration = step
        loss_value = float(loss.detach())
        cg_mean = getattr(stats, "cg_iterations_mean", None)
        state.loss_window.append(loss_value)
        if cg_mean is not None:
            state.cg_window.append(float(cg_mean))
        dt = time.perf_counter() - t_it
        self._sec_per_it = dt if self._sec_per_it is None else 0.9 * self._sec_per_it + 0.1 * dt
        self._step_time += dt
        self._steps_here += 1
        if self.cfg.time_budget_s is not None and self.budget_plan is None:
            self._calibration.append(dt)
        cg = None if cg_mean is None else float(cg_mean)
        self._emit("train", surrogate_loss=loss_value, cg_iterations=cg)
        return loss_value

    def _apply_gradient(self, step: int, lr: float) -> None:
        """Clip, check and apply the gradient; the weights must stay finite."""
        params = [p for p in self.flow.parameters() if p.requires_grad]
        clip = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if not _finite(grad_norm):
            raise TrainingDiverged(
                step, "gradient is not finite", f"lower the learning rate (lr={lr:g})"
            )
        self.state.optimizer.step()
        with torch.no_grad():
            # one fused norm over every tensor (finite iff all weights are), and the names
            # only when it is not: a per-tensor check was ~330 of a step's ~1,900 ops
            ok = _finite(torch.nn.utils.get_total_norm(params))
            bad = [] if ok else [n for n, p in self.flow.named_parameters() if not _finite(p)]
        if bad:
            raise TrainingDiverged(
                step,
                f"weights became non-finite ({', '.join(bad[:3])})",
                f"lower the learning rate (lr={lr:g}) or set grad_clip",
            )

    def validate(self) -> dict[str, Any]:
        """Score the validation rows, record them in the history, keep the best weights, and
        decide the plateau decay and early stopping. Returns the history record."""
        state, cfg, group = self.state, self.cfg, self.group
        started = time.perf_counter()
        self.flow.eval()
        # rank 0 scores; every rank then decides on the same number
        scored = self._score(self.data.x_val, self.data.c_val, 3) if group.main else None
        val_nll, val_err = group.share(scored)
        probe = self.data.train_probe
        train_nll = self._score(*probe, 9)[0] if probe is not None and group.main else None
        self.flow.train()
        if not math.isfinite(val_nll):
            raise TrainingDiverged(
                state.iteration, f"validation NLL is {val_nll}", "lower the learning rate"
            )
        record: dict[str, Any] = {
            "iteration": state.iteration,
            "epoch": state.iteration / self.iterations_per_epoch,
            "surrogate": float(np.mean(state.loss_window)) if state.loss_window else None,
            "cg_iterations": float(np.mean(state.cg_window)) if state.cg_window else None,
            "val_nll": val_nll,
            "val_nll_stderr": val_err,
            "train_nll": train_nll,
            "lr": state.optimizer.param_groups[0]["lr"],
            "elapsed_s": self._elapsed(),
        }
        if self.on_validate is not None and group.main:
            record.update(self.on_validate(self.flow, state.iteration) or {})
        state.history.append(record)
        self._curve = curve_points(state.history)
        state.loss_window, state.cg_window = [], []
        self._validation_s = time.perf_counter() - started
        if val_nll < state.best_val - cfg.early_stopping_min_delta or math.isinf(state.best_val):
            state.best_val, state.best_iteration = val_nll, state.iteration
            state.best_weights = {k: v.detach().clone() for k, v in self.flow.state_dict().items()}
            state.bad_validations = 0
        else:
            state.bad_validations += 1
            state.lr_decays = self.schedule.decays_after(state.bad_validations, state.lr_decays)
        patience = cfg.early_stopping_patience
        state.stopped_early = patience is not None and state.bad_validations >= patience
        self._emit("validate")
        return record

    def checkpoint(self) -> None:
        """Write the state to the checkpoint directory (rank 0; none without a directory)."""
        now = time.perf_counter()
        self.state.elapsed_s += now - self._t0
        self._t0 = now
        if not self.checkpoint_dir or not self.group.main:
            return
        tensors, meta = state_to_checkpoint(self.state)
        meta.update(
            fingerprint=self.fingerprint,
            world_size=self.group.world,
            train_config=self.cfg.model_dump(mode="json"),
            flow_config=self.flow_config.model_dump(mode="json"),
        )
        save_checkpoint(self.checkpoint_dir, tensors, meta)

    def finish(self) -> TrainResult:
        """Load the best weights and score them on train / val / test (rank 0 alone)."""
        state = self.state
        if state.best_weights is not None:
            self.flow.load_state_dict(state.best_weights)
        self.flow.eval()
        self._emit("evaluate")
        metrics: dict[str, Any] = {"method": self.method, "train_loss": self.loss_method}
        if self.group.main:  # rank 0 alone scores (and publishes); the others get no metrics
            metrics.update(self._final_metrics())
        metrics["best_iteration"] = state.best_iteration
        metrics["world_size"] = self.group.world
        metrics["global_batch_size"] = self.batch_size
        wall = self._elapsed()
        self._emit("done")
        return TrainResult(
            flow=self.flow,
            metrics=metrics,
            history=state.history,
            wall_time_s=wall,
            parameter_count=parameter_count(self.flow),
            iterations_run=state.iteration,
            best_iteration=state.best_iteration,
            stopped_early=state.stopped_early,
            flow_config=self.flow_config,
            train_config=self.cfg,
            extra={
                "seconds_per_iteration": (
                    self._step_time / self._steps_here if self._steps_here else None
                ),
                "heldout_log_prob": self.heldout,
                **self._budget_record(wall),
            },
        )

    def _budget_record(self, wall: float) -> dict[str, Any]:
        """What a timed run reports: its budget, the plan and whether the guard ended it."""
        budget = self.cfg.time_budget_s
        if budget is None:
            return {}
        plan = self.budget_plan.to_dict() if self.budget_plan is not None else None
        return {
            "time_budget": {
                "time_budget_s": budget,
                "wall_time_s": wall,
                "plan": plan,
                "stopped_by_budget": self.stopped_by_budget,
            }
        }

    def _final_metrics(self) -> dict[str, Any]:
        """The final NLLs; keeps the held-out rows' log-densities (test, else val) in
        ``self.heldout`` as (split, scores), the reference of calibrated scores."""
        levels, dim = self.data.levels, self.data.shape.dim
        metrics: dict[str, Any] = {}
        for name, xs, cs in self.data.final_parts():
            if xs is None or xs.shape[0] == 0:
                metrics[f"{name}_nll"] = None
                continue
            rows: list[torch.Tensor] = []
            nll, err = self._score(xs, cs, 5, keep=rows if name != "train" else None)
            if rows:
                self.heldout = (name, torch.cat(rows).double().numpy())
            metrics[f"{name}_nll"] = nll
            if levels:
                metrics[f"{name}_bits_per_dim"] = bits_per_dim(-nll, dim, levels)
            if err is not None:
                metrics[f"{name}_nll_stderr"] = err
        return metrics

    # -- helpers --------------------------------------------------------------------------
    def _eval_rows(self, budget_mb: float | None, dtype: torch.dtype) -> int:
        """Rows per scoring chunk: what the memory budget allows, at most eval_batch_size."""
        cfg, fc = self.cfg, self.flow_config
        budget = TrainingSettings().eval_memory_mb if budget_mb is None else budget_mb
        rows = eval_chunk_rows(
            budget, fc.dim, self.method, activations=activation_floats(fc),
            probes=cfg.slq_probes or fc.slq_probes, steps=cfg.slq_steps or fc.slq_steps,
            dtype_bytes=torch.finfo(dtype).bits // 8,
        )  # fmt: skip
        return min(cfg.eval_batch_size, rows)

    def _score(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        seed: int,
        keep: list[torch.Tensor] | None = None,
    ) -> tuple[float, float | None]:
        cfg = self.cfg
        return evaluate_nll(
            self.flow, x, c, method=self.method, batch_size=self.eval_rows,
            probes=cfg.slq_probes, steps=cfg.slq_steps, seed=cfg.seed + seed, keep=keep,
        )  # fmt: skip

    def _elapsed(self) -> float:
        """Wall time of the whole run, earlier sessions (before a resume) included."""
        return self.state.elapsed_s + time.perf_counter() - self._t0

    def _emit(self, phase: str, **kw: Any) -> None:
        if self.progress is None or not self.group.main:
            return
        state, sec = self.state, self._sec_per_it
        last = state.history[-1] if state.history else {}
        base: dict[str, Any] = {
            "phase": phase,
            "iteration": state.iteration,
            "total": self.total,
            "epoch": state.iteration / self.iterations_per_epoch,
            "surrogate_loss": None,
            "val_nll": last.get("val_nll"),
            "val_nll_stderr": last.get("val_nll_stderr"),
            "cg_iterations": None,
            "seconds_per_iteration": sec,
            "eta_s": None
            if sec is None or self.total is None
            else sec * (self.total - state.iteration),
            "lr": state.optimizer.param_groups[0]["lr"],
            "curve": self._curve,
            "loss": self.loss_method,
        }
        base.update(kw)
        self.progress(ProgressEvent(**base))


def train(
    flow_config: FlowConfig | dict,
    splits: Splits,
    train_config: TrainConfig | dict | None = None,
    **options: Any,
) -> TrainResult:
    """Train a CP-Flow on ``splits`` (see :class:`Trainer` for ``options``): the callers'
    one-call form of ``Trainer(...).run()``."""
    return Trainer(flow_config, splits, train_config, **options).run()
