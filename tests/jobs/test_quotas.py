"""Job quotas through two real API replicas (uvicorn processes) sharing the real Redis: the
limit per API key and the total hold across replicas (429 job_quota_exceeded with Retry-After,
naming the limit) while another key is still accepted; a cancelled job and a job whose worker
died free their place; the iterations x batch cap (per key) is a 422 job_too_large.

No worker runs: accepted jobs stay queued, which is what the quotas count.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from service.queue import record_key
from tests.helpers.procs import replicas, stack_env
from tests.jobs.jobs_stack import SHORT_TRAINING, TINY_MODEL

KEYS = {"a": "key-a", "b": "key-b", "c": "key-c"}


@pytest.fixture
def two_apis(tmp_path, queue_name):
    env = stack_env(tmp_path / "store", queue_name)
    env.update(
        {
            "CPFLOW_API_KEYS": ",".join(KEYS.values()),
            "CPFLOW_MAX_ACTIVE_JOBS_PER_KEY": "2",
            "CPFLOW_MAX_ACTIVE_JOBS": "3",
            "CPFLOW_QUOTA_RETRY_AFTER_S": "7",
            "CPFLOW_KEY_LIMITS": json.dumps({KEYS["c"]: {"max_job_work": 1000}}),
        }
    )
    with replicas(env, tmp_path) as clients:
        yield clients


def _submit(client: httpx.Client, key: str, name: str, **training) -> httpx.Response:
    body = {
        "model_name": name,
        "dataset": {"builtin": "two_moons", "num_samples": 200},
        "model": TINY_MODEL,
        "training": {**SHORT_TRAINING, **training},
        "plots": False,
    }
    return client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {KEYS[key]}"})


def _refused(r: httpx.Response, limit: str, maximum: int) -> str:
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "7"
    err = r.json()["error"]
    assert err["code"] == "job_quota_exceeded"
    assert err["details"] == [{"limit": limit, "max": maximum, "active": maximum}]
    return err["message"]


def test_limits_per_key_and_total_hold_across_replicas(two_apis, redis_conn, queue_name):
    a, b = two_apis
    first = _submit(a, "a", "qa1")
    assert first.status_code == 202, first.text
    assert _submit(b, "a", "qa2").status_code == 202
    msg = _refused(_submit(a, "a", "qa3"), "per_key", 2)  # full, whichever replica is asked
    assert "per API key" in msg and "CPFLOW_MAX_ACTIVE_JOBS_PER_KEY" in msg
    _refused(_submit(b, "a", "qa3"), "per_key", 2)
    assert _submit(b, "b", "qb1").status_code == 202  # another key still gets in
    msg = _refused(_submit(a, "b", "qb2"), "total", 3)  # the total (3) is reached
    assert "in total" in msg and "CPFLOW_MAX_ACTIVE_JOBS" in msg

    # A cancelled job gives its place back.
    job = first.json()["id"]
    r = b.delete(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {KEYS['a']}"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    again = _submit(a, "a", "qa3")
    assert again.status_code == 202, again.text
    _refused(_submit(b, "a", "qa4"), "per_key", 2)

    # A job whose worker died (running, heartbeat long gone) stops counting: it is failed by
    # the lease check, without any process of the API remembering anything.
    dead = again.json()["id"]
    stale = repr(time.time() - 3600)
    redis_conn.hset(
        record_key(queue_name, dead),
        mapping={"status": "running", "started_at": stale, "heartbeat_at": stale},
    )
    assert _submit(b, "a", "qa5").status_code == 202
    lost = a.get(f"/v1/jobs/{dead}", headers={"Authorization": f"Bearer {KEYS['a']}"}).json()
    assert lost["status"] == "failed" and "worker lost" in lost["error"]


def test_job_size_cap_per_key(two_apis):
    a, _ = two_apis
    r = _submit(a, "c", "big", iterations=100, batch_size=32)  # 3200 > key c's 1000
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "job_too_large"
    assert "100 x 32 x 1 = 3200" in err["message"] and "at most 1000" in err["message"]
    assert _submit(a, "c", "small", iterations=10, batch_size=32).status_code == 202
    assert _submit(a, "a", "big", iterations=100, batch_size=32).status_code == 202
    r = _submit(a, "a", "huge", iterations=1_000_000, batch_size=65_536)  # default cap
    assert r.status_code == 422 and r.json()["error"]["code"] == "job_too_large"
