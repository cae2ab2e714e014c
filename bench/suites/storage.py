"""The model store's two backends on the same model: publish time, and the first request of a
version not yet cached (object storage: download and digest checks) against a cached one.

    python -m bench run store_backends                   # moto_server started here
    python -m bench run store_backends --set s3_url=s3://bucket/prefix   # a real service
                                                         # (AWS_* variables for the endpoint)

Times are medians over ``repeats``; "first load" is ``store.load`` in a fresh cache folder,
"cached load" the same call again (the service keeps loaded flows in memory on top of this).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from bench.registry import Option, benchmark
from bench.suites.common import fitted_flow


@contextmanager
def _moto() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _backends(tmp: Path, s3_url: str | None, endpoint: str | None) -> dict:
    import boto3

    from model_store import ModelStore, ObjectModelStore
    from model_store.object_store import open_store

    if s3_url:
        return {
            "local": lambda c: ModelStore(tmp / "local"),
            "s3": lambda c: open_store(s3_url, c),
        }
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    return {
        "local": lambda c: ModelStore(tmp / "local"),
        "s3": lambda c: ObjectModelStore(bucket, "models", c, client=s3),
    }


@benchmark(
    "store_backends",
    "publish time and first (uncached) vs cached load: local folder vs S3-compatible storage",
    options=[
        Option("hidden", "int", 64, "ICNN width of the d=8 model (weights size)"),
        Option("blocks", "int", 5, "blocks"),
        Option("repeats", "int", 5, "timed repeats (medians)"),
        Option("s3_url", "str", None, "s3://bucket/prefix of a real service (unset: moto)"),
    ],
)
def store_backends(opts, ctx) -> dict:
    import torch

    flow = fitted_flow(lambda: torch.randn(512, 8), dim=8, blocks=opts.blocks, hidden=opts.hidden)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, _moto() if not opts.s3_url else _nothing() as ep:
        for name, make in _backends(Path(tmp), opts.s3_url, ep).items():
            publish, first, cached = [], [], []
            for i in range(opts.repeats):
                store = make(Path(tmp) / f"cache-{name}-{i}")
                t0 = time.perf_counter()
                pub = store.publish("bench", flow)
                publish.append(time.perf_counter() - t0)
                fresh = make(Path(tmp) / f"fresh-{name}-{i}")
                t0 = time.perf_counter()
                fresh.load("bench", pub.version)
                first.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                fresh.load("bench", pub.version)
                cached.append(time.perf_counter() - t0)
            out[name] = {
                "publish_s": statistics.median(publish),
                "first_load_s": statistics.median(first),
                "cached_load_s": statistics.median(cached),
                "weights_bytes": len(pub.path.joinpath("weights.safetensors").read_bytes()),
            }
        if not opts.s3_url:
            out["http_log_prob"] = _first_request(Path(tmp), ep)
    out["s3_over_local_publish"] = out["s3"]["publish_s"] / out["local"]["publish_s"]
    out["s3_first_over_cached_load"] = out["s3"]["first_load_s"] / out["s3"]["cached_load_s"]
    return out


def _first_request(tmp: Path, endpoint: str) -> dict:
    """Through the service: the first log_prob of a version no replica has cached (listing,
    download, digests, building the flow) against the next one, per backend."""
    import os

    import boto3
    from fastapi.testclient import TestClient

    from model_store import ModelStore, ObjectModelStore
    from service.app import create_app
    from service.settings import Settings

    flow = fitted_flow(lambda: __import__("torch").randn(256, 8), dim=8, blocks=5, hidden=64)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
    bucket = f"bench-http-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    ObjectModelStore(bucket, "m", tmp / "pub-cache", client=s3).publish("h", flow)
    ModelStore(tmp / "http-local").publish("h", flow)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    settings = {
        "local": Settings(store_dir=tmp / "http-local"),
        "s3": Settings(store_url=f"s3://{bucket}/m", cache_dir=tmp / "http-cache"),
    }
    body = {"inputs": [[0.0] * 8] * 16, "method": "exact"}
    out = {}
    for name, cfg in settings.items():
        with TestClient(create_app(cfg)) as api:
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                assert api.post("/v1/models/h/log_prob", json=body).status_code == 200
                times.append(time.perf_counter() - t0)
        out[name] = {"first_request_s": times[0], "cached_request_s": times[1]}
    return out


@contextmanager
def _nothing():
    yield None
