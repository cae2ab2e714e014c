"""The serving side: HTTP load, training-job latencies, ONNX against torch throughput, glibc
malloc settings, and a store round trip onto a device.

    python -m bench run service_load [--set seconds=4 blocks=5 hidden=32]
    python -m bench run service_runtime [--set dims=2,8,16,43 seconds=2 rounds=3]
    python -m bench run jobs_latency [--set repeats=3 lease=2 heartbeat=0.25]
    python -m bench run store_onnx_throughput [--set dims=2,8,43 threads=1]
    python -m bench run malloc_tuning [--set rounds=3 calls=15 threads=2]
    python -m bench run store_roundtrip --set device=cuda
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.registry import REPO, Option, benchmark
from bench.suites.common import child_env, fitted_flow, python_child, threads_option

# What the Dockerfiles and scripts/up.sh set for serving processes (tests/test_compose.py).
TUNED = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}
_GLIBC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


# -- library calls (re-point these when the cpflow / model_store / service API changes) --------


def model_store(root: Path):
    from model_store import ModelStore

    return ModelStore(root)


def publish_bench2d(root: Path, blocks: int, hidden: int) -> None:
    """A d=2 CP-Flow published as model "bench2d", with 2000 held-out rows' log-densities as
    its calibration reference (as training publishes it), so percentiles can be asked."""
    from model_store.calibration import reference_summary

    torch.manual_seed(0)
    draw = lambda: torch.randn(1024, 2) * torch.tensor([2.0, 0.5]) + 1.0
    flow = fitted_flow(draw, dim=2, blocks=blocks, hidden=hidden, depth=3)
    with torch.no_grad():
        held = flow.log_prob(torch.cat([draw(), draw()]), method="exact")
    calibration = reference_summary(held.numpy(), split="test", method="exact")
    model_store(root).publish("bench2d", flow, training={"calibration": calibration})


@contextmanager
def served_store(
    port: int,
    publish: Callable[[Path], dict[str, int]],
    *,
    app: str = "service.app:create_app",
    keep: tuple[str, ...] = (),
    grace_s: float = 30,
) -> Iterator[subprocess.Popen]:
    """A real uvicorn process (``app``, a factory) on ``port`` over a temporary store filled
    by ``publish(root)`` (which returns model name -> dim), answering and with those models
    loaded; the CPFLOW_* variables of this process reach it only if named in ``keep``.
    Stopped on exit (killed after ``grace_s``: an unconverging sample may still hold a
    thread)."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        models = publish(store)
        drop = tuple(k for k in os.environ if k.startswith("CPFLOW_") and k not in keep)
        settings = {"CPFLOW_STORE_DIR": str(store), "CPFLOW_LOG_LEVEL": "WARNING",
                    "CPFLOW_CACHE_DIR": str(Path(tmp) / "cache")}  # fmt: skip
        env = child_env({**settings, "CPFLOW_DEVICE": "cpu"}, drop=drop)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", app, "--app-dir", str(REPO),
               "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            # Load the models once before timing anything.
            for name, dim in models.items():
                load = {"inputs": [[0.0] * dim]}
                httpx.post(f"{base}/v1/models/{name}/log_prob", json=load, timeout=300)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(grace_s)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def served_bench2d(
    port: int,
    blocks: int,
    hidden: int,
    *,
    app: str = "service.app:create_app",
    keep: tuple[str, ...] = (),
    grace_s: float = 30,
) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """:func:`served_store` over the d=2 ``bench2d`` model."""

    def publish(root: Path) -> dict[str, int]:
        publish_bench2d(root, blocks, hidden)
        return {"bench2d": 2}

    return served_store(port, publish, app=app, keep=keep, grace_s=grace_s)


def create_bench_app():
    """The real service app plus a bare constant route (uvicorn --factory target).

    The constant route sits behind the same middlewares (request id, access log, metrics,
    body limit, auth) and the same uvicorn settings, so the ratio of a model route's
    requests/s to its requests/s is the cost of the model work and the model routes' own
    handling."""
    from service.app import create_app

    app = create_app()

    @app.post("/bench/constant", include_in_schema=False)
    async def constant() -> dict[str, bool]:
        return {"ok": True}

    return app


def create_runtime_bench_app():
    """The bench app plus bare FastAPI routes that call the same stored flows with torch
    (``/bench/bare/{name}/log_prob`` and ``/transport``): no engine, no batcher, no
    onnxruntime; the baseline a plain torch server would give (uvicorn --factory target)."""
    from model_store import ModelStore
    from service.settings import get_settings

    app = create_bench_app()
    store = ModelStore(get_settings().store_dir)
    flows: dict[str, torch.nn.Module] = {}

    def flow_of(name: str):
        if name not in flows:
            flows[name] = store.load(name).flow.eval()
        return flows[name]

    @app.post("/bench/bare/{name}/log_prob", include_in_schema=False)
    def bare_log_prob(name: str, body: dict) -> dict:
        x = torch.tensor(body["inputs"], dtype=torch.float32)
        with torch.no_grad():
            return {"log_prob": flow_of(name).log_prob(x, method="exact").tolist()}

    @app.post("/bench/bare/{name}/transport", include_in_schema=False)
    def bare_transport(name: str, body: dict) -> dict:
        x = torch.tensor(body["inputs"], dtype=torch.float32)
        with torch.no_grad():
            return {"outputs": flow_of(name).transform(x).tolist()}

    return app


