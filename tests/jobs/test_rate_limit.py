"""Request-rate limits through real uvicorn processes: counted in the real Redis and shared by
two replicas, 429 rate_limited with Retry-After on /v1 and /v2 (each in its error shape), per-key
limits, recovery after Retry-After; with Redis killed the limiter fails open (scoring answers,
a warning is logged) and limits again once Redis is back; storage auto moves to a Redis that
starts answering late; requests failing auth are limited per client address, apart from keys."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers.ports import free_port
from tests.helpers.procs import replicas, stack_env, start_redis, start_server, wait_for
from tests.helpers.service import publish_models

KEYS = {"a": "rate-a", "b": "rate-b"}
LOG_PROB = "/v1/models/toy2d/log_prob"
V2_INFER = "/v2/models/toy2d/infer"
ROW = {"inputs": [[0.1, 0.2]]}
V2_ROW = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.2]}]}


def _env(tmp_path: Path, queue_name: str, redis_url: str, limit: str) -> dict[str, str]:
    store = tmp_path / "store"
    publish_models(store)
    env = stack_env(store, queue_name, redis_url)
    env.update(
        {
            "CPFLOW_API_KEYS": ",".join(KEYS.values()),
            "CPFLOW_RATE_LIMIT": limit,
            "CPFLOW_RATE_LIMIT_STORAGE": "redis",
            "CPFLOW_KEY_LIMITS": json.dumps({KEYS["b"]: {"rate_limit": "1000/minute"}}),
            "CPFLOW_LOG_LEVEL": "INFO",
        }
    )
    return env


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


@pytest.fixture
def servers(tmp_path, queue_name):
    env = _env(tmp_path, queue_name, "redis://127.0.0.1:6379/13", "3 per 6 seconds")
    with replicas(env, tmp_path) as clients:
        yield clients


def test_limit_shared_by_replicas_with_retry_after_and_recovery(servers):
    a, b = servers
    for c in (a, b):  # load the model on both first (key b has a limit of its own)
        assert c.post(LOG_PROB, json=ROW, headers=_auth("b")).status_code == 200
    answers = [c.post(LOG_PROB, json=ROW, headers=_auth("a")) for c in (a, b, a)]
    assert [r.status_code for r in answers] == [200, 200, 200], answers[-1].text
    refused = b.post(LOG_PROB, json=ROW, headers=_auth("a"))  # the 4th in 6 s, other replica
    assert refused.status_code == 429, refused.text
    err = refused.json()["error"]
    assert err["code"] == "rate_limited" and "3 per 6 second" in err["message"]
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 6
    v2 = a.post(V2_INFER, json=V2_ROW, headers=_auth("a"))  # /v2 counts too, protocol shape
    assert v2.status_code == 429 and set(v2.json()) == {"error"}
    assert "rate limit" in v2.json()["error"] and v2.headers["retry-after"]
    # another key has its own (larger) limit; health probes are never limited
    assert all(a.post(LOG_PROB, json=ROW, headers=_auth("b")).status_code == 200 for _ in range(5))
    assert a.get("/v2/health/ready").status_code == 200 and a.get("/healthz").status_code == 200
    time.sleep(retry)
    assert a.post(V2_INFER, json=V2_ROW, headers=_auth("a")).status_code == 200  # recovered


def test_redis_down_fails_open_and_limits_again_when_back(tmp_path, queue_name):
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    redis_proc = start_redis(port, data, tmp_path / "redis.log")
    env = _env(tmp_path, queue_name, f"redis://127.0.0.1:{port}/0", "2/minute")
    api, url = start_server(env, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=url, timeout=30, headers=_auth("a")) as c:
            assert [c.post(LOG_PROB, json=ROW).status_code for _ in range(2)] == [200, 200]
            assert c.post(LOG_PROB, json=ROW).status_code == 429
            redis_proc.stop()
            for _ in range(4):  # scoring never stops because of the limiter
                r = c.post(LOG_PROB, json=ROW)
                assert r.status_code == 200, r.text
            assert c.post(V2_INFER, json=V2_ROW).status_code == 200
            wait_for(lambda: "rate limiter storage unreachable" in api.tail(200), 10, "log line")
            redis_proc = start_redis(port, data, tmp_path / "redis2.log")  # its counts kept
            wait_for(lambda: c.post(LOG_PROB, json=ROW).status_code == 429, 30, "limits again")
            assert "reachable again" in api.tail(200)
    finally:
        api.stop()
        redis_proc.stop()


def test_in_process_limits_without_redis(tmp_path):
    """Storage auto with no Redis answering: the limits hold in the process (per client address
    on a server without keys)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    store = tmp_path / "store"
    publish_models(store)
    settings = Settings(store_dir=store, redis_url="redis://127.0.0.1:1/0", rate_limit="2/minute",
                        inference_threads=1, torch_threads=1)  # fmt: skip
    with TestClient(create_app(settings)) as c:
        assert [c.post(LOG_PROB, json=ROW).status_code for _ in range(2)] == [200, 200]
        r = c.post(LOG_PROB, json=ROW)
        assert r.status_code == 429 and "per client address" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


