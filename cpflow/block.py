r"""The CP-Flow block: f = grad_x F with F(x; c) = softplus(w0)|x|^2/2 + softplus(w1) G(x; c)
[+ R(x)], G a network convex in x (dense ICNN, convolutional ICNN or PICNN) and R an optional
radial convex term (:mod:`cpflow.radial`).

The Jacobian of f is the Hessian H = softplus(w0) I + softplus(w1) H_G [+ H_R], symmetric and
>= softplus(w0) I, so log det H is finite and f is invertible by convex minimisation.

Every potential network G offers the same interface (:class:`ConvexPotential`):
``prepare(context)`` gives the effective weights for a batch, and ``G(x, w)``, ``grad``,
``value_and_grad`` and ``linearize`` take them (``grad_and_hessian`` too where G has an
analytic Hessian, :class:`AnalyticHessian`). Methods of the block take ``w`` too: the prepared
weights, or (for a PICNN) the context itself.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .inverse import SolveResult, minimize_batched
from .layer import FlowLayer, InverseSolve, Prepared, SLQProbes, SurrogateProbes
from .layers import softplus_inv
from .logdet import (
    CGResult,
    cholesky_logdet,
    conjugate_gradient,
    hessian_from_hvp,
    rademacher,
    slq_logdet,
)
from .radial import RadialHVP, RadialTerm

__all__ = [
    "AnalyticHessian",
    "BlockHVP",
    "CPFlowBlock",
    "ConvexPotential",
    "PotentialHVP",
    "cholesky_logdet",
    "invert_block",
]


class PotentialHVP(Protocol):
    """A potential's Hessian at a fixed batch of points, applied to vectors."""

    def hvp(self, v: Tensor) -> Tensor:
        """H_G v; v (..., n, d) may carry leading probe dimensions."""
        ...

    def restrict(self, idx: Tensor) -> PotentialHVP:
        """The same operator for the samples ``idx`` only."""
        ...


class ConvexPotential(Protocol):
    """A network G(x; c) convex in x, as a block uses it. ``w`` and ``context`` are typed
    loosely because each network has its own prepared-weights type (what ``prepare``
    returns is what its other methods take)."""

    dim: int

    def __call__(self, x: Tensor, w: Any, /) -> Tensor: ...

    def prepare(self, context: Any, /) -> Prepared: ...

    def grad(self, x: Tensor, w: Any, /) -> Tensor: ...

    def value_and_grad(self, x: Tensor, w: Any, /) -> tuple[Tensor, Tensor]: ...

    def linearize(self, x: Tensor, w: Any, /) -> tuple[Tensor, PotentialHVP]: ...

    def initialize(self, x: Tensor, context: Any, /) -> None: ...


@runtime_checkable
class AnalyticHessian(Protocol):
    """A potential that builds its Hessian in batch (dense ICNN, PICNN); the others
    (convolutional ICNN) are assembled from Hessian-vector products."""

    def grad_and_hessian(
        self, x: Tensor, *, scale: Tensor, shift: Tensor, upper_only: bool = False, w: Any = None
    ) -> tuple[Tensor, Tensor]: ...


