"""Latencies of the training-job machinery: pick-up, cancel, and worker loss. Prints JSON.

Starts real ``cpflow-worker`` processes on the shared Redis (a queue name of its own, deleted
afterwards) and a temporary store, and measures, over ``--repeats`` jobs each:

* ``pickup_s``: submit -> record says running (RQ dequeue + fork of the work horse);
* ``cancel_running_s``: DELETE-equivalent on a running job -> record says cancelled;
* ``orphan_detect_s``: SIGKILL of the worker process -> its job failed (the horse notices);
* ``lease_detect_s``: SIGKILL of worker and horse -> a reader sees failed (lease expiry),
  with ``--lease`` and ``--heartbeat`` as set here (defaults 60 s / 5 s in production).

    .venv/bin/python bench/jobs_latency.py [--repeats 3] [--lease 2 --heartbeat 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore
from service.queue import JobQueue, connect

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
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lease", type=float, default=2.0)
    ap.add_argument("--heartbeat", type=float, default=0.25)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cpflow-jobs-bench-"))
    store = ModelStore(tmp / "store")
    data = np.random.default_rng(0).normal(size=(400, 2))
    ds = store.datasets.put(data, "bench")
    queue_name = f"cpflow-bench-{uuid.uuid4().hex[:8]}"
    conn = connect(args.redis_url)
    queue = JobQueue(
        conn,
        queue_name=queue_name,
        lease_s=args.lease,
        heartbeat_s=args.heartbeat,
        store_dir=str(tmp / "store"),
    )
    env = {
        "CPFLOW_STORE_DIR": str(tmp / "store"),
        "CPFLOW_REDIS_URL": args.redis_url,
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
        for _ in range(args.repeats):
            job_id = submit()
            out["pickup_s"].append(_until(lambda j=job_id: status(j) == "running"))
            _until(lambda j=job_id: running_with_progress(j))
            queue.cancel(job_id)
            out["cancel_running_s"].append(_until(lambda j=job_id: status(j) == "cancelled"))
            print(
                "pickup/cancel", out["pickup_s"][-1], out["cancel_running_s"][-1], file=sys.stderr
            )
        _kill(worker.pid)  # from here on, one fresh worker per measurement
        for kind in ("orphan_detect_s", "lease_detect_s"):
            for _ in range(args.repeats):
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
                print(kind, out[kind][-1], file=sys.stderr)
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

    summary = {
        k: {"median": statistics.median(v), "max": max(v), "n": len(v)} for k, v in out.items()
    }
    print(json.dumps({
        "bench": "jobs_latency",
        "lease_s": args.lease,
        "heartbeat_s": args.heartbeat,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "results": summary,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
