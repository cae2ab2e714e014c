r"""Convolutional input-convex networks and the convolutional CP-Flow block.

:class:`ConvICNN` is a scalar potential G of an image x (C, H, W), convex in x for any
parameters. Layer k computes

    pre_k = A_k * x + P_k * z_{k-1}   (A_k a free 3x3 convolution with bias, P_k a 3x3
                                       convolution with weights softplus(W) / fan_in >= 0)
    u_k   = exp(l_k) (pre_k + m_k)    (per-channel ActNorm, positive scale)
    z_k   = s(u_k)                    (softplus-type; the first may be symmetrised s(u) - u/2)

and G(x) = sum_{c,h,w} w_c z_L[c, h, w], w_c >= 0: a spatial average times H*W, so that the
gradient per pixel is O(1) whatever the resolution. Convexity: z_0 is convex (s of an affine
map), and a non-negative combination of convex functions passed through a convex non-decreasing
s stays convex; the positive ActNorm scale keeps that. Only the first activation may be
non-monotone, because only positive weights act on z_0.

Gradients and Hessian-vector products are written out (adjoint and tangent sweeps through the
convolutions), so no autograd is needed to evaluate the block map or H v; autograd is used only
for parameter gradients. All public maps take flat rows (n, C*H*W): that is the layout of
:mod:`cpflow.logdet` (CG, SLQ) and :mod:`cpflow.inverse`, which are reused unchanged.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .activations import Activation
from .layer import Prepared
from .layers import ActNorm, module_list
from .sweeps import forward_sweep, hvp_sweep

__all__ = ["ChannelActNorm", "ConvICNN", "PositiveConv2d"]


class PositiveConv2d(nn.Module):
    """3x3 (or k x k) convolution with weights softplus(W) / fan_in >= 0, no bias, stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel = in_channels, out_channels, kernel
        self.padding = kernel // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        nn.init.normal_(self.weight, mean=0.0, std=1.0)

    def effective_weight(self) -> Tensor:
        """The non-negative kernel actually applied."""
        return F.softplus(self.weight) / (self.in_channels * self.kernel * self.kernel)


