"""Helpers the benchmark suites share: timing, child processes, progress lines, toy data."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from bench.registry import REPO, Option

__all__ = [
    "child_env",
    "log_validation",
    "python_child",
    "sync",
    "threads_option",
    "time_interleaved",
    "timeit",
    "toy_splits",
]


def threads_option(default: int) -> Option:
    return Option("threads", "int", default, "torch intra-op threads")


def sync(device: str) -> None:
    """Wait for queued CUDA work (timings on a GPU are otherwise the launch time)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_interleaved(fns: dict, device: str, repeats: int) -> dict[str, tuple[float, object]]:
    """{name: (median wall time, last result)} for ways that are compared as a ratio: after one
    warm-up call each, the repeats take turns (a, b, a, b, ...), so drift in the machine's
    load (these machines are shared) hits every way alike instead of biasing the ratio."""
    outs = {}
    for name, fn in fns.items():
        outs[name] = fn()
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), outs[name]) for name in fns}


def timeit(fn: Callable[[], object], device: str, repeats: int) -> tuple[float, object]:
    """Median wall time of fn() over repeats (after one warm-up call), and its last result."""
    return time_interleaved({"fn": fn}, device, repeats)["fn"]


def child_env(extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for a child process that imports this repository's packages."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


def python_child(
    code: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a fresh process (own allocator settings, own peak memory)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=check,
    )


def log_validation(ev) -> None:
    """Progress callback of training.trainer.train: one stderr line per validation."""
    if ev.phase == "validate":
        print(
            f"it {ev.iteration}/{ev.total} val_nll {ev.val_nll:.4f} "
            f"s/it {ev.seconds_per_iteration or 0:.3f}",
            file=sys.stderr,
            flush=True,
        )


def toy_splits(dataset: str, num_train: int, num_test: int, seed: int) -> SimpleNamespace:
    """Train / val / fresh-test rows of a toy set, drawn with the generator seeds every toy
    benchmark uses (seed + 1, + 2, + 3), so CP-Flow and the peer flows see the same rows."""
    from training.datasets.toy import sample_toy

    return SimpleNamespace(
        name=dataset,
        train=sample_toy(dataset, num_train, seed=seed + 1),
        val=sample_toy(dataset, 5000, seed=seed + 2),
        test=sample_toy(dataset, num_test, seed=seed + 3),
        sha256="",
    )


def gap_floor(dataset: str, fresh: np.ndarray) -> tuple[np.ndarray, float]:
    """(true log-density of the fresh points, the NLL floor = their mean true NLL)."""
    from training.datasets.toy import toy_log_density

    true_logp = toy_log_density(dataset, np.asarray(fresh, dtype=np.float64))
    return true_logp, float(-np.mean(true_logp))


def fitted_flow(make_data: Callable[[], object], perturb: float = 0.0, generator=None, **config):
    """A dense CP-Flow (FlowConfig(**config)) standardised and initialised on make_data()
    (drawn after the flow is built, so the global RNG order is the flow's first), its
    parameters then moved by perturb * N(0, 1) noise from ``generator`` when perturb > 0."""
    import torch

    from cpflow import CPFlow, FlowConfig

    flow = CPFlow(FlowConfig(**config))
    data = make_data()
    flow.set_standardization(data.mean(0), data.std(0))
    flow.initialize(data)
    if perturb:
        with torch.no_grad():
            for param in flow.parameters():
                param.add_(perturb * torch.randn(param.shape, generator=generator))
    return flow
