r"""The CP-Flow block: f = grad F with F(x) = softplus(w0)|x|^2/2 + softplus(w1) G(x), G an ICNN.

The Jacobian of f is the Hessian H = softplus(w0) I + softplus(w1) H_G, symmetric and
>= softplus(w0) I, so log det H is finite and f is invertible by convex minimisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .icnn import ICNN
from .layers import softplus_inv

__all__ = ["CPFlowBlock"]


class CPFlowBlock(nn.Module):
    """One convex-potential block with explicit map, Hessian and Hessian-vector products."""

    def __init__(self, icnn: ICNN) -> None:
        super().__init__()
        self.icnn = icnn
        self.dim = icnn.dim
        self.w0 = nn.Parameter(torch.tensor(softplus_inv(1.0)))
        self.w1 = nn.Parameter(torch.tensor(0.0))

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(alpha, beta) = (softplus(w0), softplus(w1))."""
        return F.softplus(self.w0), F.softplus(self.w1)

    def potential(self, x: Tensor) -> Tensor:
        """F(x), shape (n,)."""
        a, b = self.coefficients()
        return 0.5 * a * (x * x).sum(-1) + b * self.icnn(x)

    def forward(self, x: Tensor) -> Tensor:
        """f(x) = grad F(x), computed without autograd."""
        a, b = self.coefficients()
        return a * x + b * self.icnn.grad(x)

    def value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(F(x), f(x)) from one pass (what the inverse solver needs)."""
        a, b = self.coefficients()
        g_val, g_grad = self.icnn.value_and_grad(x)
        return 0.5 * a * (x * x).sum(-1) + b * g_val, a * x + b * g_grad

    def forward_and_hessian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f(x) (n, d), H(x) (n, d, d)), the Hessian built analytically in batch."""
        a, b = self.coefficients()
        g, Hg = self.icnn.grad_and_hessian(x)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return a * x + b * g, b * Hg + a * eye

    def forward_and_logdet(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f(x), log det H(x)) by a batched Cholesky factorisation."""
        y, H = self.forward_and_hessian(x)
        return y, cholesky_logdet(H)

    def linearize(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(f(x), v -> H(x) v); the closure broadcasts over leading probe dimensions."""
        a, b = self.coefficients()
        g, lin = self.icnn.linearize(x)

        def hvp(v: Tensor) -> Tensor:
            return a * v + b * lin.hvp(v)

        return a * x + b * g, hvp


def cholesky_logdet(H: Tensor) -> Tensor:
    """log det of a batch of SPD matrices; falls back to eigenvalues if Cholesky fails."""
    L, info = torch.linalg.cholesky_ex(H)
    out = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    bad = info != 0
    if bool(bad.any()):
        ev = torch.linalg.eigvalsh(H[bad])
        out = out.clone()
        out[bad] = torch.log(ev.clamp_min(torch.finfo(H.dtype).tiny)).sum(-1)
    return out
