"""The model store on S3-compatible object storage, against a real server process (moto).

Same guarantees as the local store: a version appears all at once (commit marker last),
concurrent publishers on different processes get distinct numbers (conditional writes), every
file is digest-checked on load (a tampered byte names its file), a publisher killed mid-upload
leaves nothing visible and cleanup removes its files, a deleted version keeps serving where it
was cached.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid

import pytest
import torch

from model_store import CorruptModel, ModelNameTaken, ModelNotFound, object_store
from model_store.object_store import ObjectModelStore, StoreUnavailable
from tests.helpers.flows import make_flow
from tests.helpers.s3 import client


@pytest.fixture
def endpoint(s3_endpoint):
    return s3_endpoint


@pytest.fixture
def bucket(endpoint) -> str:
    name = f"cpflow-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=name)
    return name


def _store(endpoint: str, bucket: str, cache, **kw) -> ObjectModelStore:
    return ObjectModelStore(bucket, "models", cache, client=client(endpoint), **kw)


def test_round_trip_is_bit_identical_through_a_fresh_cache(endpoint, bucket, tmp_path) -> None:
    a = _store(endpoint, bucket, tmp_path / "cache-a")
    flow = make_flow(3, 0)
    pub = a.publish("m", flow, training={"note": "x"}, plots={"p.png": b"\x89PNG fake"})
    assert pub.version == 1 and a.versions("m") == [1] and a.names() == ["m"]
    b = _store(endpoint, bucket, tmp_path / "cache-b")  # another replica, empty cache
    loaded = b.load("m")
    x = torch.randn(16, 3)
    with torch.no_grad():
        assert torch.equal(
            loaded.flow.log_prob(x, method="exact"), flow.log_prob(x, method="exact")
        )
    for key, value in flow.state_dict().items():
        assert torch.equal(loaded.flow.state_dict()[key], value), key
    assert b.plot_path("m", 1, "p.png").read_bytes() == b"\x89PNG fake"
    assert b.list_models()[0]["name"] == "m"


def test_a_tampered_byte_is_refused_naming_the_file(endpoint, bucket, tmp_path) -> None:
    a = _store(endpoint, bucket, tmp_path / "cache-a")
    a.publish("bad", make_flow(2, 1))
    a.publish("good", make_flow(2, 2))
    s3 = client(endpoint)
    key = "models/bad/1/weights.safetensors"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    b = _store(endpoint, bucket, tmp_path / "cache-b")
    with pytest.raises(CorruptModel, match="weights.safetensors"):
        b.load("bad")
    assert b.load("good").version == 1  # other models keep serving


def _publish(endpoint: str, bucket: str, cache: str, seed: int, out, go) -> None:
    torch.set_num_threads(1)
    go.wait()
    store = _store(endpoint, bucket, cache)
    out.put(store.publish("race", make_flow(2, seed, blocks=1, hidden=4)).version)


def test_eight_concurrent_publishers_get_versions_one_to_eight(endpoint, bucket, tmp_path) -> None:
    ctx = multiprocessing.get_context("fork")
    out, go = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_publish, args=(endpoint, bucket, str(tmp_path / f"c{i}"), i, out, go))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    got = sorted(out.get(timeout=5) for _ in procs)
    assert got == list(range(1, 9))
    assert _store(endpoint, bucket, tmp_path / "check").versions("race") == got


def _publish_and_hang(endpoint: str, bucket: str, cache: str, marker: str) -> None:
    torch.set_num_threads(1)
    original = object_store._upload

    def slow(store, key, data):
        original(store, key, data)
        if key.endswith("weights.safetensors"):  # files half uploaded: pause to be killed
            open(marker, "w").close()
            time.sleep(600)

    object_store._upload = slow
    _store(endpoint, bucket, cache).publish("killed", make_flow(2, 0, blocks=1, hidden=4))


def test_a_publisher_killed_mid_upload_leaves_no_version(endpoint, bucket, tmp_path) -> None:
    marker = tmp_path / "paused"
    proc = multiprocessing.get_context("fork").Process(
        target=_publish_and_hang, args=(endpoint, bucket, str(tmp_path / "c"), str(marker))
    )
    proc.start()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    store = _store(endpoint, bucket, tmp_path / "reader", cleanup_grace_s=0.0)
    assert store.versions("killed") == [] and store.list_models() == []
    with pytest.raises(ModelNotFound):
        store.load("killed")
    assert store.cleanup() == ["killed/1"]  # its uploaded files go; its number stays claimed
    s3 = client(endpoint)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="models/killed/1/")
    assert store.publish("killed", make_flow(2, 1, blocks=1, hidden=4)).version == 2


def test_deleting_a_version_spares_replicas_that_serve_it(endpoint, bucket, tmp_path) -> None:
    a = _store(endpoint, bucket, tmp_path / "cache-a")
    a.publish("d", make_flow(2, 3))
    served = a.load("d")  # replica A has it cached and in memory
    b = _store(endpoint, bucket, tmp_path / "cache-b")
    b.delete("d", 1)
    assert b.versions("d") == [] and a.versions("d") == []
    x = torch.randn(4, 2)
    with torch.no_grad():
        assert torch.isfinite(served.flow.log_prob(x, method="exact")).all()
    assert a.publish("d", make_flow(2, 4)).version == 2  # numbers are never reused


def test_tenant_versions_name_their_owner_and_a_whole_model_goes(
    endpoint, bucket, tmp_path
) -> None:
    store = _store(endpoint, bucket, tmp_path / "cache")
    store.publish("mine", make_flow(2, 1, blocks=1, hidden=4), tenant="team-a")
    store.publish("mine", make_flow(2, 2, blocks=1, hidden=4), tenant="team-a")
    store.publish("ours", make_flow(2, 3, blocks=1, hidden=4))
    fresh = _store(endpoint, bucket, tmp_path / "fresh")  # another replica reads the bucket
    assert fresh.owner("mine") == "team-a" and fresh.owner("ours") is None
    for name, tenant in (("mine", "team-b"), ("mine", None), ("ours", "team-a")):
        with pytest.raises(ModelNameTaken):
            fresh.publish(name, make_flow(2, 4, blocks=1, hidden=4), tenant=tenant)
    assert fresh.delete_model("mine") == [1, 2]
    assert store.versions("mine") == [] and store.versions("ours") == [1]
    # The name is free again, its numbers are not reused.
    assert store.publish("mine", make_flow(2, 5, blocks=1, hidden=4), tenant="team-b").version == 3


def test_an_unreachable_server_is_store_unavailable(tmp_path) -> None:
    store = _store("http://127.0.0.1:9", "nowhere", tmp_path / "cache")  # nothing listens
    with pytest.raises(StoreUnavailable):
        store.versions("m")


def test_cpflow_train_publishes_into_an_s3_url(endpoint, bucket, tmp_path) -> None:
    """`cpflow-train --store-url s3://bucket/prefix` with the AWS variables of the server."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers.s3 import env_for

    root = Path(__file__).resolve().parents[2]
    env = {**env_for(endpoint), "PYTHONPATH": str(root), "CPFLOW_CACHE_DIR": str(tmp_path / "c")}
    cmd = [sys.executable, "-m", "training.cli", "--dataset", "two_moons", "--name", "moons"]
    cmd += ["--num-samples", "500", "--iterations", "10", "--quiet", "--no-plots"]
    cmd += ["--store-url", f"s3://{bucket}/models"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    store = _store(endpoint, bucket, tmp_path / "reader")
    assert store.versions("moons") == [1]
    assert store.load("moons").manifest["training"]["dataset"] == "two_moons"


def test_the_service_answers_503_when_the_object_store_is_down(tmp_path, monkeypatch) -> None:
    """Store-dependent routes: a 503 with the envelope's store_unavailable code, not a 500."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings(store_url="s3://down/models", cache_dir=tmp_path / "cache")
    with TestClient(create_app(settings)) as api:
        r = api.get("/v1/models")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable"
        r = api.post("/v1/models/m/log_prob", json={"inputs": [[0.0, 0.0]]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"


def test_uploaded_data_sets_are_shared_through_the_bucket(endpoint, bucket, tmp_path) -> None:
    """An upload on replica A is listed, loaded (sha256-checked) and deletable on machine B."""
    import numpy as np

    a = _store(endpoint, bucket, tmp_path / "cache-a", cleanup_grace_s=0.0)
    values = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    record = a.datasets.put(values, "blobs")
    b = _store(endpoint, bucket, tmp_path / "cache-b")
    assert [r.id for r in b.datasets.list()] == [record.id]
    assert np.array_equal(b.datasets.load(record.id), values)
    assert b.names() == []  # the data set area is not a model
    b.datasets.delete(record.id)
    c = _store(endpoint, bucket, tmp_path / "cache-c")
    assert c.datasets.list() == []
    with pytest.raises(Exception, match="not found"):
        c.datasets.load(record.id)
    assert a.cleanup() == []  # nothing half-written left behind


def test_an_outage_is_503_while_cached_models_serve_and_recovers(
    endpoint, bucket, tmp_path, monkeypatch
) -> None:
    """The object store goes away: store routes answer 503 store_unavailable, the model already
    cached keeps answering; it comes back: everything recovers without a restart."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from tests.helpers.s3 import Outage

    _store(endpoint, bucket, tmp_path / "publisher").publish("m", make_flow(2, 5))
    relay = Outage(endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", relay.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings(
        store_url=f"s3://{bucket}/models", cache_dir=tmp_path / "cache", poll_interval_s=0.0
    )
    rows = {"inputs": [[0.0, 1.0], [1.0, 2.0]], "method": "exact"}
    try:
        with TestClient(create_app(settings)) as api:
            before = api.post("/v1/models/m/log_prob", json=rows)
            assert before.status_code == 200, before.text
            relay.stop()
            r = api.get("/v1/models")
            assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
            during = api.post("/v1/models/m/log_prob", json=rows)  # cached: still served
            assert during.status_code == 200 and during.json() == before.json()
            assert api.get("/readyz").status_code == 503
            relay.start()
            assert api.get("/v1/models").status_code == 200
            assert api.get("/readyz").status_code == 200
    finally:
        relay.stop()


def test_the_cache_is_bounded_least_recently_used_first(endpoint, bucket, tmp_path) -> None:
    publisher = _store(endpoint, bucket, tmp_path / "publisher")
    for seed in range(3):
        publisher.publish(f"m{seed}", make_flow(2, seed))
    size = sum(p.stat().st_size for p in publisher.version_path("m0").rglob("*") if p.is_file())
    reader = _store(endpoint, bucket, tmp_path / "cache", cache_max_bytes=int(2.5 * size))
    reader.load("m0")
    reader.load("m1")
    time.sleep(0.01)
    reader.load("m0")  # m0 is now more recent than m1
    reader.load("m2")  # over budget: m1 goes
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir() if (p / "1").is_dir())
    assert cached == ["m0", "m2"]
    assert reader.load("m1").version == 1  # fetched again when asked
