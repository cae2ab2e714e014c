"""Small building blocks: positive linear maps, ActNorm, the fixed standardisation layer and the
squeeze permutation between the scales of an image flow."""

from __future__ import annotations

import math
from typing import TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layer import AffineLayer, Prepared

__all__ = [
    "ActNorm",
    "PositiveLinear",
    "Squeeze",
    "Standardization",
    "Unsqueeze",
    "module_list",
    "softplus_inv",
]

M = TypeVar("M", bound=nn.Module)


def module_list(modules: nn.ModuleList, kind: type[M]) -> list[M]:
    """The items of a ModuleList built from ``kind`` only, typed as such (torch types every
    item as a plain Module)."""
    return cast(list[M], list(modules))


def softplus_inv(y: float) -> float:
    """Inverse of softplus for a positive scalar."""
    return y + math.log(-math.expm1(-y))


class PositiveLinear(nn.Module):
    """Linear map with weights softplus(W) / fan_in (non-negative for any W; no bias).

    Dividing by the fan-in keeps pre-activations O(1) whatever the width.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, mean=0.0, std=1.0)

    def effective_weight(self) -> Tensor:
        """The non-negative matrix actually applied."""
        return F.softplus(self.weight) / self.in_features

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.effective_weight().T


class ActNorm(AffineLayer):
    """Elementwise y = exp(log_scale) * (x + shift): a positive scale, data-initialised once.

    The ``initialized`` flag is a buffer, so it travels in the ``state_dict`` and a loaded model
    never re-initialises. Initialisation only happens through :meth:`initialize`.
    """

    initialized: Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.shift = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Set shift/scale so that x (n, features) has zero mean and unit variance per feature."""
        x = x.reshape(-1, self.features)
        mean = x.mean(0)
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
        self.shift.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(True)

    def scale(self) -> Tensor:
        return torch.exp(self.log_scale)

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        return (x + self.shift) * self.scale()

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.shift

    def linear(self, v: Tensor) -> Tensor:
        """The linear part of the map (its Jacobian applied to v)."""
        return v * self.scale()

    def logdet(self) -> Tensor:
        """log|det| of the map (the same for every input)."""
        return self.log_scale.sum()


class Squeeze(AffineLayer):
    """Images (C, H, W) -> (4C, H/2, W/2): each 2x2 patch becomes 4 channels (Dinh et al.,
    2017). A permutation (log-det 0); takes and returns flat rows (n, C*H*W) or images."""

    def __init__(self, shape: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]), int(shape[2]))

    def _image_shape(self) -> tuple[int, int, int]:
        """The unsqueezed image shape, which flat rows need."""
        if self.shape is None:
            raise ValueError("a Squeeze built without a shape takes images (n, C, H, W) only")
        return self.shape

    def _squeeze(self, x: Tensor) -> Tensor:
        flat = x.ndim == 2
        x = x.reshape(x.shape[0], *self._image_shape()) if flat else x
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(n, c * 4, h // 2, w // 2)
        return x.reshape(n, -1) if flat else x

    def _unsqueeze(self, y: Tensor) -> Tensor:
        flat = y.ndim == 2
        if flat:
            c, h, w = self._image_shape()
            y = y.reshape(y.shape[0], 4 * c, h // 2, w // 2)
        n, c4, h2, w2 = y.shape
        c = c4 // 4
        y = y.reshape(n, c, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3)
        y = y.reshape(n, c, h2 * 2, w2 * 2)
        return y.reshape(n, -1) if flat else y

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        return self._squeeze(x)

    def inverse(self, y: Tensor) -> Tensor:
        return self._unsqueeze(y)

    def linear(self, v: Tensor) -> Tensor:
        return self.forward(v)

    def logdet(self) -> Tensor:
        """A permutation: log|det| = 0."""
        return torch.zeros(())


class Unsqueeze(Squeeze):
    """The inverse of :class:`Squeeze` over images of ``shape`` (the unsqueezed shape); the
    last layers of an image flow, so that z comes back in the input's layout."""

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        return self._unsqueeze(x)

    def inverse(self, y: Tensor) -> Tensor:
        return self._squeeze(y)


class Standardization(AffineLayer):
    """Fixed affine layer z = (x - mean) / std, stored as buffers with its log-det.

    It makes the model take raw user data while the flow sees standardised values. With
    ``full=True`` it whitens instead: z = L^-1 (x - mean) with L the Cholesky factor of a
    covariance, so a flow whose blocks are the identity is that full-covariance Gaussian.
    ``std`` then holds the marginal standard deviations (informative; the map uses L).
    """

    mean: Tensor
    std: Tensor
    chol: Tensor
    chol_inv: Tensor

    def __init__(self, dim: int, *, full: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.full = full
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if full:
            self.register_buffer("chol", torch.eye(dim))  # L, lower triangular
            self.register_buffer("chol_inv", torch.eye(dim))  # L^-1

    def _vector(self, value: Tensor, name: str) -> Tensor:
        v = torch.as_tensor(value, dtype=self.mean.dtype, device=self.mean.device).reshape(-1)
        if v.numel() == 1:
            v = v.expand(self.dim)
        if v.shape != (self.dim,):
            raise ValueError(f"{name} must have {self.dim} entries (or 1)")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} must be finite")
        return v

    @torch.no_grad()
    def set(self, mean: Tensor, std: Tensor, *, isotropic: bool = False) -> None:
        if self.full:
            raise ValueError("a whitening standardisation takes a covariance: use set_covariance")
        mean, std = self._vector(mean, "mean"), self._vector(std, "std")
        if bool((std <= 0).any()):
            raise ValueError("std must be positive (drop constant columns first)")
        if isotropic:
            # One scale for all coordinates (geometric mean keeps the volume of the diagonal one).
            std = torch.exp(torch.log(std).mean()).expand(self.dim)
        self.mean.copy_(mean)
        self.std.copy_(std)

    @torch.no_grad()
    def set_covariance(self, mean: Tensor, cov: Tensor) -> None:
        """Whiten with this mean and (symmetric positive-definite) covariance."""
        if not self.full:
            raise ValueError("this standardisation is per-coordinate: use set(mean, std)")
        mean = self._vector(mean, "mean")
        cov = torch.as_tensor(cov, dtype=torch.float64).reshape(self.dim, self.dim)
        if not bool(torch.isfinite(cov).all()):
            raise ValueError("covariance must be finite")
        chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.T))
        if int(info) != 0:
            raise ValueError(
                "covariance is not positive definite: drop constant or collinear columns"
            )
        eye = torch.eye(self.dim, dtype=torch.float64)
        chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        self.mean.copy_(mean)
        self.std.copy_(torch.diagonal(cov).sqrt())
        self.chol.copy_(chol)
        self.chol_inv.copy_(chol_inv)

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        return self.linear(x - self.mean)

    def linear(self, v: Tensor) -> Tensor:
        return v @ self.chol_inv.T if self.full else v / self.std

    def inverse(self, z: Tensor) -> Tensor:
        if self.full:
            return z @ self.chol.T + self.mean
        return z * self.std + self.mean

    def logdet(self) -> Tensor:
        if self.full:
            return -torch.log(torch.diagonal(self.chol)).sum()
        return -torch.log(self.std).sum()
