"""End to end: a real uvicorn service, real cpflow-worker processes and the real Redis.

Marked ``integration``. Timeouts in ``wait_*`` only bound a hang; nothing asserts a duration.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from model_store import ModelStore
from tests.helpers.procs import descendants, wait_for
from tests.jobs.jobs_stack import LONG_TRAINING, SHORT_TRAINING, Stack, two_blobs

pytestmark = pytest.mark.integration


def _horse_pid(job: dict, stack: Stack) -> int:
    """The work horse's pid, from the job record (``worker`` = host:pid)."""
    raw = stack_record(stack, job["id"])
    return int(raw[b"worker"].decode().rsplit(":", 1)[1])


def stack_record(stack: Stack, job_id: str) -> dict:
    import redis

    conn = redis.Redis.from_url(stack.env["CPFLOW_REDIS_URL"])
    try:
        return conn.hgetall(f"cpflow:{stack.queue_name}:job:{job_id}")
    finally:
        conn.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_upload_train_and_score_without_restart(stack: Stack) -> None:
    """CSV upload -> job -> succeeded -> the running service scores with the new model."""
    data = two_blobs()
    ds = stack.upload(data, "blobs")
    assert ds["rows"] == len(data) and ds["dim"] == 2
    assert stack.client.get("/v1/models/blobs-model").status_code == 404  # not there yet

    job_id = stack.submit(ds["id"], "blobs-model", SHORT_TRAINING, plots=True)
    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job
    assert job["error"] is None and job["started_at"] and job["finished_at"]
    result = job["result"]
    assert result["model"] == "blobs-model" and result["version"] == 1
    assert np.isfinite(result["test_nll"])
    progress = job["progress"]
    assert progress["iteration"] == progress["total"] == SHORT_TRAINING["iterations"]
    assert np.isfinite(progress["val_nll"]) and progress["seconds_per_iteration"] > 0
    # The training curve so far (the console's job page draws it): one point per validation.
    every = SHORT_TRAINING["val_every"]
    assert [p[0] for p in progress["curve"]] == list(range(0, progress["total"] + 1, every))
    assert all(np.isfinite(p[1]) and np.isfinite(p[2]) for p in progress["curve"])
    assert progress["loss"] == "exact"  # 2-D data: the auto loss is the exact NLL

    # The manifest names the job and the uploaded data it was trained on.
    store = ModelStore(stack.store_dir)
    manifest = store.manifest("blobs-model", 1)
    assert manifest["training"]["job_id"] == job_id
    assert manifest["training"]["sha256"] == ds["id"]
    assert manifest["training"]["metrics"]["test_nll"] == pytest.approx(result["test_nll"])
    assert manifest["plots"]  # the full pipeline ran, figures included

    # The service (started before the model existed) answers from it, and agrees with the
    # stored model evaluated here, in process (float32: 1e-4 relative is ample).
    x = data[:5].tolist()
    r = stack.client.post("/v1/models/blobs-model/log_prob", json={"inputs": x})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 1 and len(body["log_prob"]) == 5
    loaded = store.load("blobs-model", 1)
    with torch.no_grad():
        ref = loaded.flow.log_prob(torch.tensor(x, dtype=torch.float32), method="exact")
    np.testing.assert_allclose(body["log_prob"], ref.double().numpy(), rtol=1e-4, atol=1e-4)

    # Listing: newest first, filterable.
    listed = stack.client.get("/v1/jobs", params={"status": "succeeded"}).json()
    assert [j["id"] for j in listed] == [job_id]
    # The data set is free again once its job ended.
    assert stack.client.delete(f"/v1/datasets/{ds['id']}").status_code == 204


