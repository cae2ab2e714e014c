"""2-D toy sets: model quality against the true density, the floors themselves, peer flows.

    python -m bench run toy_quality --set dataset=rings seed=0 [flow='{"radial_units": 32}']
    python -m bench run toy_density_accuracy [--set num=20000 seed=3 h=0.05]
    python -m bench run peer_flows --set dataset=eight_gaussians

Gap = exact NLL of 20,000 fresh generator points minus their true NLL (the floor); toy_quality
and peer_flows draw the same rows (bench.suites.common.toy_splits).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

from bench.registry import Option, benchmark
from bench.suites.common import gap_floor, log_validation, threads_option, toy_splits

DATASET = Option("dataset", "str", "eight_gaussians", "toy data set (training.datasets.toy)")
SEED = Option("seed", "int", 0, "training seed; data seeds are seed+1 (train), +3 (fresh)")
ITERATIONS = Option("iterations", "int", 2000, "training iterations")
BATCH = Option("batch_size", "int", 128, "batch size")
NUM_TRAIN = Option("num_train", "int", 50000, "training rows drawn from the generator")
NUM_TEST = Option("num_test", "int", 20000, "fresh rows scored against the true density")


# -- library calls (re-point these when the cpflow / training API changes) ----------------------


def train_toy_preset(opts, splits):
    """Train the preset on the toy rows; (result, flow kwargs, train config)."""
    from training.pipeline import build_configs
    from training.recipes import AUTO, auto_recipe
    from training.trainer import Trainer

    _, flow_kw, cfg, _ = build_configs(
        preset=opts.preset,
        dataset=opts.dataset,
        recipe=auto_recipe(splits.train) if opts.preset == AUTO else None,
        flow_overrides=opts.flow,
        train_overrides={
            "iterations": opts.iterations,
            "batch_size": opts.batch_size,
            "seed": opts.seed,
            **opts.train,
        },
    )
    return Trainer(flow_kw, splits, cfg, progress=log_validation).run(), flow_kw, cfg


def model_log_prob(flow, fresh: np.ndarray) -> np.ndarray:
    """Exact log p of the fresh rows, in chunks, as float64."""
    x = torch.as_tensor(fresh, dtype=torch.float32)
    with torch.no_grad():
        chunks = [flow.log_prob(c, method="exact") for c in x.split(4096)]
    return torch.cat(chunks).double().numpy()


def block_coefficients(flow) -> list:
    """(softplus(w0), softplus(w1)) per block: the |x|^2 weight bounds the map's contraction."""
    return [[float(c) for c in block.coefficients()] for block in flow.blocks()]


def toy_plots(flow, train_x: np.ndarray, history: list) -> dict[str, bytes]:
    from training.plots import make_plots

    return make_plots(flow, train_x, history)


# -- benchmarks ---------------------------------------------------------------------------------


def gap_by_density(true_logp: np.ndarray, model_logp: np.ndarray, bins: int = 5) -> list:
    """Where the gap lies: the fresh points split into quintiles of their true log-density
    (lowest first), each with its mean gap and its share of the total (the shares sum to it)."""
    gap = true_logp - model_logp
    return [
        {
            "true_logp_range": [float(true_logp[chunk].min()), float(true_logp[chunk].max())],
            "gap_nats": float(gap[chunk].mean()),
            "share_of_total_nats": float(gap[chunk].sum() / len(gap)),
        }
        for chunk in np.array_split(np.argsort(true_logp), bins)
    ]


