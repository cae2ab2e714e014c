"""Two API replicas with their own cache folders and one worker, all on one s3:// store (a
real moto server process) and one Redis: an upload and a job submitted through replica A train
on the worker, and replica B serves the new version with the same answers."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from tests.helpers.procs import (
    new_queue_name,
    purge,
    stack_env,
    start_server,
    start_worker,
    wait_for,
)
from tests.helpers.s3 import client, env_for, s3_server
from tests.jobs.jobs_stack import TINY_MODEL, two_blobs

pytestmark = pytest.mark.integration


def test_replicas_share_models_and_uploads_through_the_bucket(tmp_path, redis_conn) -> None:
    queue = new_queue_name()
    bucket = f"cpflow-{uuid.uuid4().hex[:12]}"
    procs = []
    try:
        with s3_server(tmp_path / "moto.log") as endpoint:
            client(endpoint).create_bucket(Bucket=bucket)
            base = {**env_for(endpoint), **stack_env(tmp_path / "unused", queue)}
            base["CPFLOW_STORE_URL"] = f"s3://{bucket}/cpflow"

            def env(role: str) -> dict[str, str]:
                return {**base, "CPFLOW_CACHE_DIR": str(tmp_path / f"cache-{role}")}

            worker = start_worker(env("worker"), tmp_path / "worker.log")
            procs.append(worker)
            server_a, url_a = start_server(env("a"), tmp_path / "a.log")
            procs.append(server_a)
            server_b, url_b = start_server(env("b"), tmp_path / "b.log")
            procs.append(server_b)
            a, b = (
                httpx.Client(base_url=url_a, timeout=30),
                httpx.Client(base_url=url_b, timeout=30),
            )
            assert b.get("/readyz").json()["store"]["path"] == f"s3://{bucket}/cpflow"

            data = two_blobs()
            text = "x,y\n" + "\n".join(f"{r[0]:.6f},{r[1]:.6f}" for r in data)
            up = a.post("/v1/datasets", files={"file": ("d.csv", text.encode())},
                        data={"name": "blobs"})  # fmt: skip
            assert up.status_code == 201, up.text
            body = {"model_name": "shared", "dataset": {"id": up.json()["id"]},
                    "model": TINY_MODEL, "plots": False,
                    "training": {"iterations": 20, "batch_size": 32, "val_every": 10}}  # fmt: skip
            r = a.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            def done() -> dict | None:
                job = a.get(f"/v1/jobs/{job_id}").json()
                return job if job["status"] in ("succeeded", "failed", "cancelled") else None

            job = wait_for(done, 180, "the job to finish", step=0.3)
            assert job["status"] == "succeeded", (job, worker.tail())

            def served_by_b() -> dict | None:
                r = b.get("/v1/models/shared")
                return r.json() if r.status_code == 200 else None

            assert wait_for(served_by_b, 30, "replica B to see the model")["version"] == 1
            rows = {"inputs": data[:5].tolist(), "method": "exact"}
            lp_a = a.post("/v1/models/shared/log_prob", json=rows).json()["log_prob"]
            lp_b = b.post("/v1/models/shared/log_prob", json=rows).json()["log_prob"]
            assert np.all(np.isfinite(lp_a)) and lp_a == lp_b
            assert (tmp_path / "cache-b" / "shared" / "1").is_dir()  # B serves its own copy
    finally:
        for proc in procs:
            proc.stop()
        purge(redis_conn, queue)
