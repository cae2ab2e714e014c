r"""A radial convex term for CP-Flow potentials: R(x) = sum_j beta_j s(a_j (r(x) - c_j)).

r(x) = sqrt(|x|^2 + eps^2) is a smoothed norm (convex), s a non-decreasing convex softplus-type
activation, a_j, beta_j >= 0 (softplus-parametrised) and c_j free radii, so R is convex for any
parameters. As a function of r, R'(r) = sum_j beta_j a_j s'(u_j) is a sum of smooth steps at
the radii c_j and R''(r) a sum of bumps there: the gradient map of R moves points radially,
stretching thin shells at the c_j and squeezing the space between them, which is the optimal
transport map between radially symmetric densities (e.g. concentric rings and a Gaussian).
Ridge units s(w.x + b) of an ICNN can only approximate that with many directions.

With p = R'(r) and q = R''(r):

    grad R = p x / r,    Hess R = (p / r) I + (q / r^2 - p / r^3) x x^T,

positive semi-definite (along x the eigenvalue is q |x|^2 / r^2 + p eps^2 / r^3 >= 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .activations import Activation
from .layers import softplus_inv

__all__ = ["RadialTerm"]


class RadialTerm(nn.Module):
    """``units`` radial softplus steps around the origin of the block's input."""

    def __init__(
        self,
        dim: int,
        units: int,
        activation: str = "gaussian",
        *,
        max_radius: float | None = None,
        eps: float = 0.1,
        init_curvature: float = 0.1,
    ) -> None:
        """Centres start evenly spread over (0, max_radius] (default sqrt(dim) + 1.6: the norm
        of standardised d-dimensional data concentrates near sqrt(d) with a spread of ~0.7;
        about 3 in 2-D), each step as wide as the spacing, and the weights such that the radial
        curvature R'' starts near ``init_curvature``: the term begins as a small perturbation
        of the block's identity part."""
        super().__init__()
        if units < 1:
            raise ValueError("a radial term needs units >= 1")
        self.dim, self.units, self.eps = dim, units, float(eps)
        self.act = Activation(activation)
        if max_radius is None:
            max_radius = math.sqrt(dim) + 1.6
        spacing = max_radius / units
        slope = 1.0 / spacing
        self.centre = nn.Parameter(torch.linspace(spacing, max_radius, units))
        self.raw_slope = nn.Parameter(torch.full((units,), softplus_inv(slope)))
        weight = init_curvature / (slope * slope)
        self.raw_weight = nn.Parameter(torch.full((units,), softplus_inv(weight)))

    def _radius(self, x: Tensor) -> Tensor:
        return torch.sqrt((x * x).sum(-1) + self.eps * self.eps)

    def _pass(self, x: Tensor, order: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        """r (n,), R (n,) and the derivatives [R'(r), R''(r)] (n,) up to ``order``."""
        r = self._radius(x)
        a, beta = F.softplus(self.raw_slope), F.softplus(self.raw_weight)
        u = (r[..., None] - self.centre) * a
        s, s1, s2 = self.act.all(u, order)
        derivatives = []
        if order >= 1 and s1 is not None:
            derivatives.append(s1 @ (beta * a))
        if order >= 2 and s2 is not None:
            derivatives.append(s2 @ (beta * a * a))
        return r, s @ beta, derivatives

    def forward(self, x: Tensor) -> Tensor:
        """R(x), shape (n,)."""
        return self._pass(x, 0)[1]

    def value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R(x) (n,), grad R(x) (n, d))."""
        r, value, (p,) = self._pass(x, 1)
        return value, (p / r)[..., None] * x

    def grad(self, x: Tensor) -> Tensor:
        """grad R(x), shape (n, d)."""
        return self.value_and_grad(x)[1]

    def grad_and_hessian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(grad R (n, d), Hess R (n, d, d))."""
        grad, iso, rank1 = self._second_order(x)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        H = iso[:, None, None] * eye + rank1[:, None, None] * (x[:, :, None] * x[:, None, :])
        return grad, H

    def linearize(self, x: Tensor) -> tuple[Tensor, RadialHVP]:
        """(grad R (n, d), v -> Hess R v at x)."""
        grad, iso, rank1 = self._second_order(x)
        return grad, RadialHVP(x, iso, rank1)

    def _second_order(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(grad R, iso, rank1) with Hess R = iso I + rank1 x x^T."""
        r, _, (p, q) = self._pass(x, 2)
        iso = p / r
        return iso[..., None] * x, iso, (q - iso) / (r * r)


class RadialHVP:
    """v -> (iso I + rank1 x x^T) v at a fixed batch; broadcasts over leading probe dims."""

    def __init__(self, x: Tensor, iso: Tensor, rank1: Tensor) -> None:
        self.x, self.iso, self.rank1 = x, iso, rank1

    def __call__(self, v: Tensor) -> Tensor:
        xv = (v * self.x).sum(-1, keepdim=True)
        return self.iso[..., None] * v + (self.rank1[..., None] * xv) * self.x

    def restrict(self, idx: Tensor) -> RadialHVP:
        return RadialHVP(self.x[idx], self.iso[idx], self.rank1[idx])
