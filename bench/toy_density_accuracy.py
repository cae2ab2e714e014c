"""Accuracy and cost of the toy sets' true densities (the NLL floors); prints JSON.

For every toy set: the integral of the density on a fine grid (should be 1), the entropy
-int p log p on the same grid (the exact floor, no Monte Carlo error), the floor E[-log p] on
20,000 fresh samples with its standard error, the largest change in log p when
the quadrature is refined 4x (curve-based sets), and the seconds to evaluate 20,000 points.

    .venv/bin/python bench/toy_density_accuracy.py [--num 20000] [--seed 3] [--h 0.05]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from training.datasets import toy
from training.datasets.toy import TOY_DATASETS, sample_toy, toy_log_density

_REFINABLE = {
    "two_moons": toy._logp_two_moons,
    "swiss_roll": toy._logp_swiss_roll,
    "two_spirals": toy._logp_two_spirals,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--h", type=float, default=0.05, help="grid spacing of the integral")
    ap.add_argument("--half-width", type=float, default=5.5)
    args = ap.parse_args()

    centres = np.arange(-args.half_width + args.h / 2, args.half_width, args.h)
    xx, yy = np.meshgrid(centres, centres, indexing="ij")
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    results = {}
    for name in TOY_DATASETS:
        lp_grid = toy_log_density(name, grid)
        dens = np.exp(lp_grid)
        integral = float(dens.sum() * args.h**2)
        # entropy = E[-log p] by the same grid rule: the floor without Monte Carlo error
        plogp = np.where(dens > 0, dens * np.where(np.isfinite(lp_grid), lp_grid, 0.0), 0.0)
        entropy = float(-plogp.sum() * args.h**2)
        x = sample_toy(name, args.num, seed=args.seed, dtype=np.float64)
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
            "num_points": args.num,
        }
        if name in _REFINABLE:
            sub = x[:2000]
            row["quadrature_refine4_max_abs_dlogp"] = float(
                np.max(np.abs(_REFINABLE[name](sub) - _REFINABLE[name](sub, refine=4)))
            )
        results[name] = row
    print(
        json.dumps(
            {"grid_spacing": args.h, "half_width": args.half_width, "seed": args.seed, **results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
