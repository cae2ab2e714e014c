"""Jobs with resources.processes = 2: the worker runs them as a torchrun group (gloo on CPU),
rank 0 publishes one version that the service serves, and a cancel ends every process of the
group (checked by pid: torchrun and both ranks)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from model_store import ModelStore
from tests.jobs.jobs_stack import Stack, two_blobs

pytestmark = pytest.mark.integration  # real uvicorn, cpflow-workers, Redis, torchrun groups

GROUP = {"resources": {"processes": 2}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead but not yet reaped
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_two_process_job_publishes_one_version_that_is_served(stack: Stack) -> None:
    ds = stack.upload(two_blobs(), "blobs-ddp")
    training = {"iterations": 30, "batch_size": 16, "val_every": 10, "lr": 5e-3}
    job_id = stack.submit(ds["id"], "ddp-model", training, **GROUP)
    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["progress"]["iteration"] == 30 and len(job["progress"]["processes"]) == 3
    # rank 0's stages reach the record too: the last phase, and what the group trained with
    assert job["phase"] == "publishing" and job["resolved"]["training"]["lr"] == 5e-3
    store = ModelStore(stack.store_dir)
    assert store.versions("ddp-model") == [job["result"]["version"]]  # exactly one version
    training_rec = store.manifest("ddp-model")["training"]
    assert training_rec["world_size"] == 2 and training_rec["global_batch_size"] == 32
    assert training_rec["job_id"] == job_id
    rows = two_blobs()[:3].tolist()
    r = stack.client.post("/v1/models/ddp-model/log_prob", json={"inputs": rows})
    assert r.status_code == 200, r.text
    assert np.all(np.isfinite(r.json()["log_prob"]))


def test_cancelling_a_running_group_leaves_no_process(stack: Stack) -> None:
    ds = stack.upload(two_blobs(), "blobs-ddp-cancel")
    training = {"iterations": 1_000_000, "batch_size": 16, "val_every": 1000, "lr": 1e-3}
    job_id = stack.submit(ds["id"], "ddp-cancel", training, **GROUP)
    job = stack.wait_progress(job_id, timeout=180)
    pids = job["progress"]["processes"]
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    r = stack.client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code in (200, 202), r.text
    job = stack.wait_status(job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert job["status"] == "cancelled", job
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "training processes left running"
    assert ModelStore(stack.store_dir).versions("ddp-cancel") == []


def test_too_many_processes_is_422(stack: Stack) -> None:
    ds = stack.upload(two_blobs(), "blobs-ddp-many")
    body = {"model_name": "m", "dataset": {"id": ds["id"]}, "resources": {"processes": 64}}
    r = stack.client.post("/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_processes", r.text


def test_a_killed_job_process_takes_its_group_down(stack: Stack) -> None:
    """kill -9 of the worker process running the job (torchrun's parent): the parent-death
    signals end torchrun, and torchrun's death ends both ranks."""
    ds = stack.upload(two_blobs(), "blobs-ddp-kill")
    training = {"iterations": 1_000_000, "batch_size": 16, "val_every": 1000, "lr": 1e-3}
    job_id = stack.submit(ds["id"], "ddp-kill", training, **GROUP)
    pids = stack.wait_progress(job_id, timeout=180)["progress"]["processes"]
    with open(f"/proc/{pids[0]}/stat") as fh:
        horse = int(fh.read().split(")")[-1].split()[2])  # torchrun's parent: the job process
    os.kill(horse, 9)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "training processes outlived their job process"
