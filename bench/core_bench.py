"""Core library benchmark: ours vs the paper's algorithms (bench/baseline_paper.py), one run.

Prints one JSON object: exact log_prob throughput (d=43), inversion time to max residual
<= 1e-5 (d=8, 43), one training step (d=43), peak memory of a training step (CG surrogate vs
back-propagating through the exact log-det, separate processes) and an SLQ-vs-exact table
(d=64, 256). Same model, same weights, same inputs for both sides; ratios are baseline/ours.

    .venv/bin/python bench/core_bench.py [--device cpu|cuda] [--quick] [--threads 2]
        [--only logprob,inverse,train,memory,slq]

Model: float32, 5 blocks, input-augmented ICNN 3 hidden layers x 64, batch 1024, with
parameters perturbed away from initialisation (a stand-in for a trained model, so that the
inverse problems are not trivially the identity).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_paper as paper

from cpflow import CPFlow, FlowConfig


def make_model(
    dim: int,
    device: str,
    *,
    blocks: int = 5,
    hidden: int = 64,
    depth: int = 3,
    seed: int = 0,
    dtype: str = "float32",
) -> tuple[CPFlow, torch.Tensor]:
    """A reproducible non-identity model and a batch-1024 input set for it."""
    g = torch.Generator().manual_seed(seed)
    flow = CPFlow(FlowConfig(dim=dim, blocks=blocks, hidden=hidden, depth=depth, dtype=dtype))
    tdt = flow.config.torch_dtype
    data = torch.randn(4096, dim, generator=g, dtype=tdt) * (1 + torch.rand(dim, generator=g))
    flow.set_standardization(data.mean(0), data.std(0))
    flow.initialize(data[:2048])
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=tdt))
        for b in flow.blocks():
            b.w1.fill_(1.0)
    flow.to(device)
    x = data[2048 : 2048 + 1024].to(device)
    return flow, x


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, device: str, repeats: int) -> tuple[float, object]:
    """Median wall time of fn() over repeats (after one warm-up call), and its last result."""
    return time_interleaved({"fn": fn}, device, repeats)["fn"]


def time_interleaved(fns: dict, device: str, repeats: int) -> dict[str, tuple[float, object]]:
    """{name: (median wall time, last result)} for ways that are compared as a ratio: after one
    warm-up call each, the repeats take turns (a, b, a, b, ...), so drift in the machine's
    load (these machines are shared) hits every way alike instead of biasing the ratio."""
    outs = {}
    for name, fn in fns.items():
        outs[name] = fn()
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), outs[name]) for name in fns}


def bench_logprob(device: str, quick: bool) -> dict:
    flow, x = make_model(43, device)

    def ours():
        with torch.no_grad():
            return flow.log_prob(x, "exact")

    timed = time_interleaved(
        {"ours": ours, "base": lambda: paper.log_prob_exact(flow, x).detach()},
        device,
        1 if quick else 7,
    )
    (t_ours, lp), (t_base, lp_b) = timed["ours"], timed["base"]
    n = x.shape[0]
    return {
        "dim": 43,
        "batch": n,
        "ours_s": t_ours,
        "baseline_s": t_base,
        "ours_samples_per_s": n / t_ours,
        "baseline_samples_per_s": n / t_base,
        "speedup": t_base / t_ours,
        "target": 5.0,
        "max_abs_diff": float((lp - lp_b).abs().max()),
    }


def warped_mixture(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Non-Gaussian data for a trained model: a 4-component mixture, bent coordinate-wise by
    u + 0.8 sin(2u), then mixed by a fixed random matrix."""
    means = 2.5 * torch.randn(4, dim, generator=generator)
    comp = torch.randint(0, 4, (n,), generator=generator)
    u = means[comp] + 0.6 * torch.randn(n, dim, generator=generator)
    mix = torch.eye(dim) + 0.3 * torch.randn(dim, dim, generator=generator) / dim**0.5
    return (u + 0.8 * torch.sin(2 * u)) @ mix.T


