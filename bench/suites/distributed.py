"""Data-parallel training (torch.distributed): samples/s at 1, 2, ... processes, and the test
NLL of an N-process run beside the one-process run with the same global batch and budget.

    python -m bench run ddp_scaling                                    # CPU, 1 and 2 processes
    python -m bench run ddp_scaling --set device=cuda nprocs=1,2,4,8   # one GPU per process

Each run is ``cpflow-train --nproc N`` (torchrun underneath) into a scratch store; its manifest
gives the steady seconds per iteration. Samples/s = global batch / seconds per iteration;
scaling efficiency at N = (samples/s at N) / (N x samples/s at 1, same per-process batch).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.registry import BenchmarkError, Option, benchmark
from bench.suites.common import REPO, child_env


def train_run(store: Path, name: str, nproc: int, batch: int, opts) -> dict:
    """One cpflow-train run; the published manifest's training record."""
    cmd = [sys.executable, "-m", "training.cli", "--dataset", opts.dataset, "--name", name]
    cmd += ["--num-samples", str(opts.num_samples), "--iterations", str(opts.iterations)]
    cmd += ["--batch-size", str(batch), "--val-every", str(opts.iterations), "--no-plots"]
    cmd += ["--quiet", "--store-dir", str(store), "--device", opts.device, "--seed", "0"]
    cmd += ["--nproc", str(nproc), "--lr", str(opts.lr)]
    env = child_env({"OMP_NUM_THREADS": str(opts.threads)})
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    manifest = json.loads((store / name / "1" / "manifest.json").read_text())
    return manifest["training"]


@benchmark(
    "ddp_scaling",
    "data-parallel training: samples/s and scaling efficiency at 1..N processes, test NLL vs one"
    " process at the same global batch",
    options=[
        Option("nprocs", "ints", [1, 2], "process counts (1 first: the reference)"),
        Option("device", "str", "cpu", "cpu (gloo) or cuda (nccl, one GPU per process)"),
        Option("dataset", "str", "wishart_gaussian:16", "cpflow-train data set"),
        Option("num_samples", "int", 20_000, "rows generated for the data set"),
        Option("batch_size", "int", 256, "per-process batch"),
        Option("iterations", "int", 150, "optimiser steps per run"),
        Option("lr", "float", 1e-3, "Adam learning rate (applies to the global batch)"),
        Option("threads", "int", 1, "torch threads per process (OMP_NUM_THREADS)"),
        Option("same_batch_reference", "bool", True, "also train 1 process at N x batch"),
    ],
)
def ddp_scaling(opts, ctx) -> dict:
    if opts.nprocs[0] != 1:
        raise BenchmarkError("nprocs must start with 1 (the reference)")
    rows, base = [], None
    with tempfile.TemporaryDirectory(prefix="cpflow-ddp-") as tmp:
        store = Path(tmp)
        for n in opts.nprocs:
            rec = train_run(store, f"ddp{n}", n, opts.batch_size, opts)
            sec = rec["seconds_per_iteration"]
            rate = rec["global_batch_size"] / sec
            base = rate if n == 1 else base
            row = {
                "processes": n,
                "global_batch": rec["global_batch_size"],
                "seconds_per_iteration": sec,
                "samples_per_s": rate,
                "scaling_efficiency": rate / (n * base),
                "test_nll": rec["metrics"]["test_nll"],
            }
            if n > 1 and opts.same_batch_reference:
                one = train_run(store, f"one{n}", 1, n * opts.batch_size, opts)
                row["one_process_same_global_batch"] = {
                    "test_nll": one["metrics"]["test_nll"],
                    "seconds_per_iteration": one["seconds_per_iteration"],
                    "samples_per_s": one["global_batch_size"] / one["seconds_per_iteration"],
                }
                row["test_nll_difference"] = row["test_nll"] - one["metrics"]["test_nll"]
            rows.append(row)
            ctx.log({"processes": n, "samples_per_s": rate})
    return {"device": opts.device, "dataset": opts.dataset, "runs": rows}
