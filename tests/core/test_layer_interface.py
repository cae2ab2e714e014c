"""The one layer interface (cpflow.layer.FlowLayer): a flow that mixes every layer kind gets
the log-density that autograd's Jacobian gives, through every estimator and the inverse; a new
layer kind that leaves out a method is refused when it is built."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cpflow import CPFlow, CPFlowBlock, FlowConfig, RadialTerm
from cpflow.conv import ChannelActNorm, ConvICNN
from cpflow.coupling import AffineCouplingBlock
from cpflow.icnn import ICNN
from cpflow.layer import AffineLayer, FlowLayer, InverseSolve, Prepared, SLQProbes
from cpflow.layers import ActNorm, Squeeze, Standardization, Unsqueeze

SHAPE = (1, 2, 2)  # d = 4 as an image, (4, 1, 1) after the squeeze
D = 4
TOL = 1e-10  # float64 throughout: chain and autograd agree to round-off


def mixed_flow(conditional: bool) -> CPFlow:
    """A flow over d = 4 whose chain mixes layer kinds: the whitened one holds a
    whitening standardisation, ActNorm and channel ActNorm, CP-Flow blocks over a dense ICNN,
    a convolutional ICNN and a dense ICNN with a radial term, an affine coupling block, a
    squeeze and the unsqueeze back; the conditional one (whose blocks all take the context)
    two PICNN blocks between the same shape layers and coupling block. Parameters are
    perturbed away from initialisation so that no layer is the identity."""
    torch.manual_seed(0)
    if conditional:
        cfg = FlowConfig.conditional(D, 2, blocks=2, hidden=8, depth=2, dtype="float64")
    else:
        cfg = FlowConfig(dim=D, blocks=1, hidden=8, depth=2, dtype="float64")
        cfg = cfg.model_copy(update={"standardization": "whiten"})
    flow = CPFlow(cfg)
    first, second = list(flow.layers[:2]), list(flow.layers[2:])
    if not conditional:
        conv = CPFlowBlock(ConvICNN(SHAPE, hidden=3, depth=2))
        second = [CPFlowBlock(ICNN(D, 8, 2), radial=RadialTerm(D, 3)), ActNorm(D)]
        first = [*first, ChannelActNorm(*SHAPE), conv]
    chain = [
        *first,
        AffineCouplingBlock(SHAPE, hidden=4, parity=0),
        Squeeze(SHAPE),
        *second,
        Unsqueeze(SHAPE),
    ]
    flow.layers = nn.ModuleList(chain).to(torch.float64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    if conditional:
        flow.set_standardization(torch.randn(D, generator=g), torch.rand(D, generator=g) + 0.5)
    else:
        a = torch.randn(D, D, generator=g, dtype=torch.float64)
        flow.set_standardization(torch.randn(D, generator=g), a @ a.T / D + 0.5 * torch.eye(D))
    x, c = data(64, seed=2)
    flow.initialize(x, c if conditional else None)
    return flow


def data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(n, D, generator=g, dtype=torch.float64)
    return x, torch.randn(n, 2, generator=g, dtype=torch.float64)


def autograd_log_prob(flow: CPFlow, x: Tensor, c: Tensor | None) -> Tensor:
    """log N(z) + log|det dz/dx| with the Jacobian of transform taken by autograd, row by row
    (independent of every log-det code path of the chain)."""
    out = []
    for i in range(x.shape[0]):
        ci = None if c is None else c[i : i + 1]

        def one(row: Tensor, ci: Tensor | None = ci) -> Tensor:
            return flow.transform(row.unsqueeze(0), ci).squeeze(0)

        z = one(x[i])
        jac = torch.autograd.functional.jacobian(one, x[i])
        logdet = torch.linalg.slogdet(jac)[1]
        out.append(-0.5 * (z * z).sum() - 0.5 * D * math.log(2 * math.pi) + logdet)
    return torch.stack(out)


@pytest.fixture(params=[False, True], ids=["whitened", "conditional"])
def mixed(request) -> tuple[CPFlow, Tensor, Tensor | None]:
    flow = mixed_flow(request.param)
    x, c = data(6, seed=3)
    return flow, x, c if request.param else None


def test_the_mixed_chain_holds_every_layer_kind() -> None:
    kinds: set[type] = set()
    potentials: set[str] = set()
    for conditional in (False, True):
        flow = mixed_flow(conditional)
        kinds |= {type(layer) for layer in flow.layers}
        potentials |= {type(b.icnn).__name__ for b in flow.blocks() if isinstance(b, CPFlowBlock)}
        assert len(flow.blocks()) == (3 if conditional else 4)  # one is the coupling block
        assert sum(b.radial is not None for b in flow.blocks() if isinstance(b, CPFlowBlock)) == (
            0 if conditional else 1
        )
    assert kinds == {ActNorm, ChannelActNorm, CPFlowBlock, AffineCouplingBlock, Squeeze, Unsqueeze}
    assert potentials == {"ConvICNN", "ICNN", "PICNN"}


def test_exact_log_prob_of_a_mixed_chain_equals_the_autograd_jacobian(mixed) -> None:
    flow, x, c = mixed
    expected = autograd_log_prob(flow, x, c)
    torch.testing.assert_close(flow.log_prob(x, c), expected, atol=TOL, rtol=0)
    z, logdet = flow.transform_and_logdet(x, c)
    torch.testing.assert_close(flow._base_log_prob(z) + logdet, expected, atol=TOL, rtol=0)


def test_slq_of_a_mixed_chain_is_within_its_standard_error_of_the_exact(mixed) -> None:
    flow, x, c = mixed
    exact = flow.log_prob(x, c)
    g = torch.Generator().manual_seed(4)
    est, stderr = flow.log_prob(
        x, c, method="slq", probes=2000, steps=D, generator=g, return_stderr=True
    )
    assert bool((stderr > 0).all())
    assert bool(((est - exact).abs() <= 5 * stderr).all())


def test_newton_jacobian_of_a_mixed_chain_equals_autograd(mixed) -> None:
    """forward_and_jacobian chained over the layers after the standardisation (what the
    inverse's Newton polish uses) is the Jacobian of that map."""
    flow, x, c = mixed
    cc = flow._as_context(c, x.shape[0])
    h = flow.standardization(x)
    y, J = h, torch.eye(D, dtype=h.dtype).expand(h.shape[0], D, D)
    for layer in flow._layers():
        y, J = layer.forward_and_jacobian(y, layer.prepare(cc), J)
    for i in range(h.shape[0]):
        ci = None if cc is None else cc[i : i + 1]

        def inner(row: Tensor, ci: Tensor | None = ci) -> Tensor:
            out = row.unsqueeze(0)
            for layer in flow._layers():
                out = layer(out, layer.prepare(ci))
            return out.squeeze(0)

        torch.testing.assert_close(y[i], inner(h[i]), atol=TOL, rtol=0)
        jac = torch.autograd.functional.jacobian(inner, h[i])
        torch.testing.assert_close(J[i], jac, atol=1e-9, rtol=0)


def test_inverse_and_training_loss_of_a_mixed_chain(mixed) -> None:
    flow, x, c = mixed
    z = flow.transform(x, c)
    xr, info = flow.inverse(z, c)
    assert info.all_converged
    torch.testing.assert_close(xr, x, atol=1e-7, rtol=0)
    loss, stats = flow.training_loss(x, c, generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(loss)
    cp_blocks = [b for b in flow.blocks() if isinstance(b, CPFlowBlock)]
    assert len(stats.per_block_cg_iterations) == len(cp_blocks)  # coupling: exact, no CG
    loss.backward()
    coupling = next(b for b in flow.blocks() if isinstance(b, AffineCouplingBlock))
    assert all(p.grad is not None for p in coupling.parameters())


# -- a layer kind that leaves out a method is refused ------------------------------------------


class _Doubling(FlowLayer):
    """Everything but the SLQ estimator: y = 2x."""

    is_block = False

    def prepare(self, context: Tensor | None) -> None:
        return None

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        return 2 * x

    def forward_and_logdet(self, x: Tensor, w: Prepared | None = None) -> tuple[Tensor, Tensor]:
        return 2 * x, x.new_zeros(x.shape[0])

    def constant_logdet(self) -> Tensor:
        return torch.tensor(math.log(2.0))

    def forward_and_surrogate(self, x, w, probes):
        return self.forward_and_logdet(x)

    def forward_and_jacobian(self, x, w, J):
        return 2 * x, 2 * J

    def invert(self, y, w, solve: InverseSolve, x0=None):
        return y / 2, 0

    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        pass


def test_a_layer_without_an_estimator_cannot_be_built() -> None:
    with pytest.raises(TypeError, match="forward_and_slq"):
        _Doubling()

    class Complete(_Doubling):
        def forward_and_slq(self, x: Tensor, w, probes: SLQProbes):
            return 2 * x, x.new_zeros(probes.probes, x.shape[0])

    assert torch.equal(Complete()(torch.ones(1, 2)), torch.full((1, 2), 2.0))


def test_an_affine_layer_without_its_log_det_cannot_be_built() -> None:
    class NoLogdet(AffineLayer):
        def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
            return x

        def inverse(self, y: Tensor) -> Tensor:
            return y

        def linear(self, v: Tensor) -> Tensor:
            return v

    with pytest.raises(TypeError, match="logdet"):
        NoLogdet()


def test_a_layer_must_say_whether_it_is_a_block() -> None:
    with pytest.raises(TypeError, match="is_block"):

        class Unsaid(FlowLayer):  # every method, but no is_block
            prepare = _Doubling.prepare
            forward = _Doubling.forward
            forward_and_logdet = _Doubling.forward_and_logdet
            constant_logdet = _Doubling.constant_logdet
            forward_and_slq = _Doubling.forward_and_surrogate
            forward_and_surrogate = _Doubling.forward_and_surrogate
            forward_and_jacobian = _Doubling.forward_and_jacobian
            invert = _Doubling.invert
            initialize = _Doubling.initialize


def test_every_chain_layer_of_a_built_flow_implements_the_interface() -> None:
    configs = [
        FlowConfig(dim=3, blocks=2, hidden=4, depth=1),
        FlowConfig.image((1, 4, 4), [1, 1], hidden=2, depth=1),
        FlowConfig.image((1, 4, 4), [1, 1], potential={"kind": "coupling", "hidden": 2}),
        FlowConfig.conditional(2, 1, blocks=1, hidden=4, depth=1),
    ]
    for cfg in configs:
        flow = CPFlow(cfg)
        assert isinstance(flow.standardization, Standardization | AffineLayer)
        assert all(isinstance(layer, FlowLayer) for layer in flow.layers)