@benchmark(
    "toy_quality",
    "toy preset quality: exact NLL of fresh generator points vs the true-density floor",
    options=[
        DATASET,
        Option("preset", "str", "toy", "training preset (auto: chosen from the rows)"),
        ITERATIONS,
        BATCH,
        NUM_TRAIN,
        NUM_TEST,
        threads_option(2),
        SEED,
        Option("tag", "str", "", "suffix of the side files' names"),
        Option("flow", "json", {}, 'FlowConfig overrides, e.g. {"radial_units": 32}'),
        Option("train", "json", {}, 'TrainConfig overrides, e.g. {"grad_clip": 1}'),
    ],
)
def toy_quality(opts, ctx) -> dict:
    splits = toy_splits(opts.dataset, opts.num_train, opts.num_test, opts.seed)
    t0 = time.perf_counter()
    result, flow_kw, cfg = train_toy_preset(opts, splits)
    wall = time.perf_counter() - t0
    true_logp, floor = gap_floor(opts.dataset, splits.test)
    model_logp = model_log_prob(result.flow, splits.test)
    nll = float(-np.mean(model_logp))
    tag = f"{opts.preset}_{opts.dataset}{opts.tag}"
    paths = []
    for fname, data in toy_plots(result.flow, splits.train, result.history).items():
        path = ctx.results() / f"{tag}_{fname}"
        path.write_bytes(data)
        paths.append(ctx.relative(path))
    out = {
        "dataset": opts.dataset,
        "preset": opts.preset,
        "flow": flow_kw,
        "iterations": result.iterations_run,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "train_config": cfg.model_dump(mode="json"),
        "threads": opts.threads,
        "fresh_points": opts.num_test,
        "model_nll_fresh": nll,
        "true_nll_floor": floor,
        "gap_nats": nll - floor,
        "gap_by_true_density": gap_by_density(true_logp, model_logp),
        "block_coefficients": block_coefficients(result.flow),
        "best_iteration": result.best_iteration,
        "val_curve": [(h["iteration"], h["val_nll"]) for h in result.history],
        "wall_time_s": wall,
        "seconds_per_iteration": wall / max(result.iterations_run, 1),
        "step_seconds_per_iteration": result.extra.get("seconds_per_iteration"),
        "parameter_count": result.parameter_count,
        "plots": paths,
    }
    # read by peer_flows (the toy preset's row)
    (ctx.results() / f"{tag}.json").write_text(json.dumps(out, indent=2))
    return out


_REFINABLE = ("two_moons", "swiss_roll", "two_spirals")


@benchmark(
    "toy_density_accuracy",
    "the toy sets' true densities (the NLL floors): integral, entropy, refinement, cost",
    options=[
        Option("num", "int", 20_000, "fresh points per set"),
        Option("seed", "int", 3, "generator seed of the fresh points"),
        Option("h", "float", 0.05, "grid spacing of the integral"),
        Option("half_width", "float", 5.5, "the grid covers [-w, w]^2"),
    ],
)
def toy_density_accuracy(opts, ctx) -> dict:
    """For every toy set: the integral of the density on a fine grid (should be 1), the entropy
    -int p log p on the same grid (the exact floor, no Monte Carlo error), the floor E[-log p]
    on fresh samples with its standard error, the largest change in log p when the quadrature
    is refined 4x (curve-based sets), and the seconds to evaluate the fresh points."""
    from training.datasets import toy
    from training.datasets.toy import TOY_DATASETS, sample_toy, toy_log_density

    h = opts.h
    centres = np.arange(-opts.half_width + h / 2, opts.half_width, h)
    xx, yy = np.meshgrid(centres, centres, indexing="ij")
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    results = {}
    for name in TOY_DATASETS:
        lp_grid = toy_log_density(name, grid)
        dens = np.exp(lp_grid)
        integral = float(dens.sum() * h**2)
        # entropy = E[-log p] by the same grid rule: the floor without Monte Carlo error
        plogp = np.where(dens > 0, dens * np.where(np.isfinite(lp_grid), lp_grid, 0.0), 0.0)
        entropy = float(-plogp.sum() * h**2)
        x = sample_toy(name, opts.num, seed=opts.seed, dtype=np.float64)
        t0 = time.perf_counter()
        lp = toy_log_density(name, x)
        seconds = time.perf_counter() - t0
        row = {
            "integral": integral,
            "integral_error": abs(integral - 1.0),
            "entropy_grid": entropy,
            "floor_nll": float(-lp.mean()),
            "floor_stderr": float(lp.std() / np.sqrt(len(lp))),
            "seconds_per_eval": round(seconds, 3),
            "num_points": opts.num,
        }
        if name in _REFINABLE:
            logp = getattr(toy, f"_logp_{name}")
            sub = x[:2000]
            row["quadrature_refine4_max_abs_dlogp"] = float(
                np.max(np.abs(logp(sub) - logp(sub, refine=4)))
            )
        results[name] = row
    return {"grid_spacing": h, "half_width": opts.half_width, "seed": opts.seed, **results}