class ChannelActNorm(ActNorm):
    """Per-channel ActNorm on images: y = exp(log_scale_c) (x + shift_c), for images
    (n, C, H, W) or flat image rows (n, C*H*W) alike (the layout is kept).

    The core :class:`~cpflow.layers.ActNorm` with the channel axis at dim 1; its log-det per
    image is H * W * sum(log_scale). The scale is positive, as convexity inside an ICNN needs.
    """

    def __init__(self, channels: int, height: int = 1, width: int = 1) -> None:
        super().__init__(channels)
        self.height, self.width = height, width

    def _view(self, t: Tensor) -> Tensor:
        return t.view(1, -1, 1)

    def _per_channel(
        self, x: Tensor, scale: Tensor, shift: Tensor | float, *, shift_first: bool
    ) -> Tensor:
        xc = x.reshape(x.shape[0], self.features, -1)
        out = (xc + shift) * scale if shift_first else xc * scale - shift
        return out.reshape(x.shape)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Zero mean, unit variance per channel over (n, H, W) of x (n, C, H, W)."""
        x = x.reshape(x.shape[0], self.features, -1).transpose(0, 1).reshape(self.features, -1)
        mean = x.mean(1)
        std = x.std(1, unbiased=False) if x.shape[1] > 1 else torch.ones_like(mean)
        self.shift.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, w: Prepared | None = None) -> Tensor:
        return self._per_channel(
            x, self._view(self.scale()), self._view(self.shift), shift_first=True
        )

    def inverse(self, y: Tensor) -> Tensor:
        return self._per_channel(
            y, self._view(torch.exp(-self.log_scale)), self._view(self.shift), shift_first=False
        )

    def linear(self, v: Tensor) -> Tensor:
        return self._per_channel(v, self._view(self.scale()), 0.0, shift_first=True)

    def logdet(self) -> Tensor:
        return self.log_scale.sum() * (self.height * self.width)


class _ConvWeights(dict):
    """Effective weights of a ConvICNN (ActNorm folded in), shared by every sample."""

    def select(self, idx: Tensor) -> _ConvWeights:
        return self


class _ConvLinearization:
    """Cached quantities of a ConvICNN at a batch x to apply its Hessian to vectors."""

    def __init__(self, net: ConvICNN, w: dict, s1: list[Tensor], c2: list[Tensor], n: int):
        self.net, self.w, self.s1, self.c2, self.n = net, w, s1, c2, n

    def restrict(self, idx: Tensor) -> _ConvLinearization:
        """The same linearisation for the samples idx only."""
        s1, c2 = [s[idx] for s in self.s1], [c[idx] for c in self.c2]
        return _ConvLinearization(self.net, self.w, s1, c2, int(idx.numel()))

    def hvp(self, v: Tensor) -> Tensor:
        """H v for v (..., n, d); leading dimensions are folded into the batch."""
        net, w = self.net, self.w
        lead = v.shape[:-2]
        reps = 1
        for s in lead:
            reps *= int(s)
        vi = v.reshape(reps * self.n, *net.shape)

        def rep(t: Tensor) -> Tensor:
            if reps == 1:
                return t
            return t.unsqueeze(0).expand(reps, *t.shape).reshape(reps * t.shape[0], *t.shape[1:])

        def tangent(k: int, jt: list[Tensor]) -> Tensor:
            pre = F.conv2d(vi, w["A"][k], padding=net.padding)
            if k > 0:
                pre = pre + F.conv2d(jt[k - 1], w["P"][k], padding=net.padding)
            return pre * w["sc"][k]

        def adjoint(k: int, r: Tensor, acc: list[Tensor | None]) -> Tensor:
            g = r * w["sc"][k]
            if k > 0:
                acc[k - 1] = F.conv_transpose2d(g, w["P"][k], padding=net.padding)
            return F.conv_transpose2d(g, w["A"][k], padding=net.padding)

        s1, c2 = [rep(t) for t in self.s1], [rep(t) for t in self.c2]
        return hvp_sweep(s1, c2, tangent, adjoint).reshape(*lead, self.n, net.dim)


class ConvICNN(nn.Module):
    """Scalar convex potential of an image, with explicit gradient and Hessian-vector products.

    Inputs are flat rows (n, C*H*W) or images (n, C, H, W); outputs of ``grad`` are flat.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        hidden: int = 64,
        depth: int = 4,
        activation: str = "logistic",
        *,
        kernel: int = 3,
        symmetric_first: bool = True,
        zero_offset: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        c, h, wd = (int(s) for s in shape)
        self.shape = (c, h, wd)
        self.dim = c * h * wd
        self.hidden, self.depth, self.kernel, self.padding = hidden, depth, kernel, kernel // 2
        self.acts = [
            Activation(activation, symmetric=(k == 0 and symmetric_first), zero_offset=zero_offset)
            for k in range(depth)
        ]
        self.conv_x = nn.ModuleList(
            nn.Conv2d(c, hidden, kernel, padding=self.padding) for _ in range(depth)
        )
        self.pos = nn.ModuleList(PositiveConv2d(hidden, hidden, kernel) for _ in range(depth - 1))
        self.norms = nn.ModuleList(ChannelActNorm(hidden, h, wd) for _ in range(depth))
        self.out_weight = nn.Parameter(torch.zeros(hidden))

    # -- weights and passes ---------------------------------------------------------------------
    def prepare(self, context: Tensor | None = None) -> _ConvWeights:
        """The effective weights for a batch (a convolutional ICNN takes no context)."""
        if context is not None:
            raise ValueError("a convolutional ICNN potential takes no context")
        return self.weights()

    def _norms(self) -> list[ChannelActNorm]:
        return module_list(self.norms, ChannelActNorm)

    def weights(self) -> _ConvWeights:
        """The effective weights (the positive kernels' softplus, the ActNorms' shift and
        scale)."""
        A: list[Tensor] = []
        b: list[Tensor] = []
        P: list[Tensor | None] = []
        sc: list[Tensor] = []
        conv_x, pos = module_list(self.conv_x, nn.Conv2d), module_list(self.pos, PositiveConv2d)
        for k, norm in enumerate(self._norms()):
            A.append(conv_x[k].weight)
            b.append((cast(Tensor, conv_x[k].bias) + norm.shift).view(1, -1, 1, 1))
            P.append(pos[k - 1].effective_weight() if k > 0 else None)
            sc.append(norm.scale().view(1, -1, 1, 1))
        w_out = (F.softplus(self.out_weight) / self.hidden).view(1, -1, 1, 1)
        return _ConvWeights(A=A, b=b, P=P, sc=sc, w_out=w_out)

    def _img(self, x: Tensor) -> Tensor:
        return x.reshape(-1, *self.shape)

    def _forward(self, x: Tensor, w: dict):
        def pre_activation(k: int, zs: list[Tensor]) -> Tensor:
            pre = F.conv2d(x, w["A"][k], padding=self.padding) + w["b"][k]
            if k > 0:
                pre = pre + F.conv2d(zs[k - 1], w["P"][k], padding=self.padding)
            return pre * w["sc"][k]

        return forward_sweep(self.acts, pre_activation)

    def _adjoints(self, w: dict, s1: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """c_k = dG/dz_k (per layer) and grad_x G (n, C, H, W)."""
        cs: list[Tensor] = [None] * self.depth  # type: ignore[list-item]
        c = w["w_out"].expand_as(s1[-1])
        grad: Tensor | None = None
        for k in reversed(range(self.depth)):
            cs[k] = c
            g = s1[k] * c * w["sc"][k]  # dG/dpre_k
            term = F.conv_transpose2d(g, w["A"][k], padding=self.padding)
            grad = term if grad is None else grad + term
            if k > 0:
                c = F.conv_transpose2d(g, w["P"][k], padding=self.padding)
        if grad is None:
            raise ValueError("a convolutional ICNN has at least one layer")
        return cs, grad

    # -- public maps ----------------------------------------------------------------------------
    def forward(self, x: Tensor, w: _ConvWeights | None = None) -> Tensor:
        """G(x), shape (n,)."""
        w = self.weights() if w is None else w
        zs = self._forward(self._img(x), w)[1]
        return (zs[-1] * w["w_out"]).sum((1, 2, 3))

    def value_and_grad(self, x: Tensor, w: dict | None = None) -> tuple[Tensor, Tensor]:
        """(G(x) (n,), grad G(x) (n, d)) from one forward and one adjoint pass; ``w`` (from
        :meth:`weights`) spares re-deriving the effective weights in repeated calls."""
        w = self.weights() if w is None else w
        xi = self._img(x)
        _, zs, s1, _ = self._forward(xi, w)
        value = (zs[-1] * w["w_out"]).sum((1, 2, 3))
        return value, self._adjoints(w, s1)[1].reshape(xi.shape[0], self.dim)

    def grad(self, x: Tensor, w: _ConvWeights | None = None) -> Tensor:
        """grad G(x) as flat rows (n, d), without autograd."""
        return self.value_and_grad(x, w)[1]

    def linearize(
        self, x: Tensor, w: _ConvWeights | None = None
    ) -> tuple[Tensor, _ConvLinearization]:
        """(grad G (n, d), an object whose ``hvp`` applies the Hessian of G at x)."""
        w = self.weights() if w is None else w
        xi = self._img(x)
        _, _, s1, s2 = self._forward(xi, w)
        cs, grad = self._adjoints(w, s1)
        c2 = [c * d2 for c, d2 in zip(cs, s2, strict=True)]
        n = xi.shape[0]
        return grad.reshape(n, self.dim), _ConvLinearization(self, w, s1, c2, n)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Data-dependent init of the hidden ActNorms, layer by layer, on a batch x."""
        xi = self._img(x)
        for k, norm in enumerate(self._norms()):
            w = self.weights()
            u = self._forward(xi, w)[0][k]
            raw = u / w["sc"][k] - norm.shift.view(1, -1, 1, 1)
            norm.initialize(raw)
