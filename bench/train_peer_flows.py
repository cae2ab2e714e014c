"""Peer flows at the toy budget: zuko's NSF and MAF vs the CP-Flow toy preset.

Same data (train rows from the generator, 20,000 fresh test points), same budget (iterations,
batch 128), exact NLL against the true-density floor. The CP-Flow figure is read from
bench/results/toy_<dataset>.json (written by bench/train_toy_quality.py) so each model is
trained once. Usage: python bench/train_peer_flows.py --dataset eight_gaussians
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import zuko

from training.datasets.toy import sample_toy, toy_log_density

RESULTS = Path(__file__).resolve().parent / "results"


def train_peer(kind: str, train_x: np.ndarray, test_x: np.ndarray, args) -> dict:
    torch.manual_seed(args.seed)
    mean = train_x.mean(0)
    std = train_x.std(0)
    log_jac = -float(np.log(std).sum())  # standardisation is part of the model's density
    xt = torch.as_tensor((train_x - mean) / std, dtype=torch.float32)
    xs = torch.as_tensor((test_x - mean) / std, dtype=torch.float32)
    hidden = [args.hidden] * 2
    if kind == "NSF":
        flow = zuko.flows.NSF(features=2, transforms=args.transforms, hidden_features=hidden)
    else:
        flow = zuko.flows.MAF(features=2, transforms=args.transforms, hidden_features=hidden)
    opt = torch.optim.Adam(flow.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        idx = torch.randint(0, xt.shape[0], (args.batch_size,), generator=gen)
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
        "seconds_per_iteration": wall / args.iterations,
        "parameter_count": sum(p.numel() for p in flow.parameters()),
        "config": {"transforms": args.transforms, "hidden_features": hidden, "lr": args.lr},
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="eight_gaussians")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-train", type=int, default=50000)
    p.add_argument("--num-test", type=int, default=20000)
    p.add_argument("--transforms", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # The same generator seeds as bench/train_toy_quality.py: identical train and test rows.
    train_x = sample_toy(args.dataset, args.num_train, seed=args.seed + 1).astype(np.float64)
    test_x = sample_toy(args.dataset, args.num_test, seed=args.seed + 3).astype(np.float64)
    floor = float(-np.mean(toy_log_density(args.dataset, test_x)))
    rows = []
    cp_path = RESULTS / f"toy_{args.dataset}.json"
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
        rows.append(train_peer(kind, train_x, test_x, args))
    for row in rows:
        row["gap_nats"] = row["nll_fresh"] - floor
        assert math.isfinite(row["nll_fresh"])
    out = {
        "dataset": args.dataset,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "fresh_points": args.num_test,
        "true_nll_floor": floor,
        "models": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"peers_{args.dataset}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
