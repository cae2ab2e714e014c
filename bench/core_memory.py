"""One training step in a fresh process; prints its peak memory as JSON (used by core_bench).

Modes: ours_cg (CG surrogate), ours_exact_backprop (back-propagate through the analytic
Hessian's Cholesky log-det), baseline_cg and baseline_exact_backprop (paper algorithms).
CPU: peak RSS (VmHWM) and its increase over the RSS just before the step. CUDA: peak
allocated memory. (Not ru_maxrss: Linux carries it over from the parent across fork + exec,
so a child started by a big bench process would report the parent's size.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_paper as paper
from core_bench import make_model


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
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
        before = _status_mb("VmRSS")
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
        peak = _status_mb("VmHWM")
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
