"""One training step in a fresh process; prints its peak memory as JSON (used by core_bench).

Modes: ours_cg (CG surrogate), ours_exact_backprop (back-propagate through the analytic
Hessian's Cholesky log-det), baseline_cg and baseline_exact_backprop (paper algorithms).
CPU: peak RSS (ru_maxrss) and its increase over the RSS just before the step. CUDA: peak
allocated memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_paper as paper
from core_bench import make_model


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=43)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flow, x = make_model(args.dim, args.device)
    x = x[: args.batch]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mb()
    g = torch.Generator().manual_seed(0)
    if args.mode == "ours_cg":
        loss, _ = flow.training_loss(x, generator=g)
    elif args.mode == "ours_exact_backprop":
        loss = -flow.log_prob(x, "exact").mean()
    elif args.mode == "baseline_cg":
        loss, _ = paper.training_loss(flow, x, flow.config.cg_atol, generator=g)
    elif args.mode == "baseline_exact_backprop":
        loss = paper.exact_nll_loss(flow, x)
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "mode": args.mode,
                "peak_mb": peak,
                "before_step_mb": before,
                "step_increment_mb": peak - before,
            }
        )
    )


if __name__ == "__main__":
    main()