def train_peer(kind: str, train_x: np.ndarray, test_x: np.ndarray, opts) -> dict:
    """A zuko NSF or MAF trained on standardised rows; its exact NLL of the fresh rows."""
    import zuko

    torch.manual_seed(opts.seed)
    mean = train_x.mean(0)
    std = train_x.std(0)
    log_jac = -float(np.log(std).sum())  # standardisation is part of the model's density
    xt = torch.as_tensor((train_x - mean) / std, dtype=torch.float32)
    xs = torch.as_tensor((test_x - mean) / std, dtype=torch.float32)
    hidden = [opts.hidden] * 2
    make = zuko.flows.NSF if kind == "NSF" else zuko.flows.MAF
    flow = make(features=2, transforms=opts.transforms, hidden_features=hidden)
    opt = torch.optim.Adam(flow.parameters(), lr=opts.lr)
    gen = torch.Generator().manual_seed(opts.seed)
    t0 = time.perf_counter()
    for _ in range(opts.iterations):
        idx = torch.randint(0, xt.shape[0], (opts.batch_size,), generator=gen)
        loss = -flow().log_prob(xt[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    wall = time.perf_counter() - t0
    with torch.no_grad():
        nll = -float(flow().log_prob(xs).double().mean()) - log_jac
    return {
        "model": f"zuko {kind}",
        "nll_fresh": nll,
        "wall_time_s": wall,
        "seconds_per_iteration": wall / opts.iterations,
        "parameter_count": sum(p.numel() for p in flow.parameters()),
        "config": {"transforms": opts.transforms, "hidden_features": hidden, "lr": opts.lr},
    }


@benchmark(
    "peer_flows",
    "zuko's NSF and MAF at the toy budget beside the CP-Flow toy preset (read from toy_quality)",
    options=[
        DATASET,
        ITERATIONS,
        BATCH,
        NUM_TRAIN,
        NUM_TEST,
        Option("transforms", "int", 5, "zuko transforms"),
        Option("hidden", "int", 64, "zuko hidden features (2 layers)"),
        Option("lr", "float", 1e-3, "Adam learning rate"),
        threads_option(1),
        SEED,
    ],
)
def peer_flows(opts, ctx) -> dict:
    """The CP-Flow row is read from the side file toy_quality writes
    (results dir/toy_<dataset>.json) so each model is trained once."""
    splits = toy_splits(opts.dataset, opts.num_train, opts.num_test, opts.seed)
    train_x = splits.train.astype(np.float64)
    test_x = splits.test.astype(np.float64)
    _, floor = gap_floor(opts.dataset, test_x)
    rows = []
    cp_path = ctx.results_dir / f"toy_{opts.dataset}.json"
    if cp_path.exists():
        cp = json.loads(cp_path.read_text())
        rows.append(
            {
                "model": "CP-Flow (toy preset)",
                "nll_fresh": cp["model_nll_fresh"],
                "wall_time_s": cp["wall_time_s"],
                "seconds_per_iteration": cp["seconds_per_iteration"],
                "parameter_count": cp["parameter_count"],
                "config": cp["flow"],
            }
        )
    for kind in ("NSF", "MAF"):
        rows.append(train_peer(kind, train_x, test_x, opts))
    for row in rows:
        row["gap_nats"] = row["nll_fresh"] - floor
        assert math.isfinite(row["nll_fresh"])
    return {
        "dataset": opts.dataset,
        "iterations": opts.iterations,
        "batch_size": opts.batch_size,
        "fresh_points": opts.num_test,
        "true_nll_floor": floor,
        "models": rows,
    }
