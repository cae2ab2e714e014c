"""Save -> load round trips: bit-identical outputs in a fresh process, ActNorm state kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_store import ModelNotFound
from model_store.manifest import MANIFEST_FILE, WEIGHTS_FILE
from tests.helpers.flows import actnorm_state, flow_outputs, make_flow
from tests.store.store_procs import run_worker


def test_fresh_process_load_is_bit_identical(store, tmp_path) -> None:
    """The child rebuilds from JSON + safetensors only; every output must match exactly.

    Both sides use one thread so that float reductions run in the same order.
    """
    flow = make_flow(dim=3, seed=1)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(5)) * 2.0 + 3.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = flow_outputs(flow, x)
    finally:
        torch.set_num_threads(threads)
    published = store.publish("roundtrip", flow, training={"metrics": {"test_nll": 1.5}})
    np.save(tmp_path / "x.npy", x.numpy())
    run_worker(
        "load", str(store.root), "roundtrip", str(published.version),
        str(tmp_path / "x.npy"), str(tmp_path / "out.npz"),
    )  # fmt: skip
    got = np.load(tmp_path / "out.npz")
    for key in ("log_prob", "z", "inverse", "residual"):
        assert got[key].dtype == want[key].dtype
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # The round trip is a real test: outputs are not trivial (inverse converged, map non-identity).
    assert float(np.abs(want["z"] - x.numpy()).max()) > 0.1
    assert float(want["residual"].max()) <= 1e-4
    assert bool(got["actnorm_unchanged"]), "loaded ActNorm changed on a first batch"
    assert not bool(got["training"]), "a loaded flow must be in eval mode"


def test_actnorm_state_survives_and_is_not_reinitialised(store) -> None:
    flow = make_flow(dim=2, seed=2)
    want = actnorm_state(flow)
    assert any(k.endswith("initialized") for k in want)
    loaded = store.load("m", store.publish("m", flow).version).flow
    got = actnorm_state(loaded)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert all(bool(v) for k, v in got.items() if k.endswith("initialized"))
    # A first batch with very different statistics must leave ActNorm as it was.
    loaded.log_prob(torch.randn(32, 2) * 10 - 20, method="exact")
    after = actnorm_state(loaded)
    for key in want:
        assert torch.equal(want[key], after[key]), key


def test_manifest_contents(store) -> None:
    flow = make_flow(dim=2, seed=3)
    training = {
        "dataset": {"name": "two_moons", "sha256": "ab" * 32},
        "trainer": {"epochs": 3, "lr": 1e-3},
        "metrics": {"train_nll": 1.0, "val_nll": 1.1, "test_nll": float("nan"), "method": "exact"},
        "wall_time_s": 2.5,
        "job_id": "job-1",
    }
    published = store.publish("moons", flow, training=training, plots={"loss.png": b"\x89PNG"})
    manifest = published.manifest
    assert manifest == store.manifest("moons")
    on_disk = json.loads((published.path / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    assert manifest["name"] == "moons" and manifest["version"] == 1
    assert manifest["created_at"].endswith("Z")
    assert manifest["flow_config"] == flow.config.model_dump(mode="json")
    assert manifest["dim"] == 2
    mean = flow.standardization.mean.tolist()
    assert manifest["standardization"]["mean"] == pytest.approx(mean)
    assert manifest["training"]["metrics"]["test_nll"] is None  # NaN is not JSON
    assert manifest["training"]["parameter_count"] == sum(p.numel() for p in flow.parameters())
    assert manifest["training"]["job_id"] == "job-1"
    assert set(manifest["files"]) == {WEIGHTS_FILE, "plots/loss.png"}
    assert manifest["plots"] == ["loss.png"]
    assert manifest["onnx"] == {"exported": False}
    assert store.plot_path("moons", 1, "loss.png").read_bytes() == b"\x89PNG"
    with pytest.raises(ModelNotFound):
        store.plot_path("moons", 1, "other.png")


def test_versions_latest_list_delete(store) -> None:
    flows = [make_flow(dim=2, seed=s, blocks=1, hidden=4) for s in range(3)]
    numbers = [store.publish("v", f, training={"metrics": {"test_nll": s}}).version
               for s, f in enumerate(flows)]  # fmt: skip
    assert numbers == [1, 2, 3]
    assert store.versions("v") == [1, 2, 3]
    assert store.resolve("v", "latest") == 3 and store.resolve("v", "2") == 2
    [summary] = store.list_models()
    assert summary == {
        "name": "v", "version": 3, "dim": 2,
        "created_at": store.manifest("v", 3)["created_at"], "metrics": {"test_nll": 2},
    }  # fmt: skip
    store.delete("v", 3)
    assert store.versions("v") == [1, 2]
    assert store.resolve("v", "latest") == 2
    # Numbers are never reused: a service that cached version 3 must not get other weights.
    assert store.publish("v", flows[0]).version == 4
    store.delete("v", "latest")
    with pytest.raises(ModelNotFound):
        store.load("v", 4)
    for bad in (0, -1, 99, "x", "01", True, 2.0):
        with pytest.raises(ModelNotFound):
            store.resolve("v", bad)
    with pytest.raises(ModelNotFound):
        store.resolve("nobody")
    assert not [p for p in (store.root / "v").iterdir() if p.name.startswith(".trash")]


def test_load_on_requested_device_and_dtype(store) -> None:
    from cpflow import CPFlow, FlowConfig

    flow = CPFlow(FlowConfig(dim=2, blocks=1, hidden=4, depth=1, dtype="float64"))
    flow.initialize(torch.randn(16, 2, dtype=torch.float64))
    loaded = store.load("d64", store.publish("d64", flow).version, device="cpu")
    params = list(loaded.flow.parameters())
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in params)
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(loaded.flow.transform(x), flow.transform(x))


def test_no_pickle_in_store_code() -> None:
    """Checkpoints are never unpickled: no torch.load / pickle in the package."""
    from pathlib import Path

    import model_store

    for path in Path(model_store.__file__).parent.glob("*.py"):
        text = path.read_text()
        for needle in ("torch.load(", "import pickle", "allow_pickle=True"):
            assert needle not in text, f"{needle} in {path.name}"
