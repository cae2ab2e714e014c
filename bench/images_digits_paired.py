"""Paired test comparison of two digits models saved by bench/images_digits.py.

Both models score the SAME dequantised draw of the test images; the per-image difference of
their bits/dim has a much smaller standard error than either mean (image difficulty cancels).

    .venv/bin/python bench/images_digits_paired.py \
        bench/results/images_digits_cpflow_X.safetensors bench/results/images_digits_coupling_Y.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cpflow.multiscale import ImageFlowConfig, MultiscaleCPFlow
from training.images import bits_per_dim, dequantize, load_digits_images


def load_model(path: Path) -> MultiscaleCPFlow:
    with safe_open(str(path), framework="pt") as fh:
        config = json.loads(fh.metadata()["config"])
    flow = MultiscaleCPFlow(ImageFlowConfig.model_validate(config))
    flow.load_state_dict(load_file(str(path)))
    return flow.eval()


def per_image_bpd(flow: MultiscaleCPFlow, y: torch.Tensor, levels: int) -> torch.Tensor:
    dim = int(y[0].numel())
    out = [flow.log_prob(y[i : i + 64], method="exact").detach() for i in range(0, len(y), 64)]
    return bits_per_dim(torch.cat(out).double(), dim, levels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--seed", type=int, default=0, help="data split seed (as images_digits.py)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_digits_images(seed=args.seed)
    y = dequantize(splits.test, splits.levels, generator=torch.Generator().manual_seed(1234))
    a = per_image_bpd(load_model(args.first), y, splits.levels)
    b = per_image_bpd(load_model(args.second), y, splits.levels)
    diff = a - b
    n = len(diff)
    print(
        json.dumps(
            {
                "first": args.first.name,
                "second": args.second.name,
                "n_test_images": n,
                "first_bits_per_dim": float(a.mean()),
                "second_bits_per_dim": float(b.mean()),
                "first_minus_second": float(diff.mean()),
                "paired_stderr": float(diff.std() / math.sqrt(n)),
                "first_better_fraction": float((diff < 0).double().mean()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
