"""Toy preset quality vs the true density: exact NLL of fresh generator points vs the floor.

Usage: python bench/train_toy_quality.py --dataset eight_gaussians [--iterations 2000]
Prints one JSON object; writes it and the figures to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from training.datasets.toy import sample_toy, toy_log_density
from training.pipeline import build_configs
from training.plots import make_plots
from training.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"


def _log_validation(ev) -> None:
    if ev.phase == "validate":
        print(
            f"it {ev.iteration}/{ev.total} val_nll {ev.val_nll:.4f} "
            f"s/it {ev.seconds_per_iteration or 0:.3f}",
            file=sys.stderr,
            flush=True,
        )


def _overrides(items: list[str]) -> dict:
    """KEY=JSON pairs (a bare word that is not JSON is taken as a string)."""
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _gap_by_density(true_logp: np.ndarray, model_logp: np.ndarray, bins: int = 5) -> list:
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="eight_gaussians")
    p.add_argument("--preset", default="toy")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-train", type=int, default=50000)
    p.add_argument("--num-test", type=int, default=20000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument(
        "--flow", action="append", default=[], metavar="KEY=JSON", help="FlowConfig override"
    )
    p.add_argument(
        "--train", action="append", default=[], metavar="KEY=JSON", help="TrainConfig override"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    _, flow_kw, cfg, _ = build_configs(
        preset=args.preset,
        dataset=args.dataset,
        flow_overrides=_overrides(args.flow),
        train_overrides={
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "seed": args.seed,
            **_overrides(args.train),
        },
    )
    train_x = sample_toy(args.dataset, args.num_train, seed=args.seed + 1)
    val_x = sample_toy(args.dataset, 5000, seed=args.seed + 2)
    fresh = sample_toy(args.dataset, args.num_test, seed=args.seed + 3)
    splits = SimpleNamespace(name=args.dataset, train=train_x, val=val_x, test=fresh, sha256="")

    t0 = time.perf_counter()
    result = train(flow_kw, splits, cfg, progress=_log_validation)
    wall = time.perf_counter() - t0
    true_logp = toy_log_density(args.dataset, fresh.astype(np.float64))
    floor = float(-np.mean(true_logp))
    x = torch.as_tensor(fresh, dtype=torch.float32)
    with torch.no_grad():
        chunks = [result.flow.log_prob(c, method="exact") for c in x.split(4096)]
    model_logp = torch.cat(chunks).double().numpy()
    nll = float(-np.mean(model_logp))
    tag = f"{args.preset}_{args.dataset}{args.tag}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plots = make_plots(result.flow, train_x, result.history)
    paths = []
    for fname, data in plots.items():
        path = RESULTS / f"{tag}_{fname}"
        path.write_bytes(data)
        paths.append(str(path.relative_to(RESULTS.parent.parent)))
    out = {
        "dataset": args.dataset,
        "preset": args.preset,
        "flow": flow_kw,
        "iterations": result.iterations_run,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "train_config": cfg.model_dump(mode="json"),
        "threads": args.threads,
        "fresh_points": args.num_test,
        "model_nll_fresh": nll,
        "true_nll_floor": floor,
        "gap_nats": nll - floor,
        "gap_by_true_density": _gap_by_density(true_logp, model_logp),
        # (softplus(w0), softplus(w1)) per block: the |x|^2 weight bounds the map's contraction
        "block_coefficients": [
            [float(c) for c in block.coefficients()] for block in result.flow.blocks()
        ],
        "best_iteration": result.best_iteration,
        "val_curve": [(h["iteration"], h["val_nll"]) for h in result.history],
        "wall_time_s": wall,
        "seconds_per_iteration": wall / max(result.iterations_run, 1),
        "step_seconds_per_iteration": result.extra.get("seconds_per_iteration"),
        "parameter_count": result.parameter_count,
        "plots": paths,
    }
    (RESULTS / f"{tag}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
