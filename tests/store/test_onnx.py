"""ONNX export of the forward transport: parity with torch via onnxruntime, OnnxTransport."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_store import CorruptModel, StoreError
from model_store.explicit_logprob import LOG_PROB_MAX_DIM, unrolled_logdet
from model_store.manifest import ONNX_FILE, ONNX_LOG_PROB_FILE
from model_store.onnx_export import PARITY_POINTS, PARITY_TOLERANCE, parity_points
from model_store.onnx_runtime import OnnxLogProb, OnnxTransport
from tests.helpers.flows import make_flow


def _autograd_transform(flow, x: torch.Tensor) -> torch.Tensor:
    """Independent reference: each block's map as torch.autograd.grad of its potential F."""
    from cpflow import CPFlowBlock

    h = flow.standardization(x)
    for layer in flow.layers:
        if isinstance(layer, CPFlowBlock):
            h = h.detach().requires_grad_(True)
            (h,) = torch.autograd.grad(layer.potential(h).sum(), h)
        else:
            h = layer(h)
    return h.detach()


@pytest.mark.parametrize("dim", [2, 8, 43])
def test_onnx_parity_recorded_and_reproducible(store, dim: int) -> None:
    """Export on publish; the manifest records parity on 10,000 points within 1e-5 (float32).

    The test recomputes the difference independently on the same points with a fresh session
    over the stored file, against the loaded flow's autograd transform.
    """
    flow = make_flow(dim, seed=dim, blocks=2, hidden=8)
    published = store.publish(f"onnx{dim}", flow, export_onnx=True)
    info = published.manifest["onnx"]
    assert info["exported"] is True, info.get("reason")
    assert info["parity_points"] == PARITY_POINTS == 10_000
    assert 0.0 <= info["parity_max_abs_diff"] <= PARITY_TOLERANCE == 1e-5
    assert isinstance(info["opset"], int)
    assert ONNX_FILE in published.manifest["files"]

    loaded = store.load(f"onnx{dim}")
    assert loaded.onnx_path == published.path / ONNX_FILE
    session = OnnxTransport.from_loaded(loaded, threads=1)
    assert session.dim == dim
    x = parity_points(loaded.flow)
    got = np.concatenate([session(x[s : s + 2500]) for s in range(0, len(x), 2500)])
    want = loaded.flow.transform(torch.from_numpy(x)).detach().numpy()
    assert got.shape == want.shape == (PARITY_POINTS, dim)
    diff = float(np.abs(got - want).max())
    assert diff <= PARITY_TOLERANCE
    # The map is far from the identity, so agreement is not trivial.
    assert float(np.abs(want - x).max()) > 0.1
    # Dynamic batch axis: a single row works too.
    np.testing.assert_allclose(session(x[:1]), want[:1], atol=PARITY_TOLERANCE, rtol=0)
    # The exported graph is the gradient map: compare with autograd of the potentials in
    # float64 (1e-4: float32 rounding of outputs up to ~30 is ~1e-5 on its own).
    exact = _autograd_transform(loaded.flow.double(), torch.from_numpy(x[:2000]).double())
    assert float(np.abs(got[:2000] - exact.numpy()).max()) <= 1e-4

    density = info["log_prob"]
    if dim <= LOG_PROB_MAX_DIM:
        assert density["exported"] is True, density.get("reason")
        assert density["parity_max_scaled_diff"] <= PARITY_TOLERANCE
        lp_session = OnnxLogProb.from_loaded(loaded, threads=1)
        lp = lp_session(x[:2000]).astype(np.float64)
        lp_want = loaded.flow.log_prob(exact.new_tensor(x[:2000]), method="exact")
        lp_want = lp_want.detach().numpy()
        # Against float64 torch: relative 1e-5 above |log p| = 1 (float32 ulps grow with |log p|).
        assert float((np.abs(lp - lp_want) / np.maximum(1.0, np.abs(lp_want))).max()) <= 1e-5
    else:
        assert density["exported"] is False and "small dimensions" in density["reason"]
        assert ONNX_LOG_PROB_FILE not in published.manifest["files"]


