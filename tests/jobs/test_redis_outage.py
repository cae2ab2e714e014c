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
from conftest import stack_env
from jobs_procs import free_port, start_redis, start_server, wait_for

from cpflow import CPFlow, FlowConfig
from model_store import ModelStore

pytestmark = pytest.mark.integration


def _publish_model(store_dir: Path) -> None:
    """A small initialised flow in the store, so the scoring routes have something to serve."""
    torch.manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float32)
    flow = CPFlow(FlowConfig(dim=2, blocks=1, hidden=8, depth=1))
    flow.set_standardization(x.mean(0), x.std(0))
    flow.initialize(x)
    ModelStore(store_dir).publish("steady", flow, training={"note": "outage test"})


def test_job_routes_503_while_redis_is_down_scoring_keeps_working(tmp_path: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    store_dir = tmp_path / "store"
    _publish_model(store_dir)
    env = stack_env(store_dir, f"outage-{uuid.uuid4().hex[:8]}", f"redis://127.0.0.1:{port}/0")
    redis_proc = start_redis(port, redis_dir, tmp_path / "redis1.log")
    server, url = start_server(env, tmp_path / "server.log")
    c = httpx.Client(base_url=url, timeout=30)
    try:
        x = np.random.default_rng(0).normal(size=(20, 2)).round(5)
        csv = "a,b\n" + "\n".join(f"{a},{b}" for a, b in x)
        ds = c.post("/v1/datasets", files={"file": ("d.csv", csv.encode())}).json()["id"]
        spec = {"model_name": "later", "dataset": {"id": ds}, "training": {"iterations": 5}}
        before = c.post("/v1/jobs", json=spec)
        assert before.status_code == 202  # no worker here: it stays queued
        job_id = before.json()["id"]

        # Redis stops (SIGTERM: it flushes its append-only file and exits).
        redis_proc.popen.send_signal(signal.SIGTERM)
        redis_proc.popen.wait(timeout=20)

        for method, path, body in [
            ("GET", "/v1/jobs", None),
            ("GET", f"/v1/jobs/{job_id}", None),
            ("POST", "/v1/jobs", spec),
            ("DELETE", f"/v1/jobs/{job_id}", None),
        ]:
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (method, path, r.text)
            assert r.json()["error"]["code"] == "queue_unavailable"
        scoring = [
            ("log_prob", {"inputs": x[:3].tolist()}),
            ("sample", {"num_samples": 4, "seed": 1}),
            ("transport", {"inputs": x[:3].tolist(), "direction": "forward"}),
        ]
        for route, body in scoring:
            r = c.post(f"/v1/models/steady/{route}", json=body)
            assert r.status_code == 200, (route, r.text)
        assert c.get("/v1/datasets").status_code == 200  # the store alone answers this
        assert c.get("/readyz").json()["redis"]["ok"] is False

        # Redis is back on the same port and data directory: the service recovers by itself,
        # and the job queued before the outage is still there.
        redis_proc = start_redis(port, redis_dir, tmp_path / "redis2.log")

        def recovered() -> bool:
            return c.get("/v1/jobs").status_code == 200

        wait_for(recovered, 30, "job routes to answer again")
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        again = c.post("/v1/jobs", json=spec)
        assert again.status_code == 202
        assert [j["id"] for j in c.get("/v1/jobs").json()] == [again.json()["id"], job_id]
        assert c.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    finally:
        c.close()
        server.stop()
        redis_proc.stop()
