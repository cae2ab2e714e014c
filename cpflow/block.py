r"""The CP-Flow block: f = grad F with F(x) = softplus(w0)|x|^2/2 + softplus(w1) G(x) [+ R(x)],
G an ICNN and R an optional radial convex term (:mod:`cpflow.radial`).

The Jacobian of f is the Hessian H = softplus(w0) I + softplus(w1) H_G [+ H_R], symmetric and
>= softplus(w0) I, so log det H is finite and f is invertible by convex minimisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .icnn import ICNN, ICNNLinearization
from .layers import softplus_inv
from .logdet import CGResult, cholesky_logdet, conjugate_gradient
from .radial import RadialHVP, RadialTerm

__all__ = ["BlockHVP", "CPFlowBlock", "ConvexPotentialBlock", "cholesky_logdet"]


def gain_parameter(init_gain: float | None) -> nn.Parameter:
    """w1 with softplus(w1) = init_gain (FlowConfig.init_gain); None: the paper's w1 = 0."""
    return nn.Parameter(torch.tensor(0.0 if init_gain is None else softplus_inv(init_gain)))


class ConvexPotentialBlock(nn.Module):
    """F(x) = softplus(w0)|x|^2/2 + softplus(w1) G(x) over flat rows, for any convex network G
    that offers ``__call__``, ``grad`` and ``value_and_grad``; the map is f = grad F.

    Shared by the dense (:class:`CPFlowBlock`) and convolutional blocks.
    """

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
        self.w1 = gain_parameter(init_gain)
        self.radial = radial

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(alpha, beta) = (softplus(w0), softplus(w1))."""
        return F.softplus(self.w0), F.softplus(self.w1)

    def potential(self, x: Tensor) -> Tensor:
        """F(x), shape (n,)."""
        a, b = self.coefficients()
        value = 0.5 * a * (x * x).sum(-1) + b * self.icnn(x)
        return value if self.radial is None else value + self.radial(x)

    def forward(self, x: Tensor) -> Tensor:
        """f(x) = grad F(x), computed without autograd."""
        a, b = self.coefficients()
        y = a * x + b * self.icnn.grad(x)
        return y if self.radial is None else y + self.radial.grad(x)

    def value_and_grad(self, x: Tensor, icnn_weights=None) -> tuple[Tensor, Tensor]:
        """(F(x), f(x)) from one pass (what the inverse solver needs); ``icnn_weights`` is
        ``self.icnn.weights()``, computed once by callers that evaluate many times."""
        a, b = self.coefficients()
        g_val, g_grad = self.icnn.value_and_grad(x, icnn_weights)
        value, y = 0.5 * a * (x * x).sum(-1) + b * g_val, a * x + b * g_grad
        if self.radial is not None:
            r_val, r_grad = self.radial.value_and_grad(x)
            value, y = value + r_val, y + r_grad
        return value, y


class CPFlowBlock(ConvexPotentialBlock):
    """One convex-potential block with explicit map, Hessian and Hessian-vector products."""

    icnn: ICNN

    def forward_and_hessian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f(x) (n, d), H(x) (n, d, d)), the Hessian built analytically in batch."""
        a, b = self.coefficients()
        g, H = self.icnn.grad_and_hessian(x, scale=b, shift=a)
        return self._add_radial(x, a * x + b * g, H)

    def _add_radial(self, x: Tensor, y: Tensor, H: Tensor) -> tuple[Tensor, Tensor]:
        """(y, H) plus the radial term's gradient and Hessian, if the block has one."""
        if self.radial is None:
            return y, H
        r_grad, r_hess = self.radial.grad_and_hessian(x)
        return y + r_grad, H + r_hess

    def forward_and_logdet(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f(x), log det H(x)) by a batched Cholesky factorisation, which reads the upper
        triangle only. Without autograd on CPU only that triangle is built; autograd needs the
        full H (the Cholesky backward treats its input as symmetric), and on GPUs which
        triangle the vendor solvers read is not checked here."""
        a, b = self.coefficients()
        upper_only = x.device.type == "cpu" and not torch.is_grad_enabled()
        g, H = self.icnn.grad_and_hessian(x, b, a, upper_only=upper_only)
        y, H = self._add_radial(x, a * x + b * g, H)
        return y, cholesky_logdet(H)

    def linearize(self, x: Tensor) -> tuple[Tensor, BlockHVP]:
        """(f(x), v -> H(x) v); the operator broadcasts over leading probe dimensions."""
        a, b = self.coefficients()
        g, lin = self.icnn.linearize(x)
        y, radial_hvp = a * x + b * g, None
        if self.radial is not None:
            r_grad, radial_hvp = self.radial.linearize(x)
            y = y + r_grad
        return y, BlockHVP(a, b, lin, radial_hvp)

    def logdet_surrogate(
        self,
        x: Tensor,
        v: Tensor,
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
        """
        y, op = self.linearize(x)
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
        lin: ICNNLinearization,
        radial: RadialHVP | None = None,
    ) -> None:
        self.alpha, self.beta, self.lin, self.radial = alpha, beta, lin, radial

    def __call__(self, v: Tensor) -> Tensor:
        hv = self.alpha * v + self.beta * self.lin.hvp(v)
        return hv if self.radial is None else hv + self.radial(v)

    def restrict(self, idx: Tensor) -> BlockHVP:
        radial = None if self.radial is None else self.radial.restrict(idx)
        return BlockHVP(self.alpha, self.beta, self.lin.restrict(idx), radial)