def test_onnx_transport_rejects_bad_inputs_and_files(store) -> None:
    published = store.publish("o", make_flow(2, seed=0, blocks=1, hidden=4), export_onnx=True)
    loaded = store.load("o")
    session = OnnxTransport.from_loaded(loaded)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        session(np.zeros((3, 5), dtype=np.float32))
    # The file is verified by load(), and again by the session when given the digest.
    path = published.path / ONNX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptModel, match=ONNX_FILE):
        store.load("o")
    with pytest.raises(CorruptModel, match=ONNX_FILE):
        OnnxTransport.from_loaded(loaded)


def test_model_without_export(store) -> None:
    store.publish("plain", make_flow(2, seed=0, blocks=1, hidden=4))
    loaded = store.load("plain")
    assert loaded.onnx_path is None and loaded.manifest["onnx"] == {"exported": False}
    with pytest.raises(StoreError, match="export_onnx=True"):
        OnnxTransport.from_loaded(loaded)


def test_failed_parity_drops_the_export(store, monkeypatch) -> None:
    """A parity failure is recorded with its reason and no model.onnx is stored."""
    from model_store import onnx_export

    real = onnx_export.export_forward_transport
    monkeypatch.setattr(
        onnx_export, "export_forward_transport", lambda flow: real(flow, tolerance=-1.0)
    )
    published = store.publish("p", make_flow(2, seed=0, blocks=1, hidden=4), export_onnx=True)
    info = published.manifest["onnx"]
    assert info["exported"] is False and "parity" in info["reason"]
    assert info["parity_max_abs_diff"] is not None
    assert ONNX_FILE not in published.manifest["files"]
    assert not (published.path / ONNX_FILE).exists()
    assert store.load("p").onnx_path is None


@pytest.mark.slow
def test_dynamo_exporter_parity() -> None:
    """torch's default (dynamo) exporter, slow to run: same parity requirement."""
    from model_store.onnx_export import export_forward_transport

    exported = export_forward_transport(make_flow(8, seed=1), exporter="dynamo")
    assert exported.info["exporter"] == "dynamo"
    assert exported.info["exported"] is True, exported.info.get("reason")
    assert exported.info["parity_max_abs_diff"] <= PARITY_TOLERANCE


