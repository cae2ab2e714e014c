"""Images: digits (8x8, 17 levels) bits/dim, saved models' evaluation and inversion (Table 8),
and the seconds per training step of an image preset.

The digits preset (defaults): 1,500 iterations, batch 32, cosine lr from a per-model Adam lr
chosen on the validation split from a grid (val bits/dim at 1,500 iterations, 2026-11-29):

    CP-Flow   lr 5e-3 2.418 | 1e-2 2.337 | 2e-2 2.289 (chosen)
    coupling  lr 1.25e-3 2.428 | 2.5e-3 2.323 (chosen) | 5e-3 2.344 | 1e-2 2.405 | 2e-2 2.606

    python -m bench run digits --set model=cpflow      # ~10-15 min on 2 CPU cores
    python -m bench run digits --set model=coupling
    python -m bench run digits --set model=gaussian
    python -m bench run digits_eval --set weights=bench/results/images_digits_cpflow.safetensors,bench/results/images_digits_coupling.safetensors
    python -m bench run digits_inversion --set weights=bench/results/images_digits_cpflow.safetensors n=32
    python -m bench run image_step_speed --set preset=mnist device=cuda batch_size=64

Test bits/dim is exact for both flows (dense 64x64 Hessians + Cholesky for CP-Flow; the
coupling log-det is exact by construction), on one seeded dequantisation of the test split.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from bench.registry import BenchmarkError, Option, benchmark
from bench.suites.common import sync, threads_option

PRESET_LR = {"cpflow": 2e-2, "coupling": 2.5e-3}  # chosen on validation (see the docstring)
WEIGHTS = Option("weights", "strs", [], "saved .safetensors of digits models (digits writes them)")
DEQUANT_SEED = 1234  # the one seeded dequantisation of the test images every model scores


# -- library calls -------------------------------------------------------------------------------


def preset_config(preset: str, **overrides):
    """The FlowConfig of an image preset of cpflow-train (digits, mnist, cifar)."""
    from cpflow import FlowConfig
    from training.presets import resolve_preset

    return FlowConfig(**{**resolve_preset(preset)[1], **overrides})


def digits_config(model: str, hidden: int, blocks: list[int], standardization: str):
    """The digits preset's multiscale CP-Flow, or the coupling ablation of equal size."""
    from bench.ablation import coupling_parameter_match
    from cpflow import CPFlow

    scaling = {"pixel": "diagonal", "scalar": "isotropic"}[standardization]
    cfg = preset_config("digits", hidden=hidden, blocks=blocks, standardization=scaling)
    if model == "coupling":
        target = sum(p.numel() for p in CPFlow(cfg).parameters())
        cfg = coupling_parameter_match(cfg, target)
    return cfg


def build_preset_flow(preset: str):
    from cpflow import CPFlow

    return CPFlow(preset_config(preset))