def test_cancel_queued_and_running(stack: Stack) -> None:
    """Two workers busy with A1 and A2, so B waits. Cancelling B is immediate; a running
    job stops within seconds; neither publishes anything."""
    ds = stack.upload(two_blobs(seed=1), "cancel-data")
    a1 = stack.submit(ds["id"], "cancel-a1", LONG_TRAINING)
    a2 = stack.submit(ds["id"], "cancel-a2", LONG_TRAINING)
    stack.wait_progress(a1)
    stack.wait_progress(a2)
    b = stack.submit(ds["id"], "cancel-b", SHORT_TRAINING)
    assert stack.job(b)["status"] == "queued"  # both workers are busy

    r = stack.client.delete(f"/v1/jobs/{b}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    for a in (a1, a2):
        r = stack.client.delete(f"/v1/jobs/{a}")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
    for a in (a1, a2):
        job = stack.wait_status(a, {"cancelled", "failed", "succeeded"}, timeout=60)
        assert job["status"] == "cancelled", job
        assert "cancelled by request" in job["error"]

    # Nothing was published, and B never started.
    names = ModelStore(stack.store_dir).names()
    assert not {"cancel-a1", "cancel-a2", "cancel-b"} & set(names)
    job_b = stack.job(b)
    assert job_b["status"] == "cancelled" and job_b["started_at"] is None
    # The workers are free again: a new short job runs to the end.
    c = stack.submit(ds["id"], "cancel-c", SHORT_TRAINING)
    assert stack.wait_status(c, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"


def test_failing_jobs_end_failed_with_their_message(stack: Stack) -> None:
    """A job that raises (damaged data), and one past its time limit."""
    ds = stack.upload(two_blobs(seed=2), "to-damage")
    data_file = stack.store_dir / "datasets" / ds["id"] / "data.npy"
    np.save(data_file, np.zeros((5, 2), dtype=np.float32))  # on-disk damage after upload
    bad = stack.submit(ds["id"], "damaged", SHORT_TRAINING)
    job = stack.wait_status(bad, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "failed"
    assert "does not match its sha256" in job["error"] and "upload it again" in job["error"]

    ok = stack.upload(two_blobs(seed=3), "fine")
    slow = stack.submit(ok["id"], "too-slow", LONG_TRAINING, timeout_s=3)
    job = stack.wait_status(slow, {"succeeded", "failed", "cancelled"}, timeout=90)
    assert job["status"] == "failed"
    assert "time limit of 3 s" in job["error"]
    assert "too-slow" not in ModelStore(stack.store_dir).names()


def test_killed_worker_does_not_leave_the_job_running(stack: Stack) -> None:
    """Two jobs on two workers. A: SIGKILL the worker only (its orphaned horse notices and
    stops). B: SIGKILL worker and horse, as a lost machine (the lease expires)."""
    alive = [w for w in stack.workers if w.popen.poll() is None]
    while len(alive) < 2:
        alive.append(stack.start_worker())
    ds = stack.upload(two_blobs(seed=4), "kill-data")
    a = stack.submit(ds["id"], "killed-a", LONG_TRAINING)
    b = stack.submit(ds["id"], "killed-b", LONG_TRAINING)
    stack.wait_progress(a)
    stack.wait_progress(b)
    horse_a, horse_b = _horse_pid(stack.job(a), stack), _horse_pid(stack.job(b), stack)
    owner = {h: w for w in alive for h in (horse_a, horse_b) if h in descendants(w.pid)}
    assert set(owner) == {horse_a, horse_b} and owner[horse_a] is not owner[horse_b]
    try:
        # A: RQ's work horse (own process group) survives its worker and must stop itself
        # instead of training on unsupervised.
        os.kill(owner[horse_a].pid, signal.SIGKILL)
        # B: nobody is left to record anything; only the heartbeat going silent tells.
        for pid in (horse_b, owner[horse_b].pid):
            _kill(pid)
        job_a = stack.wait_status(a, {"failed", "succeeded", "cancelled"}, timeout=60)
        assert job_a["status"] == "failed"
        assert "worker process died" in job_a["error"], job_a
        job_b = stack.wait_status(b, {"failed", "succeeded", "cancelled"}, timeout=60)
        assert job_b["status"] == "failed"
        assert "no heartbeat" in job_b["error"], job_b
        wait_for(lambda: not os.path.exists(f"/proc/{horse_a}"), 30, "the orphan horse to exit")
    finally:
        _kill(horse_a)
        _kill(horse_b)
    names = ModelStore(stack.store_dir).names()
    assert "killed-a" not in names and "killed-b" not in names