def trained_model(dim: int, device: str, steps: int) -> tuple[CPFlow, torch.Tensor]:
    """The bench architecture fitted for ``steps`` Adam steps (CG surrogate, batch 256) on
    :func:`warped_mixture`; returns the flow and N(0, I) draws to invert (what sample() does)."""
    g = torch.Generator().manual_seed(1)
    data = warped_mixture(20_000, dim, g)
    flow = CPFlow(FlowConfig(dim=dim, blocks=5, hidden=64, depth=3))
    flow.set_standardization(data.mean(0), data.std(0))
    flow.initialize(data[:2048])
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (256,), generator=g)
        loss, _ = flow.training_loss(data[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval().to(device)
    return flow, torch.randn(1024, dim, generator=g).to(device)


def bench_inverse(device: str, quick: bool, trained_steps: int = 0) -> dict:
    """Inversion to max residual 1e-5: ours (per-sample L-BFGS / Newton) vs the paper's batch
    L-BFGS. ``trained_steps`` > 0 inverts N(0, I) draws through a model trained on non-Gaussian
    data (harder than the random perturbed model, whose inverses take ~5 iterations)."""
    out = {}
    tol = 1e-5
    max_iter = 300 if quick else 2000  # baseline per-block iteration cap
    for dim in (8, 43):
        if trained_steps:
            flow, z = trained_model(dim, device, trained_steps)
        else:
            flow, x = make_model(dim, device)
            with torch.no_grad():
                z = flow.transform(x)
        # In float32 the paper's summed objective (~1e3) cannot resolve the last digits, so its
        # line search stalls above tol; the same algorithm in float64 (same weights) is what a
        # user of the paper's code must run to reach tol, so it is the time to beat.
        flow64, z64 = copy.deepcopy(flow).double(), z.double()
        timed = time_interleaved(
            {
                "ours": lambda flow=flow, z=z: flow.inverse(z, tol=tol),
                "newton": lambda flow=flow, z=z: flow.inverse(z, tol=tol, solver="newton"),
                "base": lambda flow=flow, z=z: paper.inverse_lbfgs(
                    flow, z, tol, max_iter=max_iter
                ),
                "base64": lambda flow=flow64, z=z64: paper.inverse_lbfgs(
                    flow, z, tol, max_iter=max_iter
                ),
            },
            device,
            1 if quick else 5,
        )
        t_ours, (_xo, info) = timed["ours"]
        t_newton, (_, info_n) = timed["newton"]
        t_base, (_xb, res_b, it_b) = timed["base"]
        t_base64, (_xb64, res_b64, it_b64) = timed["base64"]
        out[f"d{dim}"] = {
            "model": f"trained {trained_steps} steps" if trained_steps else "random perturbed",
            "batch": z.shape[0],
            "tol": tol,
            "ours_lbfgs_s": t_ours,
            "ours_newton_s": t_newton,
            "baseline_s": t_base,
            "speedup_lbfgs": t_base / t_ours,
            "speedup_newton": t_base / t_newton,
            "target": 3.0,
            "ours_max_residual": info.max_residual,
            "ours_all_converged": info.all_converged,
            "ours_iterations": info.iterations,
            "newton_max_residual": info_n.max_residual,
            "newton_all_converged": info_n.all_converged,
            "baseline_max_residual": float(res_b.max()),
            "baseline_iterations": it_b,
            "baseline_reached_tol": bool(res_b.max() <= tol),
            "baseline_max_iter": max_iter,
            "baseline_f64_s": t_base64,
            "baseline_f64_max_residual": float(res_b64.max()),
            "baseline_f64_reached_tol": bool(res_b64.max() <= tol),
            "baseline_f64_iterations": it_b64,
            "speedup_lbfgs_vs_f64_baseline": t_base64 / t_ours,
            "speedup_newton_vs_f64_baseline": t_base64 / t_newton,
        }
        print(json.dumps({f"inverse_d{dim}": out[f"d{dim}"]}), file=sys.stderr, flush=True)
    return out


def bench_train(device: str, quick: bool) -> dict:
    flow, x = make_model(43, device)
    atol = flow.config.cg_atol

    def ours():
        flow.zero_grad()
        loss, stats = flow.training_loss(x, generator=torch.Generator().manual_seed(0))
        loss.backward()
        return stats

    def base():
        flow.zero_grad()
        loss, it = paper.training_loss(flow, x, atol, generator=torch.Generator().manual_seed(0))
        loss.backward()
        return it

    timed = time_interleaved({"ours": ours, "base": base}, device, 1 if quick else 7)
    (t_ours, stats), (t_base, it_b) = timed["ours"], timed["base"]
    return {
        "dim": 43,
        "batch": x.shape[0],
        "cg_atol": atol,
        "ours_s": t_ours,
        "baseline_s": t_base,
        "speedup": t_base / t_ours,
        "target": 1.5,
        "ours_cg_iterations_mean": stats.cg_iterations_mean,
        "ours_cg_iterations_max": stats.cg_iterations_max,
        "baseline_cg_iterations_max": it_b,
    }


def bench_slq(device: str, quick: bool) -> list[dict]:
    rows = []
    for dim in (64, 256):
        flow, x = make_model(dim, device, blocks=2)
        x = x[: 128 if quick else 256]
        with torch.no_grad():
            t_ex, exact = timeit(lambda flow=flow, x=x: flow.log_prob(x, "exact"), device, 1)
            ld = exact - flow._base_log_prob(flow.transform(x)) - flow._const_logdet()
            for probes, steps in ((4, 10), (16, 20), (64, 30)):

                def run(flow=flow, x=x, probes=probes, steps=steps):
                    return flow.log_prob(
                        x,
                        "slq",
                        probes=probes,
                        steps=steps,
                        return_stderr=True,
                        generator=torch.Generator().manual_seed(0),
                    )

                t_s, (est, se) = timeit(run, device, 1)
                rel = ((est - exact).abs() / ld.abs()).mean()
                rows.append(
                    {
                        "dim": dim,
                        "batch": x.shape[0],
                        "blocks": 2,
                        "probes": probes,
                        "steps": steps,
                        "exact_s": t_ex,
                        "slq_s": t_s,
                        "speedup": t_ex / t_s,
                        "mean_rel_err_logdet": float(rel),
                        "mean_abs_err": float((est - exact).abs().mean()),
                        "mean_stderr": float(se.mean()),
                    }
                )
    return rows


def bench_memory(device: str, quick: bool, threads: int) -> dict:
    out = {}
    here = Path(__file__).resolve().parent / "core_memory.py"
    for mode in ("ours_cg", "ours_exact_backprop", "baseline_cg", "baseline_exact_backprop"):
        cmd = [
            sys.executable,
            str(here),
            "--mode",
            mode,
            "--device",
            device,
            "--threads",
            str(threads),
            "--dim",
            "43",
            "--batch",
            "1024",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            out[mode] = {"error": res.stderr[-500:]}
    try:
        cg = out["ours_cg"]
        ex = out["ours_exact_backprop"]
        out["ratio_peak_cg_over_exact"] = cg["peak_mb"] / ex["peak_mb"]
        out["ratio_step_increment_cg_over_exact"] = (
            cg["step_increment_mb"] / ex["step_increment_mb"]
        )
        # The paper's Fig. 2 compares its CG surrogate with back-propagating through ITS exact
        # log-det (d autograd passes with create_graph), which is what baseline_exact_backprop
        # runs; ours_exact_backprop is our own analytic Hessian, itself several times leaner.
        base_ex = out["baseline_exact_backprop"]
        out["ratio_peak_cg_over_paper_exact"] = cg["peak_mb"] / base_ex["peak_mb"]
        out["ratio_peak_ours_exact_over_paper_exact"] = ex["peak_mb"] / base_ex["peak_mb"]
        out["target_ratio"] = 0.2
    except (KeyError, ZeroDivisionError):
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller SLQ batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="logprob,inverse,train,memory,slq")
    ap.add_argument(
        "--trained-steps",
        type=int,
        default=0,
        help="inverse bench on a model trained this many steps (0: random perturbed model)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    parts = args.only.split(",")
    result: dict = {
        "bench": "core",
        "device": args.device,
        "threads": args.threads,
        "quick": args.quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
    if "logprob" in parts:
        result["exact_log_prob"] = bench_logprob(args.device, args.quick)
    if "inverse" in parts:
        result["inverse"] = bench_inverse(args.device, args.quick, args.trained_steps)
    if "train" in parts:
        result["train_step"] = bench_train(args.device, args.quick)
    if "memory" in parts:
        result["train_step_memory"] = bench_memory(args.device, args.quick, args.threads)
    if "slq" in parts:
        result["slq_vs_exact"] = bench_slq(args.device, args.quick)
    result["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
