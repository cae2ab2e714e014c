"""The runtime answering exact log_prob and forward transport: onnxruntime over a version's
exports, or torch (CPFLOW_RUNTIME), with the same answers, a torch fallback for damaged or
missing exports, the runtime in the model's description and a metrics label."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from cpflow import CPFlow, FlowConfig
from model_store import ModelStore
from model_store.manifest import ONNX_FILE, ONNX_LOG_PROB_FILE
from service.app import create_app
from service.settings import Settings

ONNX_OPS = {"log_prob_exact": "onnx", "transport_forward": "onnx"}
TORCH_ONLY = {"log_prob_slq": "torch", "transport_inverse": "torch", "sample": "torch"}
ALL_TORCH = {"log_prob_exact": "torch", "transport_forward": "torch", **TORCH_ONLY}


def _flow(
    config: FlowConfig, rows: torch.Tensor, seed: int, context: torch.Tensor | None = None
) -> CPFlow:
    """An initialised flow whose parameters are pushed away from the identity map."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the initial parameters: the same flow whatever ran before
    flow = CPFlow(config)
    flow.initialize(rows, context)
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return flow.eval()


def dense_flow(dim: int = 3) -> CPFlow:
    gen = torch.Generator().manual_seed(dim)
    data = torch.randn(128, dim, generator=gen) * 2.0 + 1.0
    config = FlowConfig(dim=dim, blocks=2, hidden=8, depth=2)
    flow = _flow(config, data, seed=dim)
    flow.set_standardization(data.mean(0), data.std(0))
    return flow


def image_flow(kind: str) -> CPFlow:
    """A 1x4x4 image flow with convolutional potentials (conv) or coupling blocks."""
    potential = {"kind": kind, "hidden": 4, **({"depth": 2} if kind == "conv" else {})}
    config = FlowConfig(image_shape=(1, 4, 4), blocks=[1, 1], potential=potential)
    return _flow(config, torch.rand(64, 16, generator=torch.Generator().manual_seed(1)), seed=2)


def conditional_flow() -> CPFlow:
    config = FlowConfig(dim=2, context_dim=1, blocks=1, hidden=4, depth=1)
    return _flow(config, torch.randn(64, 2), seed=3, context=torch.randn(64, 1))


@contextmanager
def serving(root: Path, runtime: str, **extra: object) -> Iterator[TestClient]:
    settings = Settings(store_dir=root, cache_dir=root.parent / "cache", runtime=runtime,
                        redis_url="redis://127.0.0.1:1/0", **extra)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def _post(client: TestClient, name: str, op: str, body: dict) -> dict:
    response = client.post(f"/v1/models/{name}/{op}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _answers(client: TestClient, name: str, x: np.ndarray, c: np.ndarray | None):
    body: dict = {"inputs": x.tolist()}
    if c is not None:
        body["context"] = c.tolist()
    lp = _post(client, name, "log_prob", {**body, "method": "exact"})["log_prob"]
    z = _post(client, name, "transport", body)["outputs"]
    return np.asarray(lp, dtype=np.float64), np.asarray(z, dtype=np.float64).reshape(len(x), -1)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))


def _runtime(client: TestClient, name: str) -> dict[str, str]:
    response = client.get(f"/v1/models/{name}")
    assert response.status_code == 200, response.text
    return response.json()["runtime"]


@pytest.fixture(scope="module")
def kinds_store(tmp_path_factory) -> Path:
    """One version of each kind, published with exports (as training publishes)."""
    root = tmp_path_factory.mktemp("runtime") / "store"
    store = ModelStore(root)
    for name, flow in (("dense", dense_flow()), ("image", image_flow("conv")),
                       ("coupling", image_flow("coupling")), ("cond", conditional_flow())):  # fmt: skip
        store.publish(name, flow, export_onnx=True)
    return root


