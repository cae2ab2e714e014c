"""Seconds per training iteration of an image preset (surrogate + backward + Adam step).

    .venv/bin/python bench/images_step_speed.py --preset mnist --device cuda --batch-size 64

Inputs are random dequantised images of the preset's shape: speed does not depend on content.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cpflow.multiscale import ImageFlowConfig, MultiscaleCPFlow


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mnist", choices=["mnist", "cifar", "digits"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    device = torch.device(args.device)
    cfg = ImageFlowConfig.preset(args.preset)
    flow = MultiscaleCPFlow(cfg).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((args.batch_size, *cfg.input_shape), generator=gen, device=device)
    flow.initialize(x)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    times, cg_iters = [], []
    for i in range(args.warmup + args.iterations):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, stats = flow.training_loss(x, generator=gen)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cg_iters.append(stats.cg_iterations_mean)
    times.sort()
    print(
        json.dumps(
            {
                "preset": args.preset,
                "device": str(device),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "batch_size": args.batch_size,
                "parameters": sum(p.numel() for p in flow.parameters()),
                "seconds_per_iteration_median": times[len(times) // 2],
                "seconds_per_iteration_min": times[0],
                "cg_iterations_mean": sum(cg_iters) / len(cg_iters),
                "iterations_timed": len(times),
            }
        )
    )


if __name__ == "__main__":
    main()
