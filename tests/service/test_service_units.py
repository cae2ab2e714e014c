"""Unit tests of the service's own pieces: settings parsing, the micro-batcher, the LRU of
loaded models, the body-limit and auth middlewares (in-process, no server needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.auth import key_matches
from service.batching import MicroBatcher
from service.settings import Settings


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CPFLOW_STORE_DIR", str(tmp_path))
    monkeypatch.setenv("CPFLOW_API_KEYS", " k1 , k2,,")
    monkeypatch.setenv("CPFLOW_DEVICE", "CUDA:1")
    monkeypatch.setenv("CPFLOW_MAX_BATCH", "12")
    monkeypatch.setenv("CPFLOW_LOG_LEVEL", "debug")
    s = Settings()
    assert s.store_dir == tmp_path and s.api_keys == ("k1", "k2") and s.device == "cuda:1"
    assert s.max_batch == 12 and s.log_level == "DEBUG"
    assert "k1" not in repr(s)  # keys never show in logs of the settings
    monkeypatch.setenv("CPFLOW_API_KEYS", "")
    assert Settings().api_keys == ()
    monkeypatch.setenv("CPFLOW_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device"):
        Settings()


def test_thread_defaults_do_not_oversubscribe():
    s = Settings(inference_threads=2)
    assert s.resolved_inference_threads("cpu") == 2
    assert s.resolved_torch_threads("cpu") >= 1
    assert Settings(torch_threads=3).resolved_torch_threads("cpu") == 3


def test_key_matches_is_exact():
    keys = [b"alpha", b"beta"]
    assert key_matches("alpha", keys) and key_matches("beta", keys)
    assert not key_matches("alph", keys) and not key_matches("alphaa", keys)
    assert not key_matches("", keys)


class _Recorder:
    """A row-wise function that records the batch sizes it was called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.gate.wait(5)
        self.calls.append(x.shape[0])
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x.sum(1) * 2


async def _run(fn):
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def test_microbatcher_coalesces_concurrent_requests():
    rec = _Recorder()
    batches = []
    batcher = MicroBatcher(rec, _run, max_rows=100, on_batch=lambda r, n: batches.append((r, n)))

    async def main():
        xs = [torch.full((i % 3 + 1, 2), float(i)) for i in range(20)]
        tasks = [asyncio.create_task(batcher.submit(xs[0]))]
        await asyncio.sleep(0.05)  # the first request runs alone (held at the gate) ...
        tasks += [asyncio.create_task(batcher.submit(x)) for x in xs[1:]]
        await asyncio.sleep(0.05)  # ... while the other 19 queue up behind it
        rec.gate.set()
        outs = await asyncio.gather(*tasks)
        for x, out in zip(xs, outs, strict=True):
            assert torch.equal(out, x.sum(1) * 2)  # each caller gets its own rows back

    asyncio.run(main())
    assert sum(rec.calls) == sum(i % 3 + 1 for i in range(20))
    assert rec.calls == [1, sum(i % 3 + 1 for i in range(1, 20))]
    assert batches == [(1, 1), (rec.calls[1], 19)]


def test_microbatcher_isolates_a_failing_request():
    rec = _Recorder()
    rec.gate.set()
    batcher = MicroBatcher(rec, _run, max_rows=100)

    async def main():
        good = [asyncio.create_task(batcher.submit(torch.ones(2, 2) * i)) for i in range(1, 4)]
        bad = asyncio.create_task(batcher.submit(-torch.ones(1, 2)))
        more = [asyncio.create_task(batcher.submit(torch.ones(1, 2) * i)) for i in range(4, 6)]
        results = await asyncio.gather(*good, *more)
        with pytest.raises(ValueError, match="negative"):
            await bad
        return results

    results = asyncio.run(main())
    assert [float(r[0]) for r in results] == [4.0, 8.0, 12.0, 16.0, 20.0]


def test_microbatcher_respects_max_rows():
    rec = _Recorder()
    batcher = MicroBatcher(rec, _run, max_rows=4)

    async def main():
        tasks = [asyncio.create_task(batcher.submit(torch.ones(1, 2))) for _ in range(10)]
        big = asyncio.create_task(batcher.submit(torch.ones(9, 2)))  # above max_rows: alone
        await asyncio.sleep(0.05)
        rec.gate.set()
        await asyncio.gather(*tasks, big)

    asyncio.run(main())
    assert max(rec.calls) == 9 and all(c <= 4 for c in rec.calls if c != 9)


@pytest.fixture
def app_client(store_dir):
    settings = Settings(store_dir=store_dir, model_cache_size=1, max_body_bytes=2048,
                        device="cpu", inference_threads=1, torch_threads=1)  # fmt: skip
    with TestClient(create_app(settings)) as c:
        yield c


def _loaded(c) -> float:
    line = [
        ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("cpflow_loaded_models ")
    ]
    return float(line[0].split()[1])


def test_lru_keeps_at_most_model_cache_size_models(app_client):
    c = app_client
    assert c.post("/v1/models/toy2d/log_prob", json={"inputs": [[1, 2]]}).status_code == 200
    assert c.get("/v1/models/toy2d").json()["loaded"] is True
    assert c.post("/v1/models/toy4d/log_prob", json={"inputs": [[1, 2, 3, 4]]}).status_code == 200
    assert _loaded(c) == 1
    assert c.get("/v1/models/toy2d").json()["loaded"] is False  # evicted
    assert c.post("/v1/models/toy2d/log_prob", json={"inputs": [[1, 2]]}).status_code == 200


def test_body_limit_from_settings(app_client):
    r = app_client.post("/v1/models/toy2d/log_prob", json={"inputs": [[1.0, 2.0]] * 400})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_cli_hands_the_factory_to_uvicorn(monkeypatch):
    import uvicorn

    from service import cli

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    cli.main(["--host", "0.0.0.0", "--port", "9001", "--workers", "3"])
    app, kw = calls[0]
    assert app == "service.app:create_app" and kw["factory"] is True
    assert (kw["host"], kw["port"], kw["workers"]) == ("0.0.0.0", 9001, 3)
    with pytest.raises(SystemExit):
        cli.main(["--workers", "0"])


def test_store_dir_is_created_at_startup(tmp_path):
    settings = Settings(store_dir=tmp_path / "new" / "store", device="cpu")
    with TestClient(create_app(settings)) as c:
        assert (tmp_path / "new" / "store").is_dir()
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["store"]["models"] == 0
        assert c.get("/v1/models").json() == {"models": [], "count": 0}


def test_preload_loads_models_at_startup(store_dir):
    settings = Settings(store_dir=store_dir, device="cpu", preload_models="toy2d, nope")
    assert settings.preload_models == ("toy2d", "nope")
    with TestClient(create_app(settings)) as c:
        for _ in range(200):  # background task: wait for it, bounded
            if c.get("/readyz").json()["loaded_models"] >= 1:
                break
            time.sleep(0.05)
        assert c.get("/v1/models/toy2d").json()["loaded"] is True
        # The unknown name was logged and skipped; the server serves normally.
        assert c.get("/healthz").status_code == 200