@pytest.mark.parametrize("name", ["dense", "image", "coupling", "cond"])
def test_answers_agree_between_runtimes(kinds_store: Path, name: str) -> None:
    """Per row, onnxruntime's exact log_prob and forward transport agree with torch's within
    1e-5 relative (above |value| = 1), and both with the library called directly."""
    loaded = ModelStore(kinds_store).load(name)
    flow = loaded.flow
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, (64, flow.dim)).astype(np.float32)
    c = rng.normal(0, 1, (64, 1)).astype(np.float32) if flow.context_dim else None
    with serving(kinds_store, "onnx") as client:  # onnxruntime on every batch size
        fast_lp, fast_z = _answers(client, name, x, c)
        runtime = _runtime(client, name)
    with serving(kinds_store, "torch") as client:
        slow_lp, slow_z = _answers(client, name, x, c)
        assert _runtime(client, name) == ALL_TORCH
    assert runtime == (ALL_TORCH if name == "cond" else {**ONNX_OPS, **TORCH_ONLY})
    assert _relative(fast_lp, slow_lp) <= 1e-5
    assert _relative(fast_z, slow_z) <= 1e-5
    context = None if c is None else torch.from_numpy(c)
    with torch.no_grad():
        want_lp = flow.log_prob(torch.from_numpy(x), context, method="exact").double().numpy()
        want_z = flow.transform(torch.from_numpy(x), context).double().numpy().reshape(64, -1)
    assert _relative(slow_lp, want_lp) <= 1e-6
    assert _relative(fast_lp, want_lp) <= 1e-5 and _relative(fast_z, want_z) <= 1e-5
    assert float(np.abs(fast_z - x.reshape(64, -1)).max()) > 0.1  # not the identity map


def test_metrics_label_the_runtime(kinds_store: Path) -> None:
    x = [[0.1, 0.2, 0.3]]
    with serving(kinds_store, "onnx") as client:
        _post(client, "dense", "log_prob", {"inputs": x, "method": "exact"})
        _post(client, "dense", "transport", {"inputs": x})
        _post(client, "dense", "log_prob", {"inputs": x, "method": "slq", "seed": 0})
        text = client.get("/metrics").text
    for op, runtime in (("log_prob_exact", "onnx"), ("transport_forward", "onnx"),
                        ("log_prob_slq", "torch")):  # fmt: skip
        labels = f'model="dense",operation="{op}",runtime="{runtime}"'
        assert f"cpflow_inference_requests_total{{{labels}}} 1.0" in text
    assert 'cpflow_inference_pass_seconds_count{model="dense",operation="log_prob_exact",' \
        'runtime="onnx"} 1.0' in text  # fmt: skip


def test_runtime_setting_and_derived_exports(tmp_path: Path) -> None:
    """auto serves a version without exports by torch, and one with exports by onnxruntime
    (one-row passes: several times faster than torch, so timing at load keeps it); onnx
    derives missing exports into the cache folder (the published version is left as it was)
    and serves them; torch never uses onnxruntime, even for a version that ships exports."""
    root = tmp_path / "store"
    store = ModelStore(root)
    plain = store.publish("plain", dense_flow(2))
    shipped = store.publish("shipped", dense_flow(2), export_onnx=True)
    before = sorted(p.name for p in plain.path.iterdir())
    x = np.array([[0.3, -1.2], [2.0, 0.5]], dtype=np.float32)
    with serving(root, "auto") as client:
        assert _runtime(client, "plain") == ALL_TORCH  # planned, before loading
        torch_lp, torch_z = _answers(client, "plain", x, None)
        assert _runtime(client, "plain") == ALL_TORCH
        assert _runtime(client, "shipped") == {**ONNX_OPS, **TORCH_ONLY}  # planned
        _answers(client, "shipped", x[:1], None)
        runtime = _runtime(client, "shipped")
        assert {runtime[op][:4] for op in ONNX_OPS} == {"onnx"}, runtime
        assert {op: runtime[op] for op in TORCH_ONLY} == TORCH_ONLY
        text = client.get("/metrics").text
    assert 'model="shipped",operation="log_prob_exact",runtime="onnx"} 1.0' in text
    with serving(root, "torch") as client:
        _answers(client, "shipped", x, None)
        assert _runtime(client, "shipped") == ALL_TORCH
    with serving(root, "onnx") as client:
        assert _runtime(client, "plain") == {**ONNX_OPS, **TORCH_ONLY}  # planned
        onnx_lp, onnx_z = _answers(client, "plain", x, None)
        assert _runtime(client, "plain") == {**ONNX_OPS, **TORCH_ONLY}
        text = client.get("/metrics").text
    assert 'model="plain",operation="log_prob_exact",runtime="onnx"} 1.0' in text
    assert _relative(onnx_lp, torch_lp) <= 1e-5 and _relative(onnx_z, torch_z) <= 1e-5
    cached = tmp_path / "cache" / "onnx" / "plain" / "1"
    assert sorted(p.name for p in cached.iterdir()) == sorted([ONNX_FILE, ONNX_LOG_PROB_FILE])
    assert sorted(p.name for p in plain.path.iterdir()) == before
    assert store.load("plain").onnx_path is None and shipped.version == 1


