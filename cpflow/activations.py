r"""Softplus-type activations: convex, non-decreasing, >= ReLU and tending to ReLU at +-inf.

Each activation gives its value and first two derivatives in closed form, which the ICNN uses
to build gradients and Hessians analytically (no autograd, ONNX-friendly ops only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["ACTIVATIONS", "Activation", "make_activation"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


def _logistic(u: Tensor, order: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
    # torch's softplus switches to the identity above ``threshold`` (default 20: a 2e-9 jump
    # that breaks convexity checks in float64); at 40 the jump, e^-40 ~ 4e-18, is below the
    # float64 spacing there, and one fused kernel is ~2x faster than relu(u) + log1p(e^-|u|)
    value = F.softplus(u, threshold=40.0)
    if order == 0:
        return value, None, None
    s = torch.sigmoid(u)
    return value, s, (s * (1.0 - s) if order > 1 else None)


def _gaussian(u: Tensor, order: int) -> tuple[Tensor, Tensor, Tensor]:
    # s(u) = E[relu(u + e)], e ~ N(0, 1) = u Phi(u) + phi(u); s' = Phi, s'' = phi.
    # written as relu(u) + s(-|u|) (s(u) - s(-u) = u) so the tails are not a cancellation
    pdf = torch.exp(-0.5 * u * u) * _INV_SQRT_2PI
    cdf = 0.5 * (1.0 + torch.erf(u * _INV_SQRT_2))
    a = torch.abs(u)
    tail = pdf - a * 0.5 * (1.0 - torch.erf(a * _INV_SQRT_2))
    return torch.clamp_min(u, 0.0) + tail, cdf, pdf


def _laplace(u: Tensor, order: int) -> tuple[Tensor, Tensor, Tensor]:
    # s(u) = E[relu(u + e)], e ~ Laplace(0, 1): s' is the Laplace CDF, s'' its density.
    e = 0.5 * torch.exp(-torch.abs(u))
    pos = u >= 0
    value = torch.where(pos, u + e, e)
    d1 = torch.where(pos, 1.0 - e, e)
    return value, d1, e


_FUNCS = {"logistic": _logistic, "gaussian": _gaussian, "laplace": _laplace}
_AT_ZERO = {"logistic": math.log(2.0), "gaussian": _INV_SQRT_2PI, "laplace": 0.5}
ACTIVATIONS = tuple(_FUNCS)


class Activation:
    """A softplus-type activation, optionally symmetrised (s(u) - u/2) and zero-offset.

    The symmetrised form is only convex-safe on the first ICNN layer (it is not monotone); the
    ICNN enforces that.
    """

    def __init__(self, name: str, *, symmetric: bool = False, zero_offset: bool = False) -> None:
        if name not in _FUNCS:
            raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")
        self.name = name
        self.symmetric = symmetric
        self.zero_offset = zero_offset
        self._f = _FUNCS[name]
        self._offset = _AT_ZERO[name] if zero_offset else 0.0

    def all(self, u: Tensor, order: int = 2) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(s(u), s'(u), s''(u)) in one pass; derivatives above ``order`` may come back None
        (skipped where that saves work)."""
        v, d1, d2 = self._f(u, order)
        if self.symmetric:
            v = v - 0.5 * u
            d1 = None if d1 is None else d1 - 0.5
        if self._offset:
            v = v - self._offset
        return v, d1, d2

    def __call__(self, u: Tensor) -> Tensor:
        return self.all(u)[0]

    def __repr__(self) -> str:
        return f"Activation({self.name!r}, symmetric={self.symmetric}, zero_offset={self.zero_offset})"


def make_activation(
    name: str, *, symmetric: bool = False, zero_offset: bool = False
) -> Activation:
    """Build an activation by name (``logistic``, ``gaussian`` or ``laplace``)."""
    return Activation(name, symmetric=symmetric, zero_offset=zero_offset)
