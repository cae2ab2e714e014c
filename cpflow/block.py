r"""The CP-Flow block: f = grad_x F with F(x; c) = softplus(w0)|x|^2/2 + softplus(w1) G(x; c)
[+ R(x)], G a network convex in x (dense ICNN, convolutional ICNN or PICNN) and R an optional
radial convex term (:mod:`cpflow.radial`).

The Jacobian of f is the Hessian H = softplus(w0) I + softplus(w1) H_G [+ H_R], symmetric and
>= softplus(w0) I, so log det H is finite and f is invertible by convex minimisation.

Every potential network G offers the same interface: ``prepare(context)`` gives the effective
weights for a batch (None for a network without context), and ``G(x, w)``, ``grad``,
``value_and_grad``, ``linearize`` and ``grad_and_hessian`` take them. Methods of the block take
``w`` too: the prepared weights, or (for a PICNN) the context itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import softplus_inv
from .logdet import CGResult, cholesky_logdet, conjugate_gradient, hessian_from_hvp
from .radial import RadialHVP, RadialTerm

__all__ = ["BlockHVP", "CPFlowBlock", "cholesky_logdet"]


class CPFlowBlock(nn.Module):
    """One convex-potential block with explicit map, Hessian and Hessian-vector products."""

    def __init__(
        self, icnn: nn.Module, init_gain: float | None = None, radial: RadialTerm | None = None
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

    def prepare(self, context: Tensor | None = None) -> Any:
        """The potential's effective weights for a batch of contexts (None: no context)."""
        return self.icnn.prepare(context)

    def potential(self, x: Tensor, w: Any = None) -> Tensor:
        """F(x), shape (n,)."""
        a, b = self.coefficients()
        value = 0.5 * a * (x * x).sum(-1) + b * self.icnn(x, w)
        return value if self.radial is None else value + self.radial(x)

    def forward(self, x: Tensor, w: Any = None) -> Tensor:
        """f(x) = grad F(x), computed without autograd."""
        a, b = self.coefficients()
        y = a * x + b * self.icnn.grad(x, w)
        return y if self.radial is None else y + self.radial.grad(x)

    def value_and_grad(self, x: Tensor, w: Any = None) -> tuple[Tensor, Tensor]:
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
        self, x: Tensor, w: Any = None, *, upper_only: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(f(x) (n, d), H(x) (n, d, d)), the Hessian built analytically in batch (with
        ``upper_only`` a dense ICNN fills only the upper triangle), or, for a network without
        an analytic Hessian (the convolutional ICNN), from d Hessian-vector products."""
        if not hasattr(self.icnn, "grad_and_hessian"):
            y, op = self.linearize(x, w)
            return y, hessian_from_hvp(op, x.shape[0], self.dim, x.dtype, x.device)
        a, b = self.coefficients()
        g, H = self.icnn.grad_and_hessian(x, scale=b, shift=a, upper_only=upper_only, w=w)
        y = a * x + b * g
        if self.radial is None:
            return y, H
        r_grad, r_hess = self.radial.grad_and_hessian(x)
        return y + r_grad, H + r_hess

    def forward_and_logdet(self, x: Tensor, w: Any = None) -> tuple[Tensor, Tensor]:
        """(f(x), log det H(x)) by a batched Cholesky factorisation, which reads the upper
        triangle only. Without autograd on CPU only that triangle is built; autograd needs the
        full H (the Cholesky backward treats its input as symmetric), and on GPUs which
        triangle the vendor solvers read is not checked here."""
        upper_only = x.device.type == "cpu" and not torch.is_grad_enabled()
        y, H = self.forward_and_hessian(x, w, upper_only=upper_only)
        return y, cholesky_logdet(H)

    def linearize(self, x: Tensor, w: Any = None) -> tuple[Tensor, BlockHVP]:
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
        w: Any = None,
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


class BlockHVP:
    """v -> H v for H = alpha I + beta H_G [+ H_R] at a fixed batch of points."""

    def __init__(
        self,
        alpha: Tensor,
        beta: Tensor,
        lin: Any,
        radial: RadialHVP | None = None,
    ) -> None:
        self.alpha, self.beta, self.lin, self.radial = alpha, beta, lin, radial

    def __call__(self, v: Tensor) -> Tensor:
        hv = self.alpha * v + self.beta * self.lin.hvp(v)
        return hv if self.radial is None else hv + self.radial(v)

    def restrict(self, idx: Tensor) -> BlockHVP:
        radial = None if self.radial is None else self.radial.restrict(idx)
        return BlockHVP(self.alpha, self.beta, self.lin.restrict(idx), radial)
