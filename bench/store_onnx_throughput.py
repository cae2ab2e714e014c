"""Forward-transport throughput: onnxruntime (exported model) vs torch, same run, same threads.

Prints one JSON object. For each dimension a flow with the default architecture is built
(random, non-identity weights), published with export_onnx=True into a temporary store, loaded
back, and timed at batch 1 and batch 1024:

    torch_autograd   flow.transform(x)  (the library's autograd gradient map)
    torch_explicit   cpflow.export.ExplicitTransform(flow)(x) under no_grad (the exported graph)
    onnxruntime      OnnxTransport over the stored model.onnx

Figures are rows per second (median of --repeats timed windows of at least --min-time s each);
ratio = onnxruntime / torch_autograd, and onnxruntime / torch_explicit.

    .venv/bin/python bench/store_onnx_throughput.py [--dims 2,8,43] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from cpflow import CPFlow, FlowConfig
from cpflow.export import ExplicitTransform
from model_store import ModelStore
from model_store.onnx_export import parity_points
from model_store.onnx_runtime import OnnxTransport


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


def _make_flow(dim: int, args: argparse.Namespace) -> CPFlow:
    gen = torch.Generator().manual_seed(dim)
    config = FlowConfig(dim=dim, blocks=args.blocks, hidden=args.hidden, depth=args.depth)
    flow = CPFlow(config)
    data = torch.randn(512, dim, generator=gen) * 2.0 + 1.0
    flow.set_standardization(data.mean(0), data.std(0))
    flow.initialize(data)
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen))
    return flow.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,8,43")
    parser.add_argument("--batches", default="1,1024")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(tmp)
        for dim in [int(d) for d in args.dims.split(",")]:
            published = store.publish(f"bench{dim}", _make_flow(dim, args), export_onnx=True)
            onnx_info = published.manifest["onnx"]
            if not onnx_info["exported"]:
                results.append({"dim": dim, "error": onnx_info.get("reason")})
                continue
            loaded = store.load(f"bench{dim}")
            flow = loaded.flow
            explicit = ExplicitTransform(flow).eval()
            session = OnnxTransport.from_loaded(loaded, threads=args.threads)
            points = parity_points(flow, 1024, seed=1)
            for batch in [int(b) for b in args.batches.split(",")]:
                x_np = np.ascontiguousarray(np.resize(points, (batch, dim)))
                x = torch.from_numpy(x_np)

                rates = {
                    "torch_autograd": _rows_per_second(
                        partial(flow.transform, x), batch, args.min_time, args.repeats
                    ),
                    "torch_explicit": _rows_per_second(
                        partial(_no_grad_call, explicit, x), batch, args.min_time, args.repeats
                    ),
                    "onnxruntime": _rows_per_second(
                        partial(session, x_np), batch, args.min_time, args.repeats
                    ),
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
    print(
        json.dumps(
            {
                "benchmark": "store_onnx_throughput",
                "model": {"blocks": args.blocks, "hidden": args.hidden, "depth": args.depth},
                "threads": args.threads,
                "min_time_s": args.min_time,
                "repeats": args.repeats,
                "torch": torch.__version__,
                "onnxruntime": __import__("onnxruntime").__version__,
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
