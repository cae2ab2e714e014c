"""Peak memory against the data size (issue #31): training with cpflow-train, and scoring.

Each measurement runs in a fresh process and reports that process's peak RSS (VmHWM of
/proc/self/status, read at its end; not ru_maxrss of RUSAGE_CHILDREN, which Linux carries over
from a large parent across fork + exec). Scoring goes through the trainer's scorer with the
rows per chunk that the memory budget (CPFLOW_EVAL_MEMORY_MB) allows, so its peak should not
grow with the number of rows; the report gives the ratio of the largest to the smallest peak.

    python -m bench run memory_scoring --set model=digits rows=1000,2000
    python -m bench run memory_scoring --set model=table rows=1000,5000,20000
    python -m bench run memory_training --set iterations=5

Run them under a cap (``ulimit -v``) on a shared machine: a regression then fails instead of
taking the machine's memory.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from bench.registry import Option, benchmark
from bench.suites.common import child_env, python_child

# Scored flows: the auto recipe's potential for 8x8 grey images, and a dense ICNN at d=64.
MODELS: dict[str, dict[str, Any]] = {
    "digits": {"input_shape": (1, 8, 8), "blocks": [2, 2, 2], "hidden": 16, "depth": 4},
    "table": {"dim": 64, "blocks": 2, "hidden": 64, "depth": 2},
}
BUDGET = Option("budget_mb", "float", 512.0, "CPFLOW_EVAL_MEMORY_MB of the scoring child")


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def score_rows(model: str, rows: int, seed: int = 0) -> dict[str, Any]:
    """Score ``rows`` random rows with ``model`` in THIS process (run it in a fresh one), the
    trainer's way: an initialised flow, chunks sized by the memory budget."""
    import torch

    from cpflow import FlowConfig
    from training.config import TrainConfig
    from training.trainer import Trainer, evaluate_nll

    torch.set_num_threads(1)
    dim = FlowConfig.model_validate({"dim": 64, **MODELS[model]}).dim
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(rows + 256, dim, generator=g).numpy()
    splits = SimpleNamespace(train=data[:256], val=data[:16], test=data[256:], name="random")
    trainer = Trainer(MODELS[model], splits, TrainConfig(iterations=1), resume=False)
    before = peak_rss_mb()
    trainer.flow.eval()
    x = torch.as_tensor(splits.test)
    nll, _ = evaluate_nll(trainer.flow, x, method=trainer.method, batch_size=trainer.eval_rows)
    return {
        "model": model,
        "rows": rows,
        "chunk_rows": trainer.eval_rows,
        "nll": nll,
        "peak_before_scoring_mb": before,
        "peak_rss_mb": peak_rss_mb(),
    }


_SCORE_CHILD = """
import json
from bench.suites.memory import score_rows
print(json.dumps(score_rows({model!r}, {rows})))
"""

_TRAIN_CHILD = """
import json
from bench.suites.memory import peak_rss_mb
from training.cli import main
status = main({argv!r})
print("PEAK " + json.dumps({{"status": status, "peak_rss_mb": peak_rss_mb()}}))
"""


def _child(code: str, extra_env: dict[str, str]) -> dict[str, Any]:
    res = python_child(code, child_env(extra_env), check=False)
    lines = [line for line in res.stdout.strip().splitlines() if line]
    try:
        return json.loads(lines[-1].removeprefix("PEAK "))
    except (IndexError, json.JSONDecodeError):
        return {"error": res.stderr[-800:], "returncode": res.returncode}


@benchmark(
    "memory_scoring",
    "peak RSS of scoring against the number of rows, each size in a fresh process",
    options=[
        Option("model", "str", "digits", "the scored flow", choices=tuple(MODELS)),
        Option("rows", "ints", [1000, 5000, 20000], "numbers of rows scored"),
        BUDGET,
    ],
)
def memory_scoring(opts, ctx) -> dict:
    runs = []
    for rows in opts.rows:
        code = _SCORE_CHILD.format(model=opts.model, rows=rows)
        runs.append(_child(code, {"CPFLOW_EVAL_MEMORY_MB": str(opts.budget_mb)}))
        ctx.log(runs[-1])
    peaks = [r["peak_rss_mb"] for r in runs if "peak_rss_mb" in r]
    growth = max(peaks) / min(peaks) if len(peaks) == len(runs) and peaks else None
    return {"budget_mb": opts.budget_mb, "runs": runs, "peak_ratio_max_over_min": growth}


@benchmark(
    "memory_training",
    "peak RSS of cpflow-train on a data set (the auto recipe unless a preset is given)",
    options=[
        Option("dataset", "str", "digits", "data set name"),
        Option("preset", "str", "auto", "preset"),
        Option("iterations", "ints", [5], "iteration budgets, one fresh process each"),
        BUDGET,
    ],
)
def memory_training(opts, ctx) -> dict:
    runs = []
    store = ctx.results() / "memory_training_store"
    for iterations in opts.iterations:
        argv = [
            "--dataset", opts.dataset, "--preset", opts.preset, "--name", "memory-bench",
            "--iterations", str(iterations), "--store-dir", str(store),
        ]  # fmt: skip
        run = _child(
            _TRAIN_CHILD.format(argv=argv), {"CPFLOW_EVAL_MEMORY_MB": str(opts.budget_mb)}
        )
        runs.append({"iterations": iterations, **run})
        ctx.log(runs[-1])
    return {"dataset": opts.dataset, "preset": opts.preset, "runs": runs}