@pytest.mark.parametrize("dim", [1, 2, 7, 16])
def test_unrolled_logdet_matches_linalg(dim: int) -> None:
    """The exportable log-det equals torch.linalg.slogdet on random SPD matrices (float64),
    well and badly conditioned (eigenvalues spread over six decades)."""
    gen = torch.Generator().manual_seed(dim)
    a = torch.randn(50, dim, dim, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(a)
    spread = torch.logspace(-3, 3, dim, dtype=torch.float64)
    for spd in (a @ a.transpose(1, 2) + 0.1 * torch.eye(dim, dtype=torch.float64),
                q @ torch.diag(spread) @ q.transpose(1, 2)):  # fmt: skip
        sign, want = torch.linalg.slogdet(spd)
        assert bool((sign > 0).all())
        torch.testing.assert_close(unrolled_logdet(spd), want, atol=1e-9, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_expanded_for_onnxruntime_is_the_same_function(dtype) -> None:
    """The exported graphs carry no Softplus node (onnxruntime's kernel is scalar); the ops
    replacing it are no farther from torch's softplus (float64) than that kernel is, within a
    factor 2, from -100 to 100 (onnxruntime's float64 exp and log are not correctly rounded:
    both are ~2e-9 off near 20)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from model_store.onnx_export import _expand_softplus

    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    graph = helper.make_graph(
        [helper.make_node("Softplus", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, [None])],
        [helper.make_tensor_value_info("y", elem, [None])],
    )  # fmt: skip
    native = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    expanded = _expand_softplus(native.SerializeToString())
    assert "Softplus" not in {n.op_type for n in onnx.load_from_string(expanded).graph.node}
    x = np.concatenate([np.linspace(-100, 100, 2001), [-30.5, -1e-8, 0.0, 1e-8, 30.5]])
    x = x.astype(dtype)
    want = torch.nn.functional.softplus(torch.from_numpy(x).double()).numpy()

    def error(data: bytes) -> float:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return float(np.max(np.abs(session.run(None, {"x": x})[0] - want)))

    eps = float(np.finfo(dtype).eps)
    assert error(expanded) <= 2 * max(error(native.SerializeToString()), eps)


def test_exports_have_no_softplus_node(store) -> None:
    import onnx

    published = store.publish("nosoftplus", make_flow(2, seed=0, blocks=1, hidden=8),
                              export_onnx=True)  # fmt: skip
    for name in (ONNX_FILE, ONNX_LOG_PROB_FILE):
        ops = {n.op_type for n in onnx.load(str(published.path / name)).graph.node}
        assert ops and "Softplus" not in ops


def test_whitened_model_round_trips_and_exports(store) -> None:
    """A full-covariance standardisation (two extra (d, d) buffers) is stored with the weights,
    reloads exactly, and its ONNX transport and log-density match torch."""
    from cpflow import CPFlow, FlowConfig

    gen = torch.Generator().manual_seed(3)
    mix = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-1.0, 0.3, 0.2]])
    data = torch.randn(512, 3, generator=gen) @ mix.T + 4.0  # strongly correlated columns
    flow = CPFlow(FlowConfig(dim=3, blocks=2, hidden=8, depth=2, standardization="whiten"))
    flow.set_standardization(data.mean(0), torch.cov(data.T, correction=0))
    flow.initialize(data)
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen))
    flow.eval()
    published = store.publish("white", flow, export_onnx=True)
    loaded = store.load("white")
    assert loaded.flow.config.standardization == "whiten"
    x = data[:200]
    np.testing.assert_array_equal(
        loaded.flow.log_prob(x).detach().numpy(), flow.log_prob(x).detach().numpy()
    )
    info = published.manifest["onnx"]
    assert info["exported"] is True and info["parity_max_abs_diff"] <= PARITY_TOLERANCE
    got = OnnxTransport.from_loaded(loaded, threads=1)(x.numpy())
    np.testing.assert_allclose(got, flow.transform(x).detach().numpy(), atol=1e-5, rtol=0)
    lp = OnnxLogProb.from_loaded(loaded, threads=1)(x.numpy())
    want = flow.log_prob(x).detach().numpy()
    assert float((np.abs(lp - want) / np.maximum(1.0, np.abs(want))).max()) <= 1e-5


def test_image_flows_export_and_conditional_flows_say_why_not(store) -> None:
    """One flow type, one exporter: an image flow's forward map (squeezes, channel ActNorms,
    convolutional potentials) exports with the same parity check as rows; a conditional flow
    is published without ONNX and the manifest says why (the graph would need the context)."""
    from cpflow import CPFlow, FlowConfig

    image = CPFlow(FlowConfig(image_shape=(1, 4, 4), blocks=[1, 1], hidden=4, depth=2))
    image.initialize(torch.rand(32, 16, generator=torch.Generator().manual_seed(0)))
    pub = store.publish("img", image, export_onnx=True)
    info = pub.manifest["onnx"]
    assert info["exported"] and info["parity_max_abs_diff"] <= PARITY_TOLERANCE
    x = parity_points(image, 64, seed=1).astype(np.float32)
    got = OnnxTransport.from_loaded(store.load("img"), threads=1).forward(x)
    with torch.no_grad():
        want = image.transform(torch.as_tensor(x)).numpy()
    assert np.abs(got - want).max() <= PARITY_TOLERANCE

    cond = CPFlow(FlowConfig(dim=2, context_dim=1, blocks=1, hidden=4, depth=1))
    pub = store.publish("cond", cond, export_onnx=True)
    assert pub.manifest["onnx"]["exported"] is False
    assert "context" in pub.manifest["onnx"]["reason"]