def load_image_flow(path: Path):
    """An image flow saved by the digits benchmark (its config in the file's metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cpflow import CPFlow, FlowConfig

    with safe_open(str(path), framework="pt") as fh:
        cfg = FlowConfig.model_validate_json(fh.metadata()["config"])
    flow = CPFlow(cfg)
    flow.load_state_dict(load_file(str(path)))
    return flow.eval()


def save_image_flow(flow, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in flow.state_dict().items()},
        str(path),
        metadata={"config": json.dumps(flow.config.model_dump(mode="json"))},
    )


def train_digits(cfg, splits, opts):
    """The one trainer (cpflow-train --preset digits runs the same): cosine lr, fresh
    dequantisation noise every batch, exact validation NLL on 100 images (d = 64: exact
    log-dets are affordable), the best validation weights kept."""
    from training.config import TrainConfig
    from training.trainer import Trainer

    tcfg = TrainConfig(
        iterations=opts.iterations, batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed,
        val_every=opts.eval_every, val_max_points=100, schedule="cosine", grad_clip=10.0,
        loss="surrogate", final_train_max_points=1000,
    )  # fmt: skip
    return Trainer(cfg, splits, tcfg).run()


def digits_splits(seed: int = 0):
    from training.images import load_digits_images

    return load_digits_images(seed=seed)


def dequantized(images, levels: int, seed: int) -> torch.Tensor:
    from training.images import dequantize

    return dequantize(images, levels, generator=torch.Generator().manual_seed(seed))


def bits_per_dim_summary(bpd: torch.Tensor) -> dict:
    """Mean bits/dim with its standard error over images (exact log-dets)."""
    return {
        "bits_per_dim": float(bpd.mean()),
        "stderr": float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else 0.0,
        "finite_fraction": float(torch.isfinite(bpd).double().mean()),
        "n": len(bpd),
        "method": "exact",
    }


def per_image_bits_per_dim(flow, y: torch.Tensor, levels: int) -> torch.Tensor:
    """Exact bits/dim of each dequantised image (batches of 64)."""
    from training.images import bits_per_dim

    dim = int(y[0].numel())
    with torch.no_grad():
        out = [flow.log_prob(y[i : i + 64], method="exact") for i in range(0, len(y), 64)]
    return bits_per_dim(torch.cat(out).double(), dim, levels)


# -- benchmarks ---------------------------------------------------------------------------------


@benchmark(
    "digits",
    "digits 8x8 bits/dim: multiscale CP-Flow, the coupling ablation or Gaussian baselines",
    options=[
        Option(
            "model", "str", "cpflow", "which model", choices=("cpflow", "coupling", "gaussian")
        ),
        Option("iterations", "int", 1500, "training iterations"),
        Option("batch_size", "int", 32, "batch size"),
        Option("lr", "float", None, "Adam lr (unset: the preset's lr for the model)"),
        Option("hidden", "int", 16, "hidden channels"),
        Option("blocks", "ints", [2, 2, 2], "blocks per scale"),
        Option("seed", "int", 0, "data split and training seed"),
        Option("eval_every", "int", 250, "iterations between validations"),
        threads_option(1),
        Option("tag", "str", "", "suffix of the side files' names"),
        Option("standardization", "str", "pixel", "input scaling", choices=("pixel", "scalar")),
    ],
)
def digits(opts, ctx) -> dict:
    """Writes results/images_digits_<model><tag>.safetensors (weights), .json and
    _samples.png; digits_eval and digits_inversion read the weights."""
    from training.images import fit_gaussian_bits_per_dim, sample_grid_png

    if opts.lr is None:
        opts.lr = PRESET_LR.get(opts.model, 0.0)
    splits = digits_splits(opts.seed)
    out: dict = {"dataset": "digits", "model": opts.model, "levels": splits.levels}
    if opts.model == "gaussian":
        out.update(fit_gaussian_bits_per_dim(splits, seed=opts.seed))
        return out
    cfg = digits_config(opts.model, opts.hidden, opts.blocks, opts.standardization)
    result = train_digits(cfg, splits, opts)
    flow = result.flow
    t0 = time.perf_counter()
    flow.eval()
    test = bits_per_dim_summary(
        per_image_bits_per_dim(flow, dequantized(splits.test, splits.levels, DEQUANT_SEED),
                               splits.levels)
    )  # fmt: skip
    out.update(
        {
            "config": flow.config.model_dump(mode="json"),
            "parameter_count": result.parameter_count,
            "iterations": result.iterations_run,
            "batch_size": opts.batch_size,
            "lr": opts.lr,
            "standardization": opts.standardization,
            "train_wall_time_s": round(result.wall_time_s, 1),
            "seconds_per_iteration": result.extra["seconds_per_iteration"],
            "best_val_bits_per_dim": result.metrics["val_bits_per_dim"],
            "val_history": result.history,
            "test": test,
            "test_eval_time_s": round(time.perf_counter() - t0, 1),
        }
    )
    stem = ctx.results() / f"images_digits_{opts.model}{opts.tag}"
    save_image_flow(flow, stem.with_suffix(".safetensors"))
    x, info = flow.sample(
        32, generator=torch.Generator().manual_seed(0), images=True, max_iter=100
    )
    stem.with_name(stem.name + "_samples.png").write_bytes(sample_grid_png(x.clamp(0, 1)))
    out["sample_max_residual"] = info.max_residual
    out["weights"] = ctx.relative(stem.with_suffix(".safetensors"))
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2))
    return out


def _weights(opts, least: int) -> list[Path]:
    paths = [Path(p) for p in opts.weights]
    if len(paths) < least:
        raise BenchmarkError(f"give at least {least} path(s): --set weights=A.safetensors,...")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BenchmarkError(f"no such weights file: {', '.join(missing)}")
    return paths


@benchmark(
    "digits_eval",
    "exact test bits/dim of saved digits models, and the paired difference of the first two",
    options=[WEIGHTS, Option("seed", "int", 0, "data split seed (as digits)"), threads_option(1)],
)
def digits_eval(opts, ctx) -> dict:
    """Every model scores the SAME dequantised draw of the test images (the draw
    behind the digits benchmark's test figure), so the per-image difference of two models'
    bits/dim has a much smaller standard error than either mean (image difficulty cancels)."""
    paths = _weights(opts, 1)
    splits = digits_splits(opts.seed)
    y = dequantized(splits.test, splits.levels, DEQUANT_SEED)
    models, bpds = {}, []
    for path in paths:
        flow = load_image_flow(path)
        bpd = per_image_bits_per_dim(flow, y, splits.levels)
        bpds.append(bpd)
        models[path.stem] = {
            "parameter_count": sum(p.numel() for p in flow.parameters()),
            "test": bits_per_dim_summary(bpd),
        }
    out: dict = {"models": models}
    if len(paths) >= 2:
        diff = bpds[0] - bpds[1]
        n = len(diff)
        out["paired"] = {
            "first": paths[0].name,
            "second": paths[1].name,
            "n_test_images": n,
            "first_bits_per_dim": float(bpds[0].mean()),
            "second_bits_per_dim": float(bpds[1].mean()),
            "first_minus_second": float(diff.mean()),
            "paired_stderr": float(diff.std() / math.sqrt(n)),
            "first_better_fraction": float((diff < 0).double().mean()),
        }
    return out


def inversion_inputs(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    test = digits_splits().test[:n]
    shape = (n, 1, 8, 8)
    from training.images import dequantize

    return {
        "digits_test": dequantize(test, 17, generator=g),
        "uniform": torch.rand(shape, generator=g),
        "gaussian": torch.randn(shape, generator=g),
        "rademacher": torch.randint(0, 2, shape, generator=g).float() * 2 - 1,
    }


def reconstruction(flow, x: torch.Tensor, max_iter: int) -> dict[str, float]:
    t0 = time.perf_counter()
    z = flow.transform(x)
    xr, info = flow.inverse(z, max_iter=max_iter)
    err = (xr - x).reshape(len(x), -1)
    finite = torch.isfinite(err).all(-1)
    return {
        "rmse": float(err.pow(2).mean().sqrt()),
        "max_abs_error": float(err.abs().max()),
        "finite_fraction": float(finite.float().mean()),
        "converged_fraction": float(info.converged.float().mean()),
        "max_residual": info.max_residual,
        "iterations": info.iterations,
        "seconds": round(time.perf_counter() - t0, 2),
    }


@benchmark(
    "digits_inversion",
    "Table 8: reconstruction RMSE of inverse(transform(x)), digits and noise images",
    options=[
        WEIGHTS,
        Option("n", "int", 64, "images per input set"),
        Option("seed", "int", 0, "seed of the input sets"),
        threads_option(1),
        Option("max_iter", "int", 100, "L-BFGS iterations per block"),
    ],
)
def digits_inversion(opts, ctx) -> dict:
    """Digits (in distribution) and out-of-distribution noise images (uniform [0,1], Gaussian
    N(0,1), Rademacher +-1), through trained flows saved by the digits benchmark."""
    paths = _weights(opts, 1)
    data = inversion_inputs(opts.n, opts.seed)
    table = {}
    for path in paths:
        flow = load_image_flow(path)
        rows = {name: reconstruction(flow, x, opts.max_iter) for name, x in data.items()}
        worst = max(r["rmse"] for r in rows.values())
        table[path.stem] = {
            "block_type": flow.config.potential.kind,
            "rows": rows,
            "worst_rmse": worst if math.isfinite(worst) else "nan/inf",
        }
    return {"n_per_set": opts.n, "table": table}


@benchmark(
    "image_step_speed",
    "seconds per training iteration of an image preset (surrogate + backward + Adam step)",
    options=[
        Option("preset", "str", "mnist", "image preset", choices=("mnist", "cifar", "digits")),
        Option("device", "str", "cpu", "torch device"),
        Option("batch_size", "int", 64, "batch size"),
        Option("iterations", "int", 10, "timed iterations"),
        Option("warmup", "int", 2, "untimed iterations first"),
    ],
)
def image_step_speed(opts, ctx) -> dict:
    """Inputs are random dequantised images of the preset's shape: speed does not depend on
    content."""
    device = torch.device(opts.device)
    flow = build_preset_flow(opts.preset).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((opts.batch_size, *flow.config.input_shape), generator=gen, device=device)
    flow.initialize(x)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    times, cg_iters = [], []
    for i in range(opts.warmup + opts.iterations):
        sync(opts.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, stats = flow.training_loss(x, generator=gen)
        loss.backward()
        opt.step()
        sync(opts.device)
        if i >= opts.warmup:
            times.append(time.perf_counter() - t0)
            cg_iters.append(stats.cg_iterations_mean)
    times.sort()
    return {
        "preset": opts.preset,
        "device": str(device),
        "batch_size": opts.batch_size,
        "parameters": sum(p.numel() for p in flow.parameters()),
        "seconds_per_iteration_median": times[len(times) // 2],
        "seconds_per_iteration_min": times[0],
        "cg_iterations_mean": sum(cg_iters) / len(cg_iters),
        "iterations_timed": len(times),
    }