class CPFlowBlock(FlowLayer):
    """One convex-potential block with explicit map, Hessian and Hessian-vector products."""

    is_block = True
    icnn: ConvexPotential

    def __init__(
        self,
        icnn: ConvexPotential,
        init_gain: float | None = None,
        radial: RadialTerm | None = None,
    ) -> None:
        """``init_gain`` is softplus(w1) at initialisation, the weight of the ICNN term; None
        keeps the paper's w1 = 0 (gain log 2). A small gain starts the block near the
        identity map x -> x. ``radial`` adds a radial convex term R to the potential."""
        super().__init__()
        self.icnn = icnn
        self.dim = icnn.dim
        self.w0 = nn.Parameter(torch.tensor(softplus_inv(1.0)))
        self.w1 = nn.Parameter(torch.tensor(0.0 if init_gain is None else softplus_inv(init_gain)))
        self.radial = radial

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(alpha, beta) = (softplus(w0), softplus(w1))."""
        return F.softplus(self.w0), F.softplus(self.w1)

    def prepare(self, context: Tensor | None = None) -> Prepared:
        """The potential's effective weights for a batch of contexts (None: no context)."""
        return self.icnn.prepare(context)

    def potential(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        """F(x), shape (n,)."""
        a, b = self.coefficients()
        value = 0.5 * a * (x * x).sum(-1) + b * self.icnn(x, w)
        return value if self.radial is None else value + self.radial(x)

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        """f(x) = grad F(x), computed without autograd."""
        a, b = self.coefficients()
        y = a * x + b * self.icnn.grad(x, w)
        return y if self.radial is None else y + self.radial.grad(x)

    def value_and_grad(self, x: Tensor, w: Prepared | None = None) -> tuple[Tensor, Tensor]:
        """(F(x), f(x)) from one pass (what the inverse solver needs); ``w`` from
        :meth:`prepare`, computed once by callers that evaluate many times."""
        a, b = self.coefficients()
        g_val, g_grad = self.icnn.value_and_grad(x, w)
        value, y = 0.5 * a * (x * x).sum(-1) + b * g_val, a * x + b * g_grad
        if self.radial is not None:
            r_val, r_grad = self.radial.value_and_grad(x)
            value, y = value + r_val, y + r_grad
        return value, y

    def forward_and_hessian(
        self, x: Tensor, w: Prepared | None = None, *, upper_only: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(f(x) (n, d), H(x) (n, d, d)), the Hessian built analytically in batch (with
        ``upper_only`` a dense ICNN fills only the upper triangle), or, for a network without
        an analytic Hessian (the convolutional ICNN), from d Hessian-vector products."""
        if not isinstance(self.icnn, AnalyticHessian):
            y, op = self.linearize(x, w)
            return y, hessian_from_hvp(op, x.shape[0], self.dim, x.dtype, x.device)
        a, b = self.coefficients()
        g, H = self.icnn.grad_and_hessian(x, scale=b, shift=a, upper_only=upper_only, w=w)
        y = a * x + b * g
        if self.radial is None:
            return y, H
        r_grad, r_hess = self.radial.grad_and_hessian(x)
        return y + r_grad, H + r_hess

    def forward_and_logdet(self, x: Tensor, w: Prepared | None = None) -> tuple[Tensor, Tensor]:
        """(f(x), log det H(x)) by a batched Cholesky factorisation, which reads the upper
        triangle only. Without autograd on CPU only that triangle is built; autograd needs the
        full H (the Cholesky backward treats its input as symmetric), and on GPUs which
        triangle the vendor solvers read is not checked here."""
        upper_only = x.device.type == "cpu" and not torch.is_grad_enabled()
        y, H = self.forward_and_hessian(x, w, upper_only=upper_only)
        return y, cholesky_logdet(H)

    def linearize(self, x: Tensor, w: Prepared | None = None) -> tuple[Tensor, BlockHVP]:
        """(f(x), v -> H(x) v); the operator broadcasts over leading probe dimensions."""
        a, b = self.coefficients()
        g, lin = self.icnn.linearize(x, w)
        y, radial_hvp = a * x + b * g, None
        if self.radial is not None:
            r_grad, radial_hvp = self.radial.linearize(x)
            y = y + r_grad
        return y, BlockHVP(a, b, lin, radial_hvp)

    def logdet_surrogate(
        self,
        x: Tensor,
        v: Tensor,
        w: Prepared | None = None,
        *,
        atol: float,
        rtol: float = 0.0,
        max_iter: int | None = None,
    ) -> tuple[Tensor, Tensor, CGResult, Tensor]:
        """(f(x), s, cg, rayleigh) with s = stop_grad(H^-1 v)^T H v per sample (Algorithm 2)
        and rayleigh = v^T H v / v^T v (detached, a cheap look at the spread of H).

        d s / d theta = v^T H^-1 (dH/dtheta) v, an unbiased estimate of d log det H / d theta
        for Rademacher v (exact CG). The VALUE of s is not log det H. CG runs under no_grad
        (nothing is recorded, so memory does not grow with its iterations) on the same
        linearisation, and its first product H v is the one the surrogate needs anyway.
        Gradients flow into a context through ``w`` as well.
        """
        y, op = self.linearize(x, w)
        hv = op(v)
        with torch.no_grad():
            cg = conjugate_gradient(op, v, atol=atol, rtol=rtol, max_iter=max_iter, hv0=hv)
            rayleigh = (v * hv).sum(-1) / (v * v).sum(-1)
        return y, (cg.solution * hv).sum(-1), cg, rayleigh

    # -- the chain's layer interface (cpflow.layer.FlowLayer) ---------------------------------
    def constant_logdet(self) -> Tensor:
        """A block's log-det depends on x only: its constant part is 0."""
        return self.w0.new_zeros(())

    def forward_and_slq(
        self, x: Tensor, w: Prepared | None, probes: SLQProbes
    ) -> tuple[Tensor, Tensor]:
        """(f(x), SLQ estimates (p, n) of log det H(x) from Hessian-vector products)."""
        y, hvp = self.linearize(x, w)
        v = rademacher(
            (probes.probes, *x.shape), dtype=x.dtype, device=x.device, generator=probes.generator
        )
        return y, slq_logdet(hvp, v, probes.steps)

    def forward_and_surrogate(
        self, x: Tensor, w: Prepared | None, probes: SurrogateProbes
    ) -> tuple[Tensor, Tensor]:
        """(f(x), the CG surrogate of log det H(x)) with one probe per row (Algorithm 2)."""
        y, surrogate, cg, rayleigh = self.logdet_surrogate(
            x, probes.draw(x), w, atol=probes.atol, rtol=probes.rtol, max_iter=probes.max_iter
        )
        probes.record(cg, rayleigh)
        return y, surrogate

    def forward_and_jacobian(
        self, x: Tensor, w: Prepared | None, J: Tensor
    ) -> tuple[Tensor, Tensor]:
        y, H = self.forward_and_hessian(x, w)
        return y, H @ J

    def invert(
        self, y: Tensor, w: Prepared | None, solve: InverseSolve, x0: Tensor | None = None
    ) -> tuple[Tensor, int]:
        """Algorithm 1 per sample (:func:`invert_block`)."""
        res = invert_block(
            self, y, w, tol=solve.tol, max_iter=solve.max_iter, solver=solve.solver,
            history=solve.history, x0=x0,
        )  # fmt: skip
        return res.x, int(res.iterations.max()) if res.iterations.numel() else 0

    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent initialisation of the potential's hidden ActNorms."""
        self.icnn.initialize(x, context)


def invert_block(
    block: CPFlowBlock,
    y: Tensor,
    w: Prepared | None = None,
    *,
    tol: float,
    max_iter: int,
    solver: str = "lbfgs",
    history: int = 10,
    x0: Tensor | None = None,
) -> SolveResult:
    """Solve f(x) = y for one block: argmin_x F(x) - y^T x (Algorithm 1), per sample, from
    ``x0`` (default y / alpha); ``w`` is the block's prepared weights (:meth:`prepare`)."""

    weights = block.prepare(None) if w is None else w  # the parameters are fixed in the solve

    def fg(x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        val, grad = block.value_and_grad(x, weights.select(idx))
        yi = y[idx]
        return val - (yi * x).sum(-1), grad - yi

    def hess(x: Tensor, idx: Tensor) -> Tensor:
        return block.forward_and_hessian(x, weights.select(idx))[1]

    if x0 is None:
        # f(x) = alpha x + (bounded ICNN gradient), so y / alpha is close for far-out points
        x0 = y / block.coefficients()[0]
    return minimize_batched(
        fg, x0, tol=tol, max_iter=max_iter, history=history, method=solver, hessian=hess
    )


class BlockHVP:
    """v -> H v for H = alpha I + beta H_G [+ H_R] at a fixed batch of points."""

    def __init__(
        self,
        alpha: Tensor,
        beta: Tensor,
        lin: PotentialHVP,
        radial: RadialHVP | None = None,
    ) -> None:
        self.alpha, self.beta, self.lin, self.radial = alpha, beta, lin, radial

    def __call__(self, v: Tensor) -> Tensor:
        hv = self.alpha * v + self.beta * self.lin.hvp(v)
        return hv if self.radial is None else hv + self.radial(v)

    def restrict(self, idx: Tensor) -> BlockHVP:
        radial = None if self.radial is None else self.radial.restrict(idx)
        return BlockHVP(self.alpha, self.beta, self.lin.restrict(idx), radial)