def explicit_transform(flow):
    from cpflow.export import ExplicitTransform

    return ExplicitTransform(flow).eval()


def onnx_session(loaded, threads: int):
    from model_store.onnx_runtime import OnnxTransport

    return OnnxTransport.from_loaded(loaded, threads=threads)


def onnx_parity_points(flow, n: int):
    from model_store.onnx_export import parity_points

    return parity_points(flow, n, seed=1)


def job_queue(redis_url: str, queue_name: str, lease: float, heartbeat: float, store_dir: Path):
    from service.queue import JobQueue, connect

    conn = connect(redis_url)
    queue = JobQueue(
        conn,
        queue_name=queue_name,
        lease_s=lease,
        heartbeat_s=heartbeat,
        store_dir=str(store_dir),
    )
    return conn, queue


# -- HTTP load ----------------------------------------------------------------------------------


async def _request(reader, writer, raw: bytes) -> int:
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    await reader.readexactly(length)
    return status


async def _client(port: int, raw: bytes, start: float, stop: float, lat: list, errors: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                break
            status = await _request(reader, writer, raw)
            t1 = time.perf_counter()
            if t0 >= start:  # after warm-up
                (lat if status == 200 else errors).append(t1 - t0)
    finally:
        writer.close()


async def paired_difference(port: int, first: bytes, second: bytes, seconds: float) -> dict:
    """Sends two requests in adjacent pairs on one keep-alive connection (the order flipped
    every pair) for ``seconds`` and returns the median of (second - first) over the pairs: a
    drift in the machine's load hits both halves of a pair alike, so it cancels."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    diffs, a_lat, b_lat = [], [], []
    try:
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            took = {}
            for which in "ab" if len(diffs) % 2 == 0 else "ba":
                t0 = time.perf_counter()
                status = await _request(reader, writer, first if which == "a" else second)
                took[which] = time.perf_counter() - t0 if status == 200 else None
            if None not in took.values():
                a_lat.append(took["a"])
                b_lat.append(took["b"])
                diffs.append(took["b"] - took["a"])
    finally:
        writer.close()
    q25, q50, q75 = (float(np.percentile(np.array(diffs) * 1000, q)) for q in (25, 50, 75))
    return {"pairs": len(diffs), "median_ms": round(q50, 3),
            "iqr_ms": [round(q25, 3), round(q75, 3)],
            "first_p50_ms": _ms_percentile(a_lat, 50), "second_p50_ms": _ms_percentile(b_lat, 50)}  # fmt: skip


def _ms_percentile(lat: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(lat) * 1000, q)), 2) if lat else None


async def healthz_during_long_sample(port: int, seconds: float) -> dict:
    """/healthz latency (one client) while a sampling request that cannot converge runs."""
    body = {"num_samples": 64, "seed": 0, "tolerance": 1e-12, "max_iterations": 2000}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    long = asyncio.create_task(_request(reader, writer, _raw("/v1/models/bench2d/sample", body)))
    await asyncio.sleep(0.5)
    lat: list[float] = []
    errors: list[float] = []
    stop = time.perf_counter() + seconds
    hreader, hwriter = await asyncio.open_connection("127.0.0.1", port)
    get = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    while time.perf_counter() < stop and not long.done():
        t = time.perf_counter()
        status = await _request(hreader, hwriter, get)
        (lat if status == 200 else errors).append(time.perf_counter() - t)
    hwriter.close()
    still_running = not long.done()
    long.cancel()
    writer.close()
    return {
        "healthz_requests": len(lat),
        "healthz_p50_ms": _ms_percentile(lat, 50),
        "healthz_p99_ms": _ms_percentile(lat, 99),
        "healthz_max_ms": round(max(lat) * 1000, 2) if lat else None,
        "sample_still_running_after_s": round(time.perf_counter() - t0, 1)
        if still_running
        else None,
    }


def _median(values: list, digits: int = 2) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), digits) if values else None


def _raw(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def run_scenario(port: int, path: str, body: dict, clients: int, seconds: float) -> dict:
    raw = _raw(path, body)
    warm = min(1.0, seconds / 4)
    start = time.perf_counter() + warm
    stop = start + seconds
    lat: list[float] = []
    errors: list[float] = []
    await asyncio.gather(*(_client(port, raw, start, stop, lat, errors) for _ in range(clients)))
    return {
        "requests": len(lat),
        "errors": len(errors),
        "rps": round(len(lat) / seconds, 1),
        "p50_ms": _ms_percentile(lat, 50),
        "p99_ms": _ms_percentile(lat, 99),
    }


def _v2_body(rows: list[list[float]]) -> dict:
    data = [v for row in rows for v in row]
    tensor = {"name": "input", "shape": [len(rows), 2], "datatype": "FP32", "data": data}
    return {"inputs": [tensor], "parameters": {"method": "exact"}}


def _scenarios(only: list[str] | None) -> dict[str, tuple[str, dict]]:
    rng = np.random.default_rng(0)
    scenarios = {
        "constant": ("/bench/constant", {"inputs": [[0.5, 1.0]], "method": "exact"}),
        "log_prob_exact_b1": ("/v1/models/bench2d/log_prob", {"inputs": [[0.5, 1.0]], "method": "exact"}),
        "log_prob_exact_b256": ("/v1/models/bench2d/log_prob",
                                {"inputs": rng.normal(1, 1, (256, 2)).tolist(), "method": "exact"}),
        # the same rows with their percentiles and 1% outlier flags (calibrated scores)
        "log_prob_exact_b256_percentile": ("/v1/models/bench2d/log_prob",
                                           {"inputs": rng.normal(1, 1, (256, 2)).tolist(),
                                            "method": "exact", "outlier_level": 0.01}),
        "sample_16": ("/v1/models/bench2d/sample", {"num_samples": 16, "seed": 0}),
        "transport_forward_b1": ("/v1/models/bench2d/transport", {"inputs": [[0.5, 1.0]]}),
        # the same exact log_prob through the Open Inference Protocol route (JSON tensors)
        "v2_log_prob_exact_b1": ("/v2/models/bench2d/infer", _v2_body([[0.5, 1.0]])),
        "v2_log_prob_exact_b256": ("/v2/models/bench2d/infer",
                                   _v2_body(rng.normal(1, 1, (256, 2)).tolist())),
    }  # fmt: skip
    if only:
        scenarios = {k: v for k, v in scenarios.items() if k in only or k == "constant"}
    return scenarios


SCENARIOS = tuple(_scenarios(None))


@benchmark(
    "service_load",
    "HTTP load: requests/s and p50/p99 latency per route and concurrency (real uvicorn)",
    options=[
        Option("seconds", "float", 4.0, "measured time per scenario"),
        Option("blocks", "int", 5, "blocks of the served d=2 model"),
        Option("hidden", "int", 32, "hidden units of the served model"),
        Option("port", "int", 8765, "port of the server"),
        Option("concurrency", "ints", [1, 16], "concurrent clients"),
        Option("only", "strs", None, "scenarios to run (constant always runs)", SCENARIOS),
        Option("rounds", "int", 3, "rounds over all scenarios; medians reported"),
        Option("paired_seconds", "float", 12.0, "/v1 and /v2 log_prob sent in adjacent pairs"),
    ],
)
def service_load(opts, ctx) -> dict:
    """Starts a real uvicorn process on a temporary store holding one d=2 CP-Flow, then drives
    it with keep-alive HTTP/1.1 clients (asyncio, one connection per concurrent client) for
    each scenario: a bare constant route (the baseline), exact log_prob with batch 1 and 256,
    sample (16 rows) and forward transport (batch 1), each at 1 and 16 concurrent clients.

    The clients run on the same machine as the server, so on few cores they compete with it
    for CPU; the overhead ratio (model route / constant route at equal concurrency) is the
    figure that carries over between machines. What /v2 adds to /v1 (one-row exact log_prob)
    is taken from adjacent request pairs on one connection (``paired_seconds``), since a p50
    difference between scenarios run one after the other carries the load drift between them.
    The cost of calibrated scores (percentiles and 1% outlier flags of 256 rows) is taken the
    same way, as adjacent pairs with and without (``percentile_b256_paired``), beside its
    in-process microseconds (``calibration_in_process``)."""
    import httpx

    scenarios = _scenarios(opts.only)
    base = f"http://127.0.0.1:{opts.port}"
    keep = ("CPFLOW_INFERENCE_THREADS", "CPFLOW_TORCH_THREADS", "CPFLOW_BATCH_WAIT_MS",
            "CPFLOW_RATE_LIMIT", "CPFLOW_RATE_LIMIT_STORAGE", "CPFLOW_REDIS_URL")  # fmt: skip
    app = "bench.suites.service:create_bench_app"
    with served_bench2d(opts.port, opts.blocks, opts.hidden, app=app, keep=keep, grace_s=10):
        ready = httpx.get(f"{base}/readyz").json()
        rounds: list[dict[str, dict]] = []
        for _ in range(opts.rounds):
            one = {}
            for name, (path, body) in scenarios.items():
                for c in opts.concurrency:
                    one[f"{name}@c{c}"] = asyncio.run(
                        run_scenario(opts.port, path, body, c, opts.seconds)
                    )
            rounds.append(one)
        paired = _paired_v1_v2(opts.port, scenarios, opts.paired_seconds)
        percentile = _paired_percentile(opts.port, scenarios, opts.paired_seconds)
        busy = asyncio.run(healthz_during_long_sample(opts.port, opts.seconds))
        metrics = httpx.get(f"{base}/metrics").text

    # Medians over rounds; each ratio is taken within a round (same load), then the median.
    results = {}
    for key in rounds[0]:
        runs = [r[key] for r in rounds]
        results[key] = {
            "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            **{f: _median([r[f] for r in runs]) for f in ("rps", "p50_ms", "p99_ms")},
            "rps_per_round": [r["rps"] for r in runs],
        }
    ratios = {}
    for name in scenarios:
        if name == "constant":
            continue
        for c in opts.concurrency:
            per_round = [
                r[f"{name}@c{c}"]["rps"] / r[f"constant@c{c}"]["rps"]
                for r in rounds
                if r[f"constant@c{c}"]["rps"]
            ]
            ratios[f"{name}@c{c}"] = {
                "median": _median(per_round, 3),
                "per_round": [round(v, 3) for v in per_round],
            }
    prefixes = ("cpflow_microbatch_requests_sum", "cpflow_microbatch_requests_count")
    return {
        **_load_summary(opts, ready, results, ratios, busy),
        "v2_minus_v1_p50_ms": _v2_overhead(rounds, opts.concurrency),
        "v2_minus_v1_paired_ms": paired,
        "target_v2_minus_v1_p50_ms": 0.5,
        "percentile_b256_paired": percentile,
        "calibration_in_process": calibration_cost_us(),
        "target_percentile_b256_relative": 0.05,
        "microbatch": [ln for ln in metrics.splitlines() if ln.startswith(prefixes)],
    }


def _paired_v1_v2(port: int, scenarios: dict, seconds: float) -> dict | None:
    """What /v2 adds to /v1 for a one-row exact log_prob, from adjacent pairs (one client)."""
    v1, v2 = scenarios.get("log_prob_exact_b1"), scenarios.get("v2_log_prob_exact_b1")
    if v1 is None or v2 is None:
        return None
    return asyncio.run(paired_difference(port, _raw(*v1), _raw(*v2), seconds))


def _paired_percentile(port: int, scenarios: dict, seconds: float) -> dict | None:
    """What percentiles and outlier flags add to a 256-row exact log_prob, from adjacent pairs
    (one client), also relative to the plain request's p50."""
    plain, calibrated = (
        scenarios.get("log_prob_exact_b256"),
        scenarios.get("log_prob_exact_b256_percentile"),
    )
    if plain is None or calibrated is None:
        return None
    out = asyncio.run(paired_difference(port, _raw(*plain), _raw(*calibrated), seconds))
    base = out["first_p50_ms"]
    out["relative"] = round(out["median_ms"] / base, 4) if base else None
    return out


def calibration_cost_us(rows: int = 256, repeats: int = 2000) -> dict:
    """In-process microseconds (median of ``repeats``) of what calibrated scores add per
    ``rows``-row batch: the percentiles with their 1% flags, and the drift window's record
    (which every scored batch of a calibrated version pays, asked or not)."""
    from model_store.calibration import Reference, reference_summary
    from service.drift import DriftMonitor
    from service.metrics import ServiceMetrics
    from service.settings import Settings

    rng = np.random.default_rng(0)
    record = reference_summary(rng.normal(size=2000), split="test", method="exact")
    reference = Reference.from_manifest({"training": {"calibration": record}})
    assert reference is not None
    lp = rng.normal(size=rows).astype(np.float32)
    monitor = DriftMonitor(Settings(drift_storage="memory"), ServiceMetrics())

    def timed(fn: Callable[[], object]) -> float:
        took = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            took.append(time.perf_counter() - t0)
        return round(float(np.median(took)) * 1e6, 2)

    from service.schemas import LogProbResponse

    head = {"model": "m", "version": 1, "method": "exact", "stderr": None}
    plain = {**head, "log_prob": lp.tolist()}
    pct = reference.percentiles(lp)
    calibrated = {**plain, "percentile": pct.tolist(), "outlier": (pct < 0.01).tolist(),
                  "outlier_level": 0.01}  # fmt: skip
    return {
        "rows": rows,
        "percentile_and_flag_us": timed(lambda: reference.percentiles(lp) < 0.01),
        "drift_record_us": timed(lambda: monitor.record("m", 1, reference, lp)),
        # the answer's JSON (validated and serialised as the route's response model)
        "response_json_us": timed(lambda: LogProbResponse(**plain).model_dump_json()),
        "response_json_with_percentile_us": timed(
            lambda: LogProbResponse(**calibrated).model_dump_json()
        ),
    }


def _v2_overhead(rounds: list[dict[str, dict]], concurrency: list[int]) -> dict:
    """p50 of the one-row exact log_prob under /v2 minus the same under /v1, per concurrency:
    taken within each round (same load on the machine), then the median over rounds."""
    out = {}
    for c in concurrency:
        v1, v2 = f"log_prob_exact_b1@c{c}", f"v2_log_prob_exact_b1@c{c}"
        per_round = [
            r[v2]["p50_ms"] - r[v1]["p50_ms"]
            for r in rounds
            if v1 in r and v2 in r and r[v1]["p50_ms"] is not None and r[v2]["p50_ms"] is not None
        ]
        if per_round:
            out[f"c{c}"] = {
                "median": _median(per_round, 3),
                "per_round": [round(v, 3) for v in per_round],
            }
    return out


def _load_summary(opts, ready: dict, results: dict, ratios: dict, busy: dict) -> dict:
    """The service_load figures other than the v1/v2 comparison and the batcher counters."""
    return {
        "model": {"dim": 2, "blocks": opts.blocks, "hidden": opts.hidden, "depth": 3},
        "server": {"workers": 1, "device": ready.get("device"),
                   "inference_threads": os.environ.get("CPFLOW_INFERENCE_THREADS", "default"),
                   "torch_threads": os.environ.get("CPFLOW_TORCH_THREADS", "default"),
                   "rate_limit": os.environ.get("CPFLOW_RATE_LIMIT"),
                   "rate_limit_storage": os.environ.get("CPFLOW_RATE_LIMIT_STORAGE", "auto")},
        "loadavg_1m": os.getloadavg()[0],
        "results": results,
        "rps_ratio_to_constant_route": ratios,
        "healthz_while_sampling": busy,
        "target_log_prob_exact_b1_at_c16_ratio": 0.30,
    }  # fmt: skip


def _publish_runtime_models(dims: list[int], blocks: int, hidden: int, cost: dict):
    """publish(root) for :func:`served_store`: one model per dimension, exported as training
    publishes (ONNX forward transport, and exact log-density up to d = 16), recording each
    publish's seconds and file sizes in ``cost``."""

    def publish(root: Path) -> dict[str, int]:
        store = model_store(root)
        for dim in dims:
            gen = torch.Generator().manual_seed(dim)
            scale = torch.linspace(0.5, 2.0, dim)
            flow = fitted_flow(lambda d=dim, s=scale, g=gen: torch.randn(2048, d, generator=g) * s,
                               dim=dim, blocks=blocks, hidden=hidden, depth=3)  # fmt: skip
            t0 = time.perf_counter()
            store.publish(f"plain{dim}", flow, export_onnx=False)
            plain_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            published = store.publish(f"bench{dim}", flow, export_onnx=True)
            info = published.manifest["onnx"]
            cost[dim] = {
                "publish_s_without_exports": round(plain_s, 3),
                "publish_s_with_exports": round(time.perf_counter() - t0, 2),
                "bytes": {f: (published.path / f).stat().st_size
                          for f in published.manifest["files"]},
                "forward_exported": info.get("exported"),
                "log_prob_exported": info.get("log_prob", {}).get("exported"),
                "log_prob_reason": info.get("log_prob", {}).get("reason"),
            }  # fmt: skip
        return {f"bench{d}": d for d in dims}

    return publish


@benchmark(
    "service_runtime",
    "cpflow-serve (onnxruntime where exported) against a bare FastAPI torch route over the "
    "same stored flow: one-row p50 and 1,024-row throughput, per d, interleaved (real uvicorn)",
    options=[
        Option("dims", "ints", [2, 8, 16, 43], "model dimensions (log-prob export up to 16)"),
        Option("seconds", "float", 2.0, "measured time per scenario and side"),
        Option("rounds", "int", 3, "rounds (sides alternate first); medians reported"),
        Option("rows", "int", 1024, "rows of the throughput requests"),
        Option("blocks", "int", 5, "blocks of the served models"),
        Option("hidden", "int", 32, "hidden units of the served models"),
        Option("port", "int", 8766, "port of the server"),
        Option("ops", "strs", ["log_prob", "transport"], "operations",
               ("log_prob", "transport")),
    ],
)  # fmt: skip
def service_runtime(opts, ctx) -> dict:
    """One uvicorn process serves both sides, behind the same middlewares and settings:
    cpflow-serve's routes (/v1/models/bench{d}/log_prob, exact, and /transport, forward: the
    engine, the micro-batcher and the runtime CPFLOW_RUNTIME picks) and bare FastAPI routes
    that call the same stored flow's torch methods directly. One client at a time, the two
    sides interleaved within each round (alternating which goes first), so both see the same
    machine load. Ratios are taken within a round, then the median over rounds:
    p50_ratio = serve p50 / bare p50 (one row), throughput_ratio = serve rps / bare rps."""
    import httpx

    cost: dict = {}
    base = f"http://127.0.0.1:{opts.port}"
    keep = ("CPFLOW_INFERENCE_THREADS", "CPFLOW_TORCH_THREADS", "CPFLOW_RUNTIME")
    publish = _publish_runtime_models(opts.dims, opts.blocks, opts.hidden, cost)
    rng = np.random.default_rng(0)
    app = "bench.suites.service:create_runtime_bench_app"
    with served_store(opts.port, publish, app=app, keep=keep, grace_s=10):
        runtime = {d: httpx.get(f"{base}/v1/models/bench{d}").json()["runtime"]
                   for d in opts.dims}  # fmt: skip
        rounds: list[dict[str, dict]] = []
        for r in range(opts.rounds):
            one: dict[str, dict] = {}
            for dim in opts.dims:
                for op in opts.ops:
                    for rows in (1, opts.rows):
                        x = rng.normal(0.0, 1.0, (rows, dim)).tolist()
                        body = {"inputs": x, **({"method": "exact"} if op == "log_prob" else {})}
                        sides = {"serve": f"/v1/models/bench{dim}/{op}",
                                 "bare": f"/bench/bare/bench{dim}/{op}"}  # fmt: skip
                        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                        key = f"d{dim}/{op}/rows{rows}"
                        one[key] = {side: asyncio.run(run_scenario(
                            opts.port, sides[side], body, 1, opts.seconds)) for side in order}  # fmt: skip
            rounds.append(one)

    results = {}
    for key in rounds[0]:
        runs = [r[key] for r in rounds]
        entry: dict = {}
        for side in ("serve", "bare"):
            entry[side] = {f: _median([r[side][f] for r in runs]) for f in ("p50_ms", "rps")}
            entry[side]["errors"] = sum(r[side]["errors"] for r in runs)
        p50 = [r["serve"]["p50_ms"] / r["bare"]["p50_ms"] for r in runs if r["bare"]["p50_ms"]]
        rps = [r["serve"]["rps"] / r["bare"]["rps"] for r in runs if r["bare"]["rps"]]
        entry["p50_ratio"] = _median(p50, 3)
        entry["throughput_ratio"] = _median(rps, 3)
        entry["p50_ratio_per_round"] = [round(v, 3) for v in p50]
        entry["throughput_ratio_per_round"] = [round(v, 3) for v in rps]
        results[key] = entry
    return {
        "models": {"dims": opts.dims, "blocks": opts.blocks, "hidden": opts.hidden, "depth": 3},
        "server": {"workers": 1, "device": "cpu",
                   "runtime_setting": os.environ.get("CPFLOW_RUNTIME", "auto"),
                   "inference_threads": os.environ.get("CPFLOW_INFERENCE_THREADS", "default"),
                   "torch_threads": os.environ.get("CPFLOW_TORCH_THREADS", "default")},
        "runtime_by_model": runtime,
        "publish_cost": cost,
        "loadavg_1m": os.getloadavg()[0],
        "results": results,
        "targets": {"p50_ratio_rows1_at_most": 0.4, "throughput_ratio_rows1024_at_least": 1.2},
    }  # fmt: skip


# -- training-job latencies ---------------------------------------------------------------------

LONG = {"iterations": 1_000_000, "batch_size": 32, "val_every": 50, "lr": 1e-3}
TINY = {"blocks": 1, "hidden": 8, "depth": 1, "dim": 2}


def _until(predicate, timeout: float = 120.0, step: float = 0.02) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if predicate():
            return time.perf_counter() - start
        time.sleep(step)
    raise TimeoutError("condition not reached")


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "cpflow-worker"), "--log-level", "WARNING"],
            env=child_env(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@benchmark(
    "jobs_latency",
    "training-job machinery: pick-up, cancel and worker-loss latencies (real workers, Redis)",
    options=[
        Option("repeats", "int", 3, "jobs per measurement"),
        Option("lease", "float", 2.0, "job lease seconds (production: 60)"),
        Option("heartbeat", "float", 0.25, "heartbeat seconds (production: 5)"),
        Option("redis_url", "str", "redis://127.0.0.1:6379/14", "Redis to use"),
    ],
)
def jobs_latency(opts, ctx) -> dict:
    """Starts real cpflow-worker processes on the shared Redis (a queue name of its own,
    deleted afterwards) and a temporary store, and measures, over ``repeats`` jobs each:
    pickup_s (submit -> running: RQ dequeue + fork of the work horse), cancel_running_s
    (cancel of a running job -> cancelled), orphan_detect_s (SIGKILL of the worker -> its job
    failed, the horse notices) and lease_detect_s (SIGKILL of worker and horse -> a reader sees
    failed on lease expiry)."""
    tmp = Path(tempfile.mkdtemp(prefix="cpflow-jobs-bench-"))
    store = model_store(tmp / "store")
    data = np.random.default_rng(0).normal(size=(400, 2))
    ds = store.datasets.put(data, "bench")
    queue_name = f"cpflow-bench-{uuid.uuid4().hex[:8]}"
    conn, queue = job_queue(opts.redis_url, queue_name, opts.lease, opts.heartbeat, tmp / "store")
    env = {
        "CPFLOW_STORE_DIR": str(tmp / "store"),
        "CPFLOW_REDIS_URL": opts.redis_url,
        "CPFLOW_QUEUE_NAME": queue_name,
        "CPFLOW_WORKER_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    spec = {"model_name": "bench", "dataset": {"id": ds.id}, "model": TINY, "training": LONG,
            "plots": False}  # fmt: skip

    def submit() -> str:
        return queue.submit(spec, model_name="bench", dataset_id=ds.id)["id"]

    def status(job_id: str) -> str:
        return queue.get(job_id)["status"]

    def running_with_progress(job_id: str) -> bool:
        job = queue.get(job_id)
        return job["status"] == "running" and (job["progress"] or {}).get("iteration", 0) > 0

    out: dict[str, list[float]] = {
        "pickup_s": [], "cancel_running_s": [], "orphan_detect_s": [], "lease_detect_s": [],
    }  # fmt: skip
    workers: list[subprocess.Popen] = []
    try:
        worker = _worker(env, tmp / "worker.log")
        workers.append(worker)
        warm = submit()  # the first job waits for the worker to boot
        _until(lambda: status(warm) == "running", timeout=180)
        queue.cancel(warm)
        _until(lambda: status(warm) == "cancelled")
        for _ in range(opts.repeats):
            job_id = submit()
            out["pickup_s"].append(_until(lambda j=job_id: status(j) == "running"))
            _until(lambda j=job_id: running_with_progress(j))
            queue.cancel(job_id)
            out["cancel_running_s"].append(_until(lambda j=job_id: status(j) == "cancelled"))
            ctx.log("pickup/cancel", out["pickup_s"][-1], out["cancel_running_s"][-1])
        _kill(worker.pid)  # from here on, one fresh worker per measurement
        for kind in ("orphan_detect_s", "lease_detect_s"):
            for _ in range(opts.repeats):
                worker = _worker(env, tmp / "worker.log")
                workers.append(worker)
                job_id = submit()
                _until(lambda j=job_id: running_with_progress(j), timeout=180)
                raw = conn.hget(f"cpflow:{queue_name}:job:{job_id}", "worker").decode()
                horse = int(raw.rsplit(":", 1)[1])
                if kind == "lease_detect_s":
                    _kill(horse)
                _kill(worker.pid)
                out[kind].append(_until(lambda j=job_id: status(j) == "failed"))
                ctx.log(kind, out[kind][-1])
                _kill(horse)
    finally:
        for w in workers:
            _kill(w.pid)
        keys = list(conn.scan_iter(match=f"*{queue_name}*"))
        for job in conn.zrange(f"cpflow:{queue_name}:jobs", 0, -1):
            keys += list(conn.scan_iter(match=f"*{job.decode()}*"))
        for key in conn.scan_iter(match="rq:worker:*", _type="HASH"):
            if conn.hget(key, "queues") == queue_name.encode():  # the workers killed here
                keys += [key, key + b":executions"]
                conn.srem("rq:workers", key)
        if keys:
            conn.delete(*set(keys))
    return {
        "lease_s": opts.lease,
        "heartbeat_s": opts.heartbeat,
        "load_avg_1m": os.getloadavg()[0],
        "results": {
            k: {"median": statistics.median(v), "max": max(v), "n": len(v)} for k, v in out.items()
        },
    }


# -- ONNX against torch -------------------------------------------------------------------------


def _rows_per_second(call: Callable[[], object], batch: int, min_time: float, repeats: int):
    for _ in range(3):
        call()  # warm-up: allocator, ORT arena, lazy init
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        rates.append(batch * calls / elapsed)
    return statistics.median(rates)


def _no_grad_call(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _onnx_flow(dim: int, opts):
    gen = torch.Generator().manual_seed(dim)
    flow = fitted_flow(
        lambda: torch.randn(512, dim, generator=gen) * 2.0 + 1.0,
        perturb=0.3,
        generator=gen,
        dim=dim,
        blocks=opts.blocks,
        hidden=opts.hidden,
        depth=opts.depth,
    )
    return flow.eval()


@benchmark(
    "store_onnx_throughput",
    "forward-transport rows/s: onnxruntime (exported model) vs torch, same run, same threads",
    options=[
        Option("dims", "ints", [2, 8, 43], "dimensions"),
        Option("batches", "ints", [1, 1024], "batch sizes"),
        Option("blocks", "int", 5, "blocks"),
        Option("hidden", "int", 32, "hidden units"),
        Option("depth", "int", 3, "ICNN depth"),
        threads_option(1),
        Option("min_time", "float", 0.5, "least seconds of one timed window"),
        Option("repeats", "int", 3, "timed windows (median reported)"),
    ],
)
def store_onnx_throughput(opts, ctx) -> dict:
    """For each dimension a flow with the default architecture is built (random, non-identity
    weights), published with export_onnx=True into a temporary store, loaded back, and timed:
    torch_autograd (flow.transform, the library's autograd gradient map), torch_explicit
    (cpflow.export.ExplicitTransform under no_grad, the exported graph) and onnxruntime
    (OnnxTransport over the stored model.onnx). Rows per second, median of the windows;
    ratio = onnxruntime / torch_autograd, and onnxruntime / torch_explicit."""
    import onnxruntime

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = model_store(Path(tmp))
        for dim in opts.dims:
            published = store.publish(f"bench{dim}", _onnx_flow(dim, opts), export_onnx=True)
            onnx_info = published.manifest["onnx"]
            if not onnx_info["exported"]:
                results.append({"dim": dim, "error": onnx_info.get("reason")})
                continue
            loaded = store.load(f"bench{dim}")
            flow = loaded.flow
            explicit = explicit_transform(flow)
            session = onnx_session(loaded, opts.threads)
            points = onnx_parity_points(flow, 1024)
            for batch in opts.batches:
                x_np = np.ascontiguousarray(np.resize(points, (batch, dim)))
                x = torch.from_numpy(x_np)
                rate = partial(
                    _rows_per_second, batch=batch, min_time=opts.min_time, repeats=opts.repeats
                )
                rates = {
                    "torch_autograd": rate(partial(flow.transform, x)),
                    "torch_explicit": rate(partial(_no_grad_call, explicit, x)),
                    "onnxruntime": rate(partial(session, x_np)),
                }
                diff = float(np.abs(session(x_np) - flow.transform(x).detach().numpy()).max())
                results.append(
                    {
                        "dim": dim,
                        "batch": batch,
                        "rows_per_s": {k: round(v, 1) for k, v in rates.items()},
                        "ratio_onnx_vs_torch_autograd": round(
                            rates["onnxruntime"] / rates["torch_autograd"], 3
                        ),
                        "ratio_onnx_vs_torch_explicit": round(
                            rates["onnxruntime"] / rates["torch_explicit"], 3
                        ),
                        "max_abs_diff_this_batch": diff,
                        "parity_max_abs_diff_10k": onnx_info["parity_max_abs_diff"],
                        "exporter": onnx_info.get("exporter"),
                    }
                )
    return {
        "model": {"blocks": opts.blocks, "hidden": opts.hidden, "depth": opts.depth},
        "onnxruntime": onnxruntime.__version__,
        "results": results,
    }


# -- glibc malloc settings ----------------------------------------------------------------------

_MALLOC_CHILD = """
import json, statistics, time
import torch
from bench.suites.core import make_model
torch.set_num_threads({threads})
flow, x = make_model(43, "cpu")
times = []
with torch.no_grad():
    flow.log_prob(x, method="exact")
    for _ in range({calls}):
        t0 = time.perf_counter()
        flow.log_prob(x, method="exact")
        times.append(time.perf_counter() - t0)
print(json.dumps(statistics.median(times)))
"""


def _malloc_run(env_extra: dict[str, str], calls: int, threads: int) -> float:
    code = _MALLOC_CHILD.format(calls=calls, threads=threads)
    out = python_child(code, child_env(env_extra, drop=_GLIBC_VARS))
    return float(out.stdout.strip().splitlines()[-1])


@benchmark(
    "malloc_tuning",
    "glibc malloc settings of a serving process: exact log_prob with and without them",
    options=[
        Option("rounds", "int", 3, "rounds of (default, tuned)"),
        Option("calls", "int", 15, "timed calls per process"),
        threads_option(2),
    ],
)
def malloc_tuning(opts, ctx) -> dict:
    """A service scores batch after batch; each exact log_prob allocates (n, d, d) Hessians of
    a few MB. With glibc's defaults such blocks are mmap-ed and unmapped again (or the heap top
    is trimmed) on every call, so every call pays fresh page faults. MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ keep them in the heap (the process keeps its high-water mark instead
    of giving it back). Each way runs in its own process (glibc reads these variables at
    start), alternating a, b, a, b; median seconds per call and the ratio."""
    default, tuned = [], []
    for _ in range(opts.rounds):
        default.append(_malloc_run({}, opts.calls, opts.threads))
        tuned.append(_malloc_run(TUNED, opts.calls, opts.threads))
    d, t = statistics.median(default), statistics.median(tuned)
    return {
        "workload": "exact log_prob, d=43, batch 1024, 5 blocks, ICNN 3 x 64",
        "threads": opts.threads,
        "tuned_env": TUNED,
        "default_s": d,
        "tuned_s": t,
        "speedup": d / t,
        "default_runs_s": default,
        "tuned_runs_s": tuned,
    }


# -- store round trip onto a device -------------------------------------------------------------


@benchmark(
    "store_roundtrip",
    "a model published on the CPU, loaded onto a device: log_prob parity and inversion",
    options=[Option("device", "str", "cpu", "device to load onto (cuda on a GPU box)")],
)
def store_roundtrip(opts, ctx) -> dict:
    x = torch.randn(512, 8) * 2 + 1
    flow = fitted_flow(lambda: x, dim=8, blocks=3, hidden=32, depth=3)
    with tempfile.TemporaryDirectory() as tmp:
        store = model_store(Path(tmp))
        store.publish("roundtrip", flow)
        cpu = store.load("roundtrip", device="cpu").flow
        dev = store.load("roundtrip", device=opts.device).flow
    diff = (cpu.log_prob(x) - dev.log_prob(x.to(opts.device)).cpu()).abs().max().item()
    _, info = dev.inverse(dev.transform(x.to(opts.device)))
    return {
        "store_logprob_maxdiff_vs_cpu": diff,
        "inverse_max_residual": float(info.max_residual),
        "all_converged": bool(info.all_converged),
    }
