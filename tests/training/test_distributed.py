"""Data-parallel training (torch.distributed, gloo on CPU, real torchrun process groups).

N processes with per-process batch B must take the step one process takes with batch N*B on
the same rows: the global batch is drawn identically on every rank and split, probes are drawn
for the global batch and sliced, and DDP averages weighted slice losses. Tolerances: float64,
so the two ways differ only by summation order (1e-10 relative on gradients; 1e-6 absolute on
parameters after three Adam steps, the issue's bound, which Adam's division by sqrt(v) can
amplify from round-off on near-zero gradients).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model_store import ModelStore

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(nproc: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", *args]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def worker_outputs(tmp_path_factory) -> dict[int, Path]:
    """The worker's files from a 1-process and a 2-process group (one launch each)."""
    outs = {}
    for nproc in (1, 2):
        out = tmp_path_factory.mktemp(f"ddp{nproc}")
        done = _run(nproc, [str(WORKER), str(out)])
        assert done.returncode == 0, done.stderr[-3000:]
        outs[nproc] = out
    return outs


@pytest.mark.parametrize("loss", ["exact", "surrogate"])
def test_two_processes_take_the_one_process_double_batch_step(worker_outputs, loss) -> None:
    def read(nproc: int, mode: str) -> dict[str, torch.Tensor]:
        return load_file(str(worker_outputs[nproc] / f"{mode}-{loss}.safetensors"))

    one, two = read(1, "grad"), read(2, "grad")
    assert one.keys() == two.keys()
    for name in one:  # the gradient DDP averaged equals the double batch's gradient
        torch.testing.assert_close(two[name], one[name], rtol=1e-10, atol=1e-12, msg=name)
    assert max(float(g.abs().max()) for g in one.values()) > 1e-3  # not a vacuous match

    p1, p2 = read(1, "train"), read(2, "train")
    for name in p1:
        assert float((p1[name].double() - p2[name].double()).abs().max()) <= 1e-6, name


def test_cli_nproc_publishes_exactly_one_version(tmp_path) -> None:
    store = tmp_path / "store"
    argv = ["--dataset", "two_moons", "--num-samples", "2000", "--name", "moons", "--quiet"]
    argv += ["--iterations", "40", "--val-every", "20", "--batch-size", "32", "--no-plots"]
    cmd = [sys.executable, "-m", "training.cli", *argv, "--store-dir", str(store)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*cmd, "--nproc", "2"], check=False, capture_output=True, text=True,
                          timeout=240, env=env, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout[done.stdout.index("{") :])  # rank 0 alone prints
    assert printed["world_size"] == 2 and printed["version"] == 1
    assert ModelStore(store).versions("moons") == [1]
    training = ModelStore(store).manifest("moons")["training"]
    assert training["world_size"] == 2 and training["global_batch_size"] == 64
    assert training["config"]["batch_size"] == 32  # per process


def test_a_checkpoint_resumes_under_another_world_size(tmp_path) -> None:
    """One process trains 20 of 40 iterations into a checkpoint; two processes resume it (the
    per-process batch is kept, so the global batch doubles) and finish the budget."""
    ckpt, store = tmp_path / "ckpt", tmp_path / "store"
    base = ["--dataset", "two_moons", "--num-samples", "2000", "--quiet", "--no-plots"]
    base += ["--batch-size", "32", "--val-every", "10", "--checkpoint-dir", str(ckpt)]
    base += ["--checkpoint-every", "10", "--store-dir", str(store)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}

    def cli(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "training.cli", *base, *extra]
        return subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT
        )

    first = cli("--name", "half", "--iterations", "20")
    assert first.returncode == 0, first.stderr[-3000:]
    second = cli("--name", "whole", "--iterations", "40", "--nproc", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    training = ModelStore(store).manifest("whole")["training"]
    assert training["world_size"] == 2 and training["iterations_run"] == 40
    iterations = [h["iteration"] for h in training["history"]]
    assert iterations == [0, 10, 20, 30, 40]
    # iterations 0-20 came from the checkpoint (a restart at twice the batch would differ)
    half = ModelStore(store).manifest("half")["training"]["history"]
    assert [h["val_nll"] for h in training["history"][:3]] == [h["val_nll"] for h in half]
