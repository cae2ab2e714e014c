"""Train a CP-Flow on data splits: Adam on the CG surrogate, validation on the real likelihood.

One loop for every kind of flow: rows, images (integer pixels, dequantised afresh every batch;
val/test once, with fixed noise) and conditional densities p(x | c) (splits with ``contexts``).

The surrogate loss (Algorithm 2) only has the right *gradient*; its value is not an NLL and is
reported as ``surrogate`` only. Every NLL this module reports (validation, final metrics) is
``-flow.log_prob`` with the exact log-det up to ``exact_max_dim`` and SLQ (with its standard
error) above. The model returned is the one with the best validation NLL.
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
from training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    pack_optimizer,
    save_checkpoint,
    unpack_optimizer,
)
from training.config import TrainConfig, iterations_per_epoch
from training.distributed import current
from training.images import bits_per_dim, uniform_dequantize

__all__ = [
    "ProgressEvent",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "TrainingDiverged",
    "TrainingError",
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
    total: int
    epoch: float
    surrogate_loss: float | None  # training objective: the surrogate, or the batch NLL if exact
    val_nll: float | None
    val_nll_stderr: float | None
    cg_iterations: float | None
    seconds_per_iteration: float | None
    eta_s: float | None
    lr: float

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
) -> tuple[float, float | None]:
    """Mean NLL (nats per example) of ``x`` under ``flow`` and, for SLQ, its standard error.

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
    """Learning rate as a pure function of (iteration, decays), so resume reproduces it."""

    def __init__(self, cfg: TrainConfig, total: int) -> None:
        self.cfg = cfg
        self.total = total
        self.decays = 0

    def lr(self, iteration: int) -> float:
        warm = self.cfg.warmup_iterations
        scale = min(1.0, (iteration + 1) / warm) if warm else 1.0
        return scale * self._scheduled(iteration)

    def _scheduled(self, iteration: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "cosine":
            frac = min(iteration, self.total) / max(self.total, 1)
            return cfg.cosine_min_lr + (cfg.lr - cfg.cosine_min_lr) * 0.5 * (
                1 + math.cos(math.pi * frac)
            )
        if cfg.schedule == "plateau":
            return cfg.lr / 10**self.decays
        return cfg.lr

    def on_validation(self, validations_without_improvement: int) -> None:
        """Paper's tabular rule: divide by 10 after ``p`` and again after ``2p`` bad validations."""
        if self.cfg.schedule != "plateau":
            return
        p = self.cfg.plateau_patience
        if self.decays == 0 and validations_without_improvement >= p:
            self.decays = 1
        elif self.decays == 1 and validations_without_improvement >= 2 * p:
            self.decays = 2


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


def train(
    flow_config: FlowConfig | dict,
    splits: Any,
    train_config: TrainConfig | dict | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    on_validate: ValidateHook | None = None,
) -> TrainResult:
    """Train a CP-Flow on ``splits`` (``.train``, ``.val``, ``.test`` arrays, ``.sha256``;
    images (n, C, H, W) of integers with ``.levels``; ``.contexts`` = (train, val, test)
    context rows for a conditional flow p(x | c)).

    Raises TrainingDiverged (naming the iteration) on NaN/inf, TrainingCancelled when
    ``should_stop()`` returns True (after checkpointing). ``on_validate(flow, iteration)`` may
    return extra numbers recorded in the history at each validation (e.g. transport cost).
    """
    t_start = time.perf_counter()
    cfg = (
        train_config
        if isinstance(train_config, TrainConfig)
        else TrainConfig.model_validate(train_config or {})
    )
    group = current()  # one process, or a torchrun group (see training.distributed)
    device = resolve_device(cfg.device)
    if group.world > 1 and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    train_np = np.asarray(splits.train)
    levels = getattr(splits, "levels", None)  # images: integer pixels, dequantised here
    image_shape = tuple(train_np.shape[1:]) if train_np.ndim == 4 else None
    if image_shape is not None:
        train_np = train_np.reshape(train_np.shape[0], -1)
    if train_np.ndim != 2 or train_np.shape[0] == 0:
        raise ValueError("the training split must be a non-empty 2-D array")
    dim = train_np.shape[1]
    contexts = getattr(splits, "contexts", None)
    context_dim = None if contexts is None else np.asarray(contexts[0]).shape[1]
    fcfg = _effective_flow_config(
        flow_config, dim, cfg, context_dim=context_dim, image_shape=image_shape
    )
    dtype = torch.float64 if fcfg.dtype == "float64" else torch.float32
    method = "exact" if dim <= cfg.exact_max_dim else "slq"  # the NLLs reported
    loss_method = cfg.loss_method(dim)
    data_sha = str(getattr(splits, "sha256", ""))

    def as_tensor(a: np.ndarray, width: int = dim, noise_seed: int | None = None) -> torch.Tensor:
        """Rows on the device; images dequantised once with fixed noise (val and test)."""
        arr = np.asarray(a, dtype=np.float64).reshape(-1, width)
        t = torch.as_tensor(arr, dtype=dtype, device=device)
        if levels and noise_seed is not None:
            t = uniform_dequantize(t, levels, torch.Generator().manual_seed(noise_seed))
        return t

    def batch(rows: torch.Tensor) -> torch.Tensor:  # fresh dequantisation noise every batch
        return uniform_dequantize(rows, levels, gen_batch) if levels else rows

    x_train = as_tensor(train_np)
    c_split = (
        [None, None, None] if contexts is None else [as_tensor(c, context_dim) for c in contexts]
    )
    c_train = c_split[0]
    val_np = np.asarray(splits.val) if getattr(splits, "val", None) is not None else None
    if val_np is None or val_np.size == 0:
        val_np, c_split[1] = train_np[: cfg.val_max_points or len(train_np)], c_train
    x_val_all = as_tensor(val_np, noise_seed=cfg.seed + 6)
    x_val = x_val_all[: cfg.val_max_points] if cfg.val_max_points else x_val_all
    c_val_all = c_split[1]
    c_val = None if c_val_all is None else c_val_all[: x_val.shape[0]]
    n_train = x_train.shape[0]
    bs = min(cfg.batch_size * group.world, n_train)  # the global batch
    ipe = iterations_per_epoch(n_train, bs)
    total = cfg.total_iterations(n_train)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        flow = CPFlow(fcfg)
    flow = flow.to(device=device, dtype=dtype)
    params = [p for p in flow.parameters() if p.requires_grad]
    # fused: one kernel for all parameters (a 20-block toy flow has 400 tensors; the per-tensor
    # loop took 21 ms of its 280 ms step, fused 6 ms)
    optimizer = torch.optim.Adam(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
    )
    objective = group.wrap(_Objective(flow, loss_method), device)
    schedule = _Schedule(cfg, total)
    gen_batch = torch.Generator().manual_seed(cfg.seed + 1)
    gen_loss = torch.Generator(device=device).manual_seed(cfg.seed + 2)

    fingerprint = _fingerprint(fcfg, cfg, data_sha)
    iteration = 0
    epoch = 0
    pos = 0
    perm: torch.Tensor | None = None
    history: list[dict[str, Any]] = []
    best_val = math.inf
    best_iteration = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_validations = 0
    stopped_early = False
    elapsed_before = 0.0
    loss_window: list[float] = []
    cg_window: list[float] = []

    saved = load_checkpoint(checkpoint_dir) if (checkpoint_dir and resume) else None
    if saved is not None and saved[1].get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint in {checkpoint_dir} belongs to a different run (model, trainer "
            "settings or data differ); use another directory or resume=False"
        )
    if saved is not None:
        tensors, meta = saved
        flow.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        unpack_optimizer(optimizer, tensors, meta["optimizer"])
        best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
        best_state = best or None
        gen_batch.set_state(tensors["rng.batch"])
        gen_loss.set_state(tensors["rng.loss"].to(torch.uint8))
        perm = tensors.get("perm")
        iteration = int(meta["iteration"])
        epoch = int(meta["epoch"])
        # rows of the epoch already used; a resume with another world size has another batch
        pos = int(meta.get("epoch_rows", int(meta["pos"]) * bs)) // bs
        history = list(meta["history"])
        best_val = float(meta["best_val"]) if meta["best_val"] is not None else math.inf
        best_iteration = int(meta["best_iteration"])
        bad_validations = int(meta["bad_validations"])
        schedule.decays = int(meta["decays"])
        stopped_early = bool(meta.get("stopped_early", False))
        elapsed_before = float(meta.get("elapsed_s", 0.0))
        loss_window = list(meta.get("loss_window", []))
        cg_window = list(meta.get("cg_window", []))
    else:
        mode = "none" if not cfg.standardize else getattr(fcfg, "standardization", "diagonal")
        init_idx = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed))
        init_idx = init_idx[: cfg.init_batch_size].to(device)
        x_init = x_train[init_idx]
        if levels:
            x_init = uniform_dequantize(x_init, levels, torch.Generator().manual_seed(cfg.seed))
        stats_rows = x_init.double().cpu().numpy() if levels else train_np
        stats = fit_standardization(stats_rows, mode)
        if stats is not None:
            c_stats = () if contexts is None else fit_standardization(contexts[0], "diagonal")
            # float64; the flow casts to its own dtype
            flow.set_standardization(
                *(torch.as_tensor(v, device=device) for v in (*stats, *c_stats))
            )
        c_init = None if c_train is None else c_train[init_idx]
        keep = torch.isfinite(x_init).all(dim=1)
        if c_init is not None:
            keep &= torch.isfinite(c_init).all(dim=1)
            c_init = c_init[keep]
        x_init = x_init[keep]
        if x_init.shape[0] > 0:
            with torch.no_grad():
                flow.initialize(x_init, c_init)

    def checkpoint() -> None:
        if not checkpoint_dir or not group.main:
            return
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in flow.state_dict().items()}
        opt_tensors, opt_meta = pack_optimizer(optimizer)
        tensors.update(opt_tensors)
        if best_state is not None:
            tensors.update({f"best.{k}": v for k, v in best_state.items()})
        tensors["rng.batch"] = gen_batch.get_state()
        tensors["rng.loss"] = gen_loss.get_state().cpu()
        if perm is not None:
            tensors["perm"] = perm
        meta = {
            "fingerprint": fingerprint,
            "iteration": iteration,
            "epoch": epoch,
            "pos": pos,
            "epoch_rows": pos * bs,
            "world_size": group.world,
            "history": history,
            "best_val": None if math.isinf(best_val) else best_val,
            "best_iteration": best_iteration,
            "bad_validations": bad_validations,
            "decays": schedule.decays,
            "stopped_early": stopped_early,
            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            "optimizer": opt_meta,
            "loss_window": loss_window,
            "cg_window": cg_window,
            "train_config": cfg.model_dump(mode="json"),
            "flow_config": fcfg.model_dump(mode="json"),
        }
        save_checkpoint(checkpoint_dir, tensors, meta)

    def emit(phase: str, **kw: Any) -> None:
        if progress is None or not group.main:
            return
        base: dict[str, Any] = {
            "phase": phase,
            "iteration": iteration,
            "total": total,
            "epoch": iteration / ipe,
            "surrogate_loss": None,
            "val_nll": history[-1]["val_nll"] if history else None,
            "val_nll_stderr": history[-1].get("val_nll_stderr") if history else None,
            "cg_iterations": None,
            "seconds_per_iteration": sec_per_it,
            "eta_s": None if sec_per_it is None else sec_per_it * (total - iteration),
            "lr": optimizer.param_groups[0]["lr"],
        }
        base.update(kw)
        progress(ProgressEvent(**base))

    def score(x: torch.Tensor, c: torch.Tensor | None, seed: int) -> tuple[float, float | None]:
        return evaluate_nll(
            flow, x, c, method=method, batch_size=cfg.eval_batch_size, probes=cfg.slq_probes,
            steps=cfg.slq_steps, seed=cfg.seed + seed,
        )  # fmt: skip

    def validate() -> None:
        nonlocal best_val, best_iteration, best_state, bad_validations
        flow.eval()
        # rank 0 scores; every rank then decides on the same number
        val_nll, val_err = group.share(score(x_val, c_val, 3) if group.main else None)
        flow.train()
        if not math.isfinite(val_nll):
            raise TrainingDiverged(
                iteration, f"validation NLL is {val_nll}", "lower the learning rate"
            )
        record: dict[str, Any] = {
            "iteration": iteration,
            "epoch": iteration / ipe,
            "surrogate": float(np.mean(loss_window)) if loss_window else None,
            "cg_iterations": float(np.mean(cg_window)) if cg_window else None,
            "val_nll": val_nll,
            "val_nll_stderr": val_err,
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
        }
        if on_validate is not None and group.main:
            extra = on_validate(flow, iteration)
            if extra:
                record.update(extra)
        history.append(record)
        loss_window.clear()
        cg_window.clear()
        if val_nll < best_val - cfg.early_stopping_min_delta or math.isinf(best_val):
            best_val = val_nll
            best_iteration = iteration
            best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
            bad_validations = 0
        else:
            bad_validations += 1
            schedule.on_validation(bad_validations)
        emit("validate")

    sec_per_it: float | None = None
    step_time = 0.0  # optimiser steps only (this process), for seconds/iteration
    steps_here = 0
    flow.train()
    if iteration == 0 and not history:
        validate()  # the starting point: the curve and the "best" both begin here
    while iteration < total and not stopped_early:
        stop = should_stop is not None and group.main and should_stop()
        if group.any(stop)[0]:  # rank 0 asks; every rank stops at the same iteration
            checkpoint()
            raise TrainingCancelled(iteration)
        t_it = time.perf_counter()
        if perm is None:
            perm = torch.randperm(n_train, generator=gen_batch)
        idx = perm[pos * bs : (pos + 1) * bs].to(device)
        pos += 1
        if pos >= ipe:
            pos = 0
            epoch += 1
            perm = None
        x = batch(x_train[idx])  # the global batch; this rank trains on its rows of it
        c = None if c_train is None else c_train[idx]
        start, stop_row = group.rows(len(idx))
        x, c = x[start:stop_row], None if c is None else c[start:stop_row]
        lr = schedule.lr(iteration)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step = iteration + 1
        loss, stats = objective(x, c, gen_loss, (start, len(idx)))
        if group.any(not _finite(loss))[0]:
            hint = (
                "the batch contains non-finite input values; clean the data"
                if not _finite(x)
                else f"lower the learning rate (lr={lr:g}) or set grad_clip"
            )
            raise TrainingDiverged(step, f"{loss_method} loss is {float(loss.detach())}", hint)
        # DDP averages the ranks' gradients: weight each slice so the average is the mean over
        # the global batch (slices differ in size when the batch does not split evenly)
        (loss * (x.shape[0] * group.world / len(idx))).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, cfg.grad_clip if cfg.grad_clip is not None else math.inf
        )
        if not _finite(grad_norm):
            raise TrainingDiverged(
                step, "gradient is not finite", f"lower the learning rate (lr={lr:g})"
            )
        optimizer.step()
        with torch.no_grad():
            bad = [n for n, p in flow.named_parameters() if not _finite(p)]
        if bad:
            raise TrainingDiverged(
                step,
                f"weights became non-finite ({', '.join(bad[:3])})",
                f"lower the learning rate (lr={lr:g}) or set grad_clip",
            )
        iteration = step
        loss_value = float(loss.detach())
        cg_mean = getattr(stats, "cg_iterations_mean", None)
        loss_window.append(loss_value)
        if cg_mean is not None:
            cg_window.append(float(cg_mean))
        dt = time.perf_counter() - t_it
        sec_per_it = dt if sec_per_it is None else 0.9 * sec_per_it + 0.1 * dt
        step_time += dt
        steps_here += 1
        emit(
            "train",
            surrogate_loss=loss_value,
            cg_iterations=None if cg_mean is None else float(cg_mean),
        )
        if iteration % cfg.val_every == 0 or iteration == total:
            validate()
            if (
                cfg.early_stopping_patience is not None
                and bad_validations >= cfg.early_stopping_patience
            ):
                stopped_early = True
        if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0:
            checkpoint()
    if checkpoint_dir:
        checkpoint()

    if best_state is not None:
        flow.load_state_dict(best_state)
    flow.eval()
    emit("evaluate")
    metrics: dict[str, Any] = {"method": method, "train_loss": loss_method}
    if group.main:  # rank 0 alone scores (and publishes); the others return no metrics
        x_tr, c_tr = x_train, c_train
        if cfg.final_train_max_points and n_train > cfg.final_train_max_points:
            sub = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed + 4))
            sub = sub[: cfg.final_train_max_points].to(device)
            x_tr, c_tr = x_train[sub], None if c_train is None else c_train[sub]
        if levels:
            x_tr = uniform_dequantize(x_tr, levels, torch.Generator().manual_seed(cfg.seed + 7))
        test_np = getattr(splits, "test", None)
        x_test = (
            None if test_np is None else as_tensor(np.asarray(test_np), noise_seed=cfg.seed + 8)
        )
        parts = (
            ("train", x_tr, c_tr),
            ("val", x_val_all, c_val_all),
            ("test", x_test, c_split[2]),
        )
        for name, xs, cs in parts:
            if xs is None or xs.shape[0] == 0:
                metrics[f"{name}_nll"] = None
                continue
            nll, err = score(xs, cs, 5)
            metrics[f"{name}_nll"] = nll
            if levels:
                metrics[f"{name}_bits_per_dim"] = bits_per_dim(-nll, dim, levels)
            if err is not None:
                metrics[f"{name}_nll_stderr"] = err
    metrics["best_iteration"] = best_iteration
    metrics["world_size"] = group.world
    metrics["global_batch_size"] = bs
    wall = elapsed_before + time.perf_counter() - t_start
    emit("done")
    return TrainResult(
        flow=flow,
        metrics=metrics,
        history=history,
        wall_time_s=wall,
        parameter_count=parameter_count(flow),
        iterations_run=iteration,
        best_iteration=best_iteration,
        stopped_early=stopped_early,
        flow_config=fcfg,
        train_config=cfg,
        extra={"seconds_per_iteration": step_time / steps_here if steps_here else None},
    )
