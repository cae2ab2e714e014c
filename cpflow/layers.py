"""Small building blocks: positive linear maps, ActNorm and the fixed standardisation layer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ActNorm", "PositiveLinear", "Standardization", "softplus_inv"]


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


class ActNorm(nn.Module):
    """Elementwise y = exp(log_scale) * (x + shift): a positive scale, data-initialised once.

    The ``initialized`` flag is a buffer, so it travels in the ``state_dict`` and a loaded model
    never re-initialises. Initialisation only happens through :meth:`initialize`.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.shift = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set shift/scale so that x (n, features) has zero mean and unit variance per feature."""
        x = x.reshape(-1, self.features)
        mean = x.mean(0)
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
        self.shift.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(True)

    def scale(self) -> Tensor:
        return torch.exp(self.log_scale)

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.shift) * self.scale()

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.shift

    def logdet(self) -> Tensor:
        """log|det| of the map (the same for every input)."""
        return self.log_scale.sum()


class Standardization(nn.Module):
    """Fixed affine layer z = (x - mean) / std, stored as buffers with its log-det.

    It makes the model take raw user data while the flow sees standardised values.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def set(self, mean: Tensor, std: Tensor, *, isotropic: bool = False) -> None:
        mean = torch.as_tensor(mean, dtype=self.mean.dtype, device=self.mean.device).reshape(-1)
        std = torch.as_tensor(std, dtype=self.std.dtype, device=self.std.device).reshape(-1)
        if mean.numel() == 1:
            mean = mean.expand(self.dim)
        if std.numel() == 1:
            std = std.expand(self.dim)
        if mean.shape != (self.dim,) or std.shape != (self.dim,):
            raise ValueError(f"mean and std must have {self.dim} entries (or 1)")
        if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
        if bool((std <= 0).any()):
            raise ValueError("std must be positive (drop constant columns first)")
        if isotropic:
            # One scale for all coordinates (geometric mean keeps the volume of the diagonal one).
            std = torch.exp(torch.log(std).mean()).expand(self.dim)
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean

    def logdet(self) -> Tensor:
        return -torch.log(self.std).sum()
