"""Load benchmark of the HTTP service: requests/s and p50/p99 latency per route and concurrency.

Starts a real uvicorn process on a temporary store holding one d=2 CP-Flow, then drives it
with keep-alive HTTP/1.1 clients (asyncio, one connection per concurrent client) for each
scenario: a bare constant route (the baseline), exact log_prob with batch 1 and 256, sample
(16 rows) and forward transport (batch 1), each at 1 and 16 concurrent clients. Prints JSON.

    .venv/bin/python bench/service_load.py [--seconds 4] [--blocks 5 --hidden 32]

The clients run on the same machine as the server, so on few cores they compete with it for
CPU; the overhead ratio (model route / constant route at equal concurrency) is the figure
that carries over between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def publish_model(root: Path, blocks: int, hidden: int) -> None:
    import torch

    from cpflow import CPFlow, FlowConfig
    from model_store import ModelStore

    torch.manual_seed(0)
    flow = CPFlow(FlowConfig(dim=2, blocks=blocks, hidden=hidden, depth=3))
    x = torch.randn(1024, 2) * torch.tensor([2.0, 0.5]) + 1.0
    flow.set_standardization(x.mean(0), x.std(0))
    flow.initialize(x)
    ModelStore(root).publish("bench2d", flow)


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
    ms = np.array(lat) * 1000
    return {
        "healthz_requests": len(lat),
        "healthz_p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "healthz_p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "healthz_max_ms": round(float(ms.max()), 2) if len(ms) else None,
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
    ms = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "errors": len(errors),
        "rps": round(len(lat) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per scenario")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--only", nargs="+", default=None, help="scenario names to run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all scenarios; medians reported (a shared machine's load drifts)",
    )
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    scenarios = {
        "constant": ("/bench/constant", {"inputs": [[0.5, 1.0]], "method": "exact"}),
        "log_prob_exact_b1": ("/v1/models/bench2d/log_prob", {"inputs": [[0.5, 1.0]], "method": "exact"}),
        "log_prob_exact_b256": ("/v1/models/bench2d/log_prob",
                                {"inputs": rng.normal(1, 1, (256, 2)).tolist(), "method": "exact"}),
        "sample_16": ("/v1/models/bench2d/sample", {"num_samples": 16, "seed": 0}),
        "transport_forward_b1": ("/v1/models/bench2d/transport", {"inputs": [[0.5, 1.0]]}),
    }  # fmt: skip

    if args.only:
        scenarios = {k: v for k, v in scenarios.items() if k in args.only or k == "constant"}

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        publish_model(store, args.blocks, args.hidden)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CPFLOW_")}
        env.update(CPFLOW_STORE_DIR=str(store), CPFLOW_LOG_LEVEL="WARNING", CPFLOW_DEVICE="cpu")
        for key in ("CPFLOW_INFERENCE_THREADS", "CPFLOW_TORCH_THREADS", "CPFLOW_BATCH_WAIT_MS"):
            if key in os.environ:
                env[key] = os.environ[key]
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "service_bench_app:create_bench_app",
               "--app-dir", str(REPO / "bench"), "--port", str(args.port), "--no-access-log",
               "--log-level", "warning"]  # fmt: skip
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
        try:
            import httpx

            for _ in range(600):
                try:
                    if httpx.get(f"http://127.0.0.1:{args.port}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            ready = httpx.get(f"http://127.0.0.1:{args.port}/readyz").json()
            # Load the model once before timing anything.
            httpx.post(f"http://127.0.0.1:{args.port}/v1/models/bench2d/log_prob",
                       json={"inputs": [[0.0, 0.0]]}, timeout=60)  # fmt: skip
            rounds: list[dict[str, dict]] = []
            for _ in range(args.rounds):
                one = {}
                for name, (path, body) in scenarios.items():
                    for c in args.concurrency:
                        one[f"{name}@c{c}"] = asyncio.run(
                            run_scenario(args.port, path, body, c, args.seconds)
                        )
                rounds.append(one)
            busy = asyncio.run(healthz_during_long_sample(args.port, args.seconds))
            metrics = httpx.get(f"http://127.0.0.1:{args.port}/metrics").text
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:  # the unconverging sample still holds a thread
                server.kill()
                server.wait()

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
        for c in args.concurrency:
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
    batch_lines = [ln for ln in metrics.splitlines() if ln.startswith(prefixes)]
    print(json.dumps({
        "benchmark": "service_load",
        "model": {"dim": 2, "blocks": args.blocks, "hidden": args.hidden, "depth": 3},
        "server": {"workers": 1, "device": ready.get("device"),
                   "inference_threads": os.environ.get("CPFLOW_INFERENCE_THREADS", "default"),
                   "torch_threads": os.environ.get("CPFLOW_TORCH_THREADS", "default")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m": os.getloadavg()[0]},
        "seconds_per_scenario": args.seconds,
        "rounds": args.rounds,
        "results": results,
        "rps_ratio_to_constant_route": ratios,
        "healthz_while_sampling": busy,
        "target_log_prob_exact_b1_at_c16_ratio": 0.30,
        "microbatch": batch_lines,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
