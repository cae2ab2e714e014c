"""Helpers shared by the jobs tests (and by tests elsewhere that start the same stack): small
model and training settings, the live :class:`Stack`, a 2-D data set.

They live here, not in conftest.py, so that test modules import them by a unique module name:
``from conftest import ...`` picks whichever conftest pytest loaded last when several test
folders are collected together.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from service.queue import record_key
from tests.helpers.procs import Proc, stack_env, start_server, start_worker, wait_for

__all__ = [
    "LONG_TRAINING",
    "SHORT_TRAINING",
    "TINY_MODEL",
    "Stack",
    "in_process_runtime",
    "two_blobs",
]

# Small numbers keep the suite fast; they are settings, not assertions.
TINY_MODEL = {"blocks": 1, "hidden": 8, "depth": 1}
SHORT_TRAINING = {"iterations": 30, "batch_size": 32, "val_every": 10, "lr": 5e-3}
LONG_TRAINING = {"iterations": 1_000_000, "batch_size": 32, "val_every": 50, "lr": 1e-3}


def in_process_runtime(queue_name: str, job: dict, heartbeat_s: float = 0.2) -> dict:
    """The ``runtime`` block a worker receives for ``job``, to run it in this process."""
    return {
        "job_id": job["id"],
        "record_key": record_key(queue_name, job["id"]),
        "heartbeat_s": heartbeat_s,
    }


class Stack:
    """A running uvicorn service (and the workers a test starts) on one store and queue."""

    def __init__(self, tmp: Path, queue_name: str, *, workers: int = 2) -> None:
        self.tmp = tmp
        self.store_dir = tmp / "store"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.queue_name = queue_name
        self.env = stack_env(self.store_dir, queue_name)
        self.workers: list[Proc] = []
        for _ in range(workers):
            self.start_worker()  # they boot while uvicorn does
        self.server, self.url = start_server(self.env, tmp / "server.log")
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start_worker(self) -> Proc:
        proc = start_worker(self.env, self.tmp / f"worker{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 90) -> dict:
        def check() -> dict | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_for(check, timeout, f"job {job_id} to reach {statuses}", step=0.2)
        except AssertionError:
            logs = "\n".join(f"--- {w.log.name}\n{w.tail()}" for w in self.workers)
            raise AssertionError(f"job {job_id}: {self.job(job_id)}\n{logs}") from None

    def wait_progress(self, job_id: str, timeout: float = 90) -> dict:
        """Until the job is running and has reported at least one training iteration."""

        def check() -> dict | None:
            job = self.job(job_id)
            if job["status"] not in ("queued", "running"):
                raise AssertionError(f"job ended early: {job}")
            progress = job.get("progress") or {}
            return job if progress.get("iteration", 0) >= 1 else None

        return wait_for(check, timeout, f"job {job_id} to make progress", step=0.2)

    def upload(self, array: np.ndarray, name: str = "data") -> dict:
        text = "x,y\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in array)
        r = self.client.post(
            "/v1/datasets", files={"file": (f"{name}.csv", text.encode())}, data={"name": name}
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def submit(self, dataset_id: str, model_name: str, training: dict, **extra) -> str:
        body = {
            "model_name": model_name,
            "dataset": {"id": dataset_id},
            "model": TINY_MODEL,
            "training": training,
            "plots": False,  # plots cost seconds; the end-to-end test turns them on
            **extra,
        }
        r = self.client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        return r.json()["id"]

    def close(self) -> None:
        self.client.close()
        for proc in self.workers:
            proc.stop()
        self.server.stop()


def two_blobs(n: int = 240, seed: int = 0) -> np.ndarray:
    """A 2-D data set with structure (two Gaussian blobs)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) * 0.5
    x[: n // 2] += 2.0
    return x
