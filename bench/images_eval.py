"""Exact test bits/dim of saved digits flows (weights from bench/images_digits.py). Prints JSON.

.venv/bin/python bench/images_eval.py bench/results/images_digits_cpflow_pixel_lr5e-3.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from images_inversion import load_flow

from training.images import evaluate_bits_per_dim, load_digits_images

if __name__ == "__main__":
    torch.set_num_threads(1)
    splits = load_digits_images(seed=0)
    out = {}
    for arg in sys.argv[1:]:
        flow = load_flow(Path(arg))
        out[Path(arg).stem] = {
            "parameter_count": sum(p.numel() for p in flow.parameters()),
            "test": evaluate_bits_per_dim(flow, splits.test, 17, method="exact", batch=64),
        }
    print(json.dumps(out, indent=2))