def test_auto_storage_moves_to_redis_once_it_answers(tmp_path, queue_name):
    """Storage auto, Redis started after the replicas: each counts alone, then both find Redis
    (asked again every 0.5 s here) and share one count there."""
    port = free_port()
    env = _env(tmp_path, queue_name, f"redis://127.0.0.1:{port}/0", "3/minute")
    env.update({"CPFLOW_RATE_LIMIT_STORAGE": "auto", "CPFLOW_RATE_LIMIT_REPROBE_S": "0.5"})
    data = tmp_path / "redis"
    data.mkdir()
    redis_proc = None
    try:
        with replicas(env, tmp_path) as (a, b):
            assert [a.post(LOG_PROB, json=ROW, headers=_auth("a")).status_code for _ in range(4)] == [
                200, 200, 200, 429
            ]  # fmt: skip
            assert b.post(LOG_PROB, json=ROW, headers=_auth("a")).status_code == 200  # own count
            redis_proc = start_redis(port, data, tmp_path / "redis.log")
            logs = [tmp_path / f"api{i}.log" for i in range(2)]

            def both_moved() -> bool:  # key b's requests (own limit) set off the probes
                for c in (a, b):
                    assert c.post(LOG_PROB, json=ROW, headers=_auth("b")).status_code == 200
                return all("Redis answers now" in log.read_text() for log in logs)

            wait_for(both_moved, 30, "both replicas to count in Redis", step=0.2)
            answers = [c.post(LOG_PROB, json=ROW, headers=_auth("a")) for c in (a, b, a, b)]
            assert [r.status_code for r in answers] == [200, 200, 200, 429], answers[-1].text
        keys = redis.Redis(port=port).keys(f"cpflow:{queue_name}:rate*")
        assert keys, "no rate counts in Redis"
    finally:
        if redis_proc is not None:
            redis_proc.stop()


def test_failed_auth_limited_per_address_apart_from_keys(tmp_path):
    """Missing or wrong keys count per client address: past the limit they get 429 instead of
    401 (a key-guessing client is limited), and a valid key's own budget is untouched."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    store = tmp_path / "store"
    publish_models(store)
    settings = Settings(store_dir=store, api_keys=(KEYS["a"],), rate_limit="3/minute",
                        rate_limit_storage="memory", inference_threads=1, torch_threads=1)  # fmt: skip
    guess = {"Authorization": "Bearer not-a-key"}
    with TestClient(create_app(settings)) as c:
        codes = [c.post(LOG_PROB, json=ROW, headers=guess).status_code for _ in range(3)]
        assert codes == [401, 401, 401]
        r = c.post(LOG_PROB, json=ROW, headers=guess)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert "per client address" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert c.post(LOG_PROB, json=ROW).status_code == 429  # no key at all: same address
        v2 = c.post(V2_INFER, json=V2_ROW, headers=guess)
        assert v2.status_code == 429 and set(v2.json()) == {"error"}
        ok = [c.post(LOG_PROB, json=ROW, headers=_auth("a")).status_code for _ in range(4)]
        assert ok == [200, 200, 200, 429]  # the key's own 3/minute, not spent by the guesses
        assert c.get("/healthz").status_code == 200
