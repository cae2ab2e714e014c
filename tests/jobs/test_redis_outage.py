"""Redis goes away and comes back, under a running service.

Uses a private redis-server on a free port (never the shared one other tests rely on), with an
append-only file so that jobs submitted before the outage are still there after it.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from cpflow import CPFlow, FlowConfig
from model_store import ModelStore
from tests.helpers.ports import free_port
from tests.helpers.procs import stack_env, start_redis, start_server, start_worker, wait_for
from tests.jobs.jobs_stack import SHORT_TRAINING, TINY_MODEL

pytestmark = pytest.mark.integration


def _publish_model(store_dir: Path) -> None:
    """A small initialised flow in the store, so the scoring routes have something to serve."""
    torch.manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float32)
    flow = CPFlow(FlowConfig(dim=2, blocks=1, hidden=8, depth=1))
    flow.set_standardization(x.mean(0), x.std(0))
    flow.initialize(x)
    ModelStore(store_dir).publish("steady", flow, training={"note": "outage test"})


def test_redis_outage_503_on_job_routes_scoring_200_then_all_recovers(tmp_path: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    store_dir = tmp_path / "store"
    _publish_model(store_dir)
    env = stack_env(store_dir, f"outage-{uuid.uuid4().hex[:8]}", f"redis://127.0.0.1:{port}/0")
    redis_proc = start_redis(port, redis_dir, tmp_path / "redis1.log")
    worker = start_worker(env, tmp_path / "worker.log")  # boots while uvicorn does
    server, url = start_server(env, tmp_path / "server.log")
    c = httpx.Client(base_url=url, timeout=30)

    def finished(job_id: str) -> dict:
        def check() -> dict | None:
            job = c.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(check, 90, f"job {job_id} to end", step=0.2)

    try:
        x = np.random.default_rng(0).normal(size=(60, 2)).round(5)
        csv = "a,b\n" + "\n".join(f"{a},{b}" for a, b in x)
        ds = c.post("/v1/datasets", files={"file": ("d.csv", csv.encode())}).json()["id"]
        spec = {
            "model_name": "trained",
            "dataset": {"id": ds},
            "model": TINY_MODEL,
            "training": SHORT_TRAINING,
            "plots": False,
        }
        before = c.post("/v1/jobs", json=spec)
        assert before.status_code == 202
        first = before.json()["id"]
        assert finished(first)["status"] == "succeeded"

        # Redis stops (SIGTERM: it flushes its append-only file and exits).
        redis_proc.popen.send_signal(signal.SIGTERM)
        redis_proc.popen.wait(timeout=20)

        for method, path, body in [
            ("GET", "/v1/jobs", None),
            ("GET", f"/v1/jobs/{first}", None),
            ("POST", "/v1/jobs", spec),
            ("DELETE", f"/v1/jobs/{first}", None),
        ]:
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (method, path, r.text)
            assert r.json()["error"]["code"] == "queue_unavailable"
        scoring = [
            ("steady/log_prob", {"inputs": x[:3].tolist()}),
            ("steady/sample", {"num_samples": 4, "seed": 1}),
            ("steady/transport", {"inputs": x[:3].tolist(), "direction": "forward"}),
            ("trained/log_prob", {"inputs": x[:3].tolist()}),
        ]
        for route, body in scoring:
            r = c.post(f"/v1/models/{route}", json=body)
            assert r.status_code == 200, (route, r.text)
        assert c.get("/v1/datasets").status_code == 200  # the store alone answers this
        assert c.get("/readyz").json()["redis"]["ok"] is False

        # Redis is back on the same port and data directory: the service and the worker
        # recover by themselves, and the job record from before the outage is still there.
        redis_proc = start_redis(port, redis_dir, tmp_path / "redis2.log")
        wait_for(lambda: c.get("/v1/jobs").status_code == 200, 30, "job routes to answer")
        assert c.get(f"/v1/jobs/{first}").json()["status"] == "succeeded"
        again = c.post("/v1/jobs", json=spec)
        assert again.status_code == 202
        second = again.json()["id"]
        assert [j["id"] for j in c.get("/v1/jobs").json()] == [second, first]
        job = finished(second)
        assert job["status"] == "succeeded", (job, worker.tail())
        assert job["result"]["version"] == 2
        r = c.post("/v1/models/trained/log_prob", json={"inputs": x[:3].tolist()})
        assert r.status_code == 200 and r.json()["version"] == 2
    finally:
        c.close()
        worker.stop()
        server.stop()
        redis_proc.stop()
