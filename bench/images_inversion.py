"""Table 8: reconstruction RMSE of inverse(transform(x)) for digits (in distribution) and for
out-of-distribution noise images (uniform [0,1], Gaussian N(0,1), Rademacher +-1), for trained
flows saved by bench/images_digits.py. Prints JSON.

    .venv/bin/python bench/images_inversion.py bench/results/images_digits_cpflow.safetensors \
        [more.safetensors ...] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cpflow.multiscale import ImageFlowConfig, MultiscaleCPFlow
from training.images import dequantize, load_digits_images


def load_flow(path: Path) -> MultiscaleCPFlow:
    with safe_open(str(path), framework="pt") as fh:
        cfg = ImageFlowConfig.model_validate_json(fh.metadata()["config"])
    flow = MultiscaleCPFlow(cfg)
    flow.load_state_dict(load_file(str(path)))
    return flow.eval()


def inputs(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    test = load_digits_images().test[:n]
    shape = (n, 1, 8, 8)
    return {
        "digits_test": dequantize(test, 17, generator=g),
        "uniform": torch.rand(shape, generator=g),
        "gaussian": torch.randn(shape, generator=g),
        "rademacher": torch.randint(0, 2, shape, generator=g).float() * 2 - 1,
    }


def reconstruction(flow: MultiscaleCPFlow, x: torch.Tensor, max_iter: int) -> dict[str, float]:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("weights", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=100, help="L-BFGS iterations per block")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = inputs(args.n, args.seed)
    table = {}
    for path in args.weights:
        flow = load_flow(path)
        rows = {name: reconstruction(flow, x, args.max_iter) for name, x in data.items()}
        table[path.stem] = {"block_type": flow.config.block_type, "rows": rows}
        worst = max(r["rmse"] for r in rows.values())
        table[path.stem]["worst_rmse"] = worst if math.isfinite(worst) else "nan/inf"
    print(json.dumps({"n_per_set": args.n, "table": table}, indent=2))


if __name__ == "__main__":
    main()