@pytest.mark.parametrize("damage", ["flip", "delete", "garbage"])
def test_damaged_export_falls_back_to_torch(tmp_path: Path, damage: str) -> None:
    """A corrupt (bytes flipped), missing or unparseable (digest updated to match) export:
    the model answers 200 from torch, the same values, with a warning in the log."""
    root = tmp_path / "store"
    published = ModelStore(root).publish("m", dense_flow(2), export_onnx=True)
    x = np.array([[0.3, -1.2], [2.0, 0.5]], dtype=np.float32)
    with serving(root, "torch") as client:
        want_lp, want_z = _answers(client, "m", x, None)
    path = published.path / ONNX_LOG_PROB_FILE
    if damage == "delete":
        path.unlink()
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:  # a well-listed file onnxruntime cannot parse: fails when the session is built
        _rewrite_listed(published.path, ONNX_LOG_PROB_FILE, b"not an onnx graph")
    warnings = _Warnings()
    with serving(root, "auto") as client:
        logging.getLogger("cpflow").addHandler(warnings)  # the app's logging is set up by now
        try:
            got_lp, got_z = _answers(client, "m", x, None)
            runtime = _runtime(client, "m")
        finally:
            logging.getLogger("cpflow").removeHandler(warnings)
    assert runtime["log_prob_exact"] == "torch"
    assert _relative(got_lp, want_lp) <= 1e-6 and _relative(got_z, want_z) <= 1e-5
    assert any("ONNX" in r.getMessage() for r in warnings.records), warnings.records


class _Warnings(logging.Handler):
    """Keeps the warnings the service logs (its loggers do not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _rewrite_listed(folder: Path, filename: str, data: bytes) -> None:
    """Replace a file and update its digest in the manifest (and the manifest's digest), so
    the store's checks pass and only onnxruntime can notice."""
    import json

    from model_store import fsio
    from model_store.manifest import MANIFEST_DIGEST_FILE, MANIFEST_FILE, dump_manifest

    (folder / filename).write_bytes(data)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][filename] = fsio.sha256_bytes(data)
    raw = dump_manifest(manifest)
    (folder / MANIFEST_FILE).write_bytes(raw)
    (folder / MANIFEST_DIGEST_FILE).write_text(fsio.sha256_bytes(raw))


def test_calibration_keeps_onnxruntime_where_it_is_faster() -> None:
    """At load (auto), each session is timed against torch on growing batches: onnxruntime
    keeps the sizes where it is faster, and a session slower even on one row is dropped."""
    import time

    from service.runtime import PROBE_ROWS, Runtimes, calibrate

    def cost(ms_of_rows):
        def run(x):
            time.sleep(ms_of_rows(len(x)) / 1000)
            return x

        return run

    runtimes = Runtimes(
        sessions={
            "log_prob_exact": cost(lambda rows: 1 if rows <= 32 else 40),
            "transport_forward": cost(lambda rows: 30),
        }
    )
    torch_pass = cost(lambda rows: 10)
    passes = {"log_prob_exact": torch_pass, "transport_forward": torch_pass}
    timings = calibrate(runtimes, passes, dim=2, dtype=torch.float32)
    assert runtimes.max_rows == {"log_prob_exact": 32}
    assert list(runtimes.sessions) == ["log_prob_exact"]
    assert sorted(timings["log_prob_exact"]) == [1, 32, 256] and PROBE_ROWS[2] == 256
    assert runtimes.of("log_prob_exact", 32) == "onnx"
    assert runtimes.of("log_prob_exact", 33) == "torch"
    assert runtimes.of("transport_forward", 1) == "torch"
    assert runtimes.describe() == {**ALL_TORCH, "log_prob_exact": "onnx<=32"}

    def broken(x):
        raise RuntimeError("onnxruntime failed")

    failing = Runtimes(sessions={"log_prob_exact": broken})
    calibrate(failing, passes, dim=2, dtype=torch.float32, model=("m", 1))
    assert failing.sessions == {} and failing.describe() == ALL_TORCH
