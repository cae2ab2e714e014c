"""Peak memory against the data size (issue #31): training with cpflow-train, and scoring.

Each measurement runs in a fresh process and reports that process's peak RSS (VmHWM of
/proc/self/status, read at its end; not ru_maxrss of RUSAGE_CHILDREN, which Linux carries over
from a large parent across fork + exec). Scoring goes through the trainer's scorer with the
rows per chunk that the memory budget (CPFLOW_EVAL_MEMORY_MB) allows, so its peak should not
grow with the number of rows; the report gives the ratio of the largest to the smallest peak.

    python -m bench run memory_scoring --set model=digits rows=1000,2000
    python -m bench run memory_scoring --set model=table rows=1000,5000,20000
    python -m bench run memory_training --set iterations=5
    python -m bench run memory_service --set rows=1000,10000,100000

memory_service measures the HTTP service instead: a real uvicorn process per request size,
its peak RSS before and after one scoring request (JSON, CSV, CSV under a small upload limit).

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


# -- the HTTP service: peak RSS of a real uvicorn process against the request size ------------


def process_peak_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of process ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _request_body(route: str, rows: int, dim: int) -> tuple[str, bytes, str]:
    """(path suffix, body, content type) scoring ``rows`` random rows of ``dim`` values."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(rows, dim))
    if route == "json":
        body = json.dumps({"inputs": x.round(6).tolist()}).encode()
        return "log_prob", body, "application/json"
    text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in x.tolist()) + "\n"
    return "log_prob.csv", text.encode(), "text/csv"


def _serve_and_score(store: Any, dim: int, env: dict[str, str], route: str, rows: int) -> dict:
    """Start a fresh uvicorn process over ``store``, load the model with one row, send one
    request of ``rows`` rows; the server's peak RSS before and after that request."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from bench.registry import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/v1/models/mem"
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=REPO, env=child_env(env), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if (
                    httpx.post(f"{base}/log_prob", json={"inputs": [[0.0] * dim]}).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not answer")
            time.sleep(0.2)
        before = process_peak_mb(server.pid)
        path, body, kind = _request_body(route, rows, dim)
        start = time.perf_counter()
        r = httpx.post(f"{base}/{path}", content=body, headers={"content-type": kind},
                       timeout=600)  # fmt: skip
        seconds = time.perf_counter() - start
        code = r.status_code if r.status_code < 400 else r.json()["error"]["code"]
        after = process_peak_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    return {"route": route, "rows": rows, "body_mb": round(len(body) / 2**20, 2),
            "status": code, "seconds": round(seconds, 2), "peak_before_mb": round(before, 1),
            "peak_after_mb": round(after, 1), "growth_mb": round(after - before, 1)}  # fmt: skip


def _service_summary(runs: list[dict], limits: dict[str, float], max_batch: int) -> dict[str, Any]:
    """Per route, over the answered (200) requests: peak after the largest over peak after the
    smallest; the growth per MiB of body between the two largest of at least ``max_batch``
    rows (the scoring is chunked by CPFLOW_MAX_BATCH, so beyond it only what scales with the
    body grows), and the growth that projects for a body at the route's limit; and the growth
    of the refused ones (over a limit)."""
    out: dict[str, Any] = {}
    for route in dict.fromkeys(r["route"] for r in runs):
        done = [r for r in runs if r["route"] == route and r.get("status") == 200]
        refused = {r["rows"]: [r["status"], r["growth_mb"]] for r in runs
                   if r["route"] == route and r.get("status") not in (200, None)}  # fmt: skip
        row: dict[str, Any] = {"body_limit_mb": limits[route], "refused_growth_mb": refused}
        if len(done) >= 2:
            row.update(
                peak_ratio_largest_over_smallest=round(
                    done[-1]["peak_after_mb"] / done[0]["peak_after_mb"], 3
                ),
                rows_ratio=done[-1]["rows"] / done[0]["rows"],
            )
        full = [r for r in done if r["rows"] >= max_batch]
        if len(full) >= 2:
            (a, b) = full[-2:]
            slope = (b["growth_mb"] - a["growth_mb"]) / max(b["body_mb"] - a["body_mb"], 1e-9)
            row.update(
                growth_per_body_mb=round(slope, 2),
                projected_growth_at_limit_mb=round(
                    b["growth_mb"] + slope * (limits[route] - b["body_mb"]), 1
                ),
            )
        out[route] = row
    return out


@benchmark(
    "memory_service",
    "peak RSS of the HTTP service (real uvicorn) against the rows one request scores",
    options=[
        Option("rows", "ints", [1000, 10000, 100000], "rows per request, one fresh server each"),
        Option("dim", "int", 8, "dimension of the served flow (dense ICNN)"),
        Option(
            "routes",
            "strs",
            ["json", "csv", "csv_tight"],
            "json: POST .../log_prob; csv: "
            "POST .../log_prob.csv; csv_tight: the same under a small upload limit",
            choices=("json", "csv", "csv_tight"),
        ),
        Option("tight_mb", "float", 4.0, "CPFLOW_MAX_UPLOAD_BYTES of csv_tight, in MiB"),
    ],
)
def memory_service(opts, ctx) -> dict:
    """Each (route, rows) runs in a fresh server (so each peak is its own) with the default
    request limits (CPFLOW_MAX_BATCH rows per JSON request and CPFLOW_MAX_BODY_BYTES; CSV
    bodies up to CPFLOW_MAX_UPLOAD_BYTES, scored CPFLOW_MAX_BATCH rows at a time); a request
    over a limit is refused (413 or 422) and its peak shows what the refusal cost."""
    import torch

    from cpflow import CPFlow, FlowConfig
    from model_store import ModelStore
    from service.settings import Settings

    store = ctx.results() / "memory_service_store"
    if not ModelStore(store).versions("mem"):
        torch.manual_seed(0)
        ModelStore(store).publish("mem", CPFlow(FlowConfig(dim=opts.dim, blocks=2, hidden=32)))
    defaults = Settings()
    limits = {"json": defaults.max_body_bytes / 2**20, "csv": defaults.max_upload_bytes / 2**20,
              "csv_tight": opts.tight_mb}  # fmt: skip
    base = {"CPFLOW_STORE_DIR": str(store), "CPFLOW_DEVICE": "cpu", "CPFLOW_LOG_LEVEL": "WARNING",
            "CPFLOW_INFERENCE_THREADS": "1", "CPFLOW_TORCH_THREADS": "1",
            "CPFLOW_REPLICA_VIEW_S": "0", "CPFLOW_VERIFY_INTERVAL_S": "0"}  # fmt: skip
    runs = []
    for route in opts.routes:
        env = dict(base)
        if route == "csv_tight":
            env["CPFLOW_MAX_UPLOAD_BYTES"] = str(int(opts.tight_mb * 2**20))
        for rows in opts.rows:
            try:
                runs.append(_serve_and_score(store, opts.dim, env, route.split("_")[0], rows))
            except Exception as exc:  # noqa: BLE001 - reported in the run's row
                runs.append({"route": route, "rows": rows, "error": repr(exc)})
            runs[-1]["route"] = route
            ctx.log(runs[-1])
    return {"dim": opts.dim, "limits_mb": limits, "runs": runs,
            "summary": _service_summary(runs, limits, defaults.max_batch)}  # fmt: skip
