r"""Partially input-convex networks (PICNN, Amos et al. 2017): G(x; c) convex in x for every c.

For a context c the network is an ICNN in x whose weights are modulated by c (multiplicative
conditioning). With u_k the context features of layer k,

    pre_k = P_k (z_{k-1} * gz_k(u_k)) + A_k (x * gx_k(u_k)) + b_k(u_k)       (k >= 1)
    pre_0 = A_0 (x * gx_0(u_0)) + b_0(u_0),     z_k = s(actnorm_k(pre_k))
    G     = w_out . (z_L * gz_out(u)) + a(u) . x

with P_k, w_out >= 0 (softplus weights), gz >= 0 (softplus gates) and s softplus-type
(non-decreasing and convex after the first layer). For fixed c this is exactly the ICNN of
:mod:`cpflow.icnn` with per-sample effective weights, so the Hessian in x is again

    H = sum_k U_k^T diag(c_k s''(pre_k)) U_k,   c_k = dG/dz_k >= 0,

positive semi-definite for any parameters and any context. Gradients, Hessians and
Hessian-vector products are computed analytically (no autograd), as in the ICNN.

Context path: u_0 = t(W_0 c + b_0) and, unless ``cut_context`` (App. E.6 of the CP-Flow paper:
the context's non-linear path stops after the first layer), u_k = t(W_k u_{k-1} + b_k).
Kinds: ``augmented`` (half of every hidden layer after the first sees x only, eq. 7) and
``vanilla`` (every unit of every layer sees the previous layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .activations import Activation
from .layers import PositiveLinear, module_list, softplus_inv
from .sweeps import forward_sweep, hvp_sweep

__all__ = ["PICNN", "PICNNContext", "PICNNLinearization"]

_ONE_INV = softplus_inv(1.0)


@dataclass
class PICNNContext:
    """Per-sample effective weights of a PICNN for a batch of contexts (ActNorm folded in).

    ``select(idx)`` keeps the samples idx, so solvers that drop converged samples can reuse it.
    """

    gx: list[Tensor]  # (n, d) multiplicative gates on x, per layer
    gz: list[Tensor | None]  # (n, h) non-negative gates on the previous hidden layer
    bias: list[Tensor]  # (n, h)
    A: list[Tensor]  # (h, d), shared over samples
    P: list[Tensor | None]  # (h_pos, h) non-negative, shared
    w_out: Tensor  # (n, h) = w_out * gz_out >= 0
    a_out: Tensor  # (n, d)

    def select(self, idx: Tensor) -> PICNNContext:
        return PICNNContext(
            [g[idx] for g in self.gx],
            [None if g is None else g[idx] for g in self.gz],
            [b[idx] for b in self.bias],
            self.A,
            self.P,
            self.w_out[idx],
            self.a_out[idx],
        )

    @property
    def batch(self) -> int:
        return self.w_out.shape[0]


class PICNNLinearization:
    """Quantities cached at (x, c) to apply the x-Hessian of G to vectors (..., n, d)."""

    def __init__(self, net: PICNN, w: PICNNContext, s1: list[Tensor], c2: list[Tensor]) -> None:
        self.net, self.w, self.s1, self.c2 = net, w, s1, c2

    def restrict(self, idx: Tensor) -> PICNNLinearization:
        return PICNNLinearization(
            self.net, self.w.select(idx), [s[idx] for s in self.s1], [c[idx] for c in self.c2]
        )

    def hvp(self, v: Tensor) -> Tensor:
        net, w = self.net, self.w

        def tangent(k: int, jt: list[Tensor]) -> Tensor:
            tk, Pk, gzk = (v * w.gx[k]) @ w.A[k].T, w.P[k], w.gz[k]
            if Pk is None or gzk is None:
                return tk
            return net._add_pos(tk, (jt[k - 1] * gzk) @ Pk.T)

        def adjoint(k: int, rk: Tensor, acc: list[Tensor | None]) -> Tensor:
            Pk, gzk = w.P[k], w.gz[k]
            if Pk is not None and gzk is not None:
                acc[k - 1] = (rk[..., : net.pos_rows[k]] @ Pk) * gzk
            return (rk @ w.A[k]) * w.gx[k]

        return hvp_sweep(self.s1, self.c2, tangent, adjoint)


class PICNN(nn.Module):
    """Scalar G(x; c), convex in x for any context c, with explicit gradient and Hessian in x."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden: int = 32,
        depth: int = 3,
        kind: str = "augmented",
        activation: str = "logistic",
        *,
        context_hidden: int = 32,
        cut_context: bool = True,
        symmetric_first: bool = True,
        zero_offset: bool = False,
        actnorm: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("vanilla", "augmented"):
            raise ValueError(f"unknown PICNN kind {kind!r}; use 'augmented' or 'vanilla'")
        if kind == "augmented" and hidden < 2:
            raise ValueError("augmented PICNN needs hidden >= 2")
        if context_dim < 1:
            raise ValueError("context_dim must be >= 1")
        self.dim, self.context_dim, self.hidden, self.depth = dim, context_dim, hidden, depth
        self.kind, self.cut_context, self.context_hidden = kind, cut_context, context_hidden
        self.acts = [
            Activation(activation, symmetric=(k == 0 and symmetric_first), zero_offset=zero_offset)
            for k in range(depth)
        ]
        self.pos_rows = [0] + [
            hidden - hidden // 2 if kind == "augmented" else hidden for _ in range(1, depth)
        ]
        ch = context_hidden
        n_ctx = 1 if cut_context else depth
        self.ctx = nn.ModuleList(
            [nn.Linear(context_dim, ch)] + [nn.Linear(ch, ch) for _ in range(n_ctx - 1)]
        )
        self.lin_x = nn.ModuleList(nn.Linear(dim, hidden, bias=False) for _ in range(depth))
        self.gate_x = nn.ModuleList(nn.Linear(ch, dim) for _ in range(depth))
        self.bias = nn.ModuleList(nn.Linear(ch, hidden) for _ in range(depth))
        self.gate_z = nn.ModuleList(nn.Linear(ch, hidden) for _ in range(1, depth))
        self.pos = nn.ModuleList(PositiveLinear(hidden, self.pos_rows[k]) for k in range(1, depth))
        self.gate_out = nn.Linear(ch, hidden)
        self.out_pos = PositiveLinear(hidden, 1)
        self.out_x = nn.Linear(ch, dim)
        # gates start near 1 (the network starts as an ICNN with mild context effects)
        gate_x, gate_z = module_list(self.gate_x, nn.Linear), module_list(self.gate_z, nn.Linear)
        with torch.no_grad():
            for lin in [*gate_x, *gate_z, self.gate_out, self.out_x]:
                lin.weight.mul_(0.1)
            for lin in gate_x:
                lin.bias.zero_()
            for lin in [*gate_z, self.gate_out]:
                lin.bias.fill_(_ONE_INV)
        self.norm_shift = nn.ParameterList(
            nn.Parameter(torch.zeros(hidden)) for _ in range(depth if actnorm else 0)
        )
        self.norm_log_scale = nn.ParameterList(
            nn.Parameter(torch.zeros(hidden)) for _ in range(depth if actnorm else 0)
        )
        self.actnorm = actnorm
        self.register_buffer("initialized", torch.tensor(not actnorm))

    initialized: Tensor

    # -- context ------------------------------------------------------------------------------
    def context_features(self, c: Tensor) -> list[Tensor]:
        """u_k for every layer (the same tensor for all layers when the path is cut)."""
        u = torch.tanh(self.ctx[0](c))
        us = [u]
        for lin in self.ctx[1:]:
            u = torch.tanh(lin(u))
            us.append(u)
        return us * self.depth if self.cut_context else us

    def prepare(self, c: Tensor) -> PICNNContext:
        """Effective per-sample weights for contexts c (n, context_dim)."""
        us = self.context_features(c)
        lin_x, pos = module_list(self.lin_x, nn.Linear), module_list(self.pos, PositiveLinear)
        gx: list[Tensor] = []
        gz: list[Tensor | None] = []
        bias: list[Tensor] = []
        A: list[Tensor] = []
        P: list[Tensor | None] = []
        for k in range(self.depth):
            u = us[k]
            Ak: Tensor = lin_x[k].weight
            bk = self.bias[k](u)
            Pk = pos[k - 1].effective_weight() if k > 0 else None
            if self.actnorm:
                sc = torch.exp(self.norm_log_scale[k])
                Ak = Ak * sc[:, None]
                bk = (bk + self.norm_shift[k]) * sc
                if Pk is not None:
                    Pk = Pk * sc[: self.pos_rows[k], None]
            gx.append(1.0 + self.gate_x[k](u))
            gz.append(F.softplus(self.gate_z[k - 1](u)) if k > 0 else None)
            bias.append(bk)
            A.append(Ak)
            P.append(Pk)
        u = us[-1]
        w_out = self.out_pos.effective_weight()[0] * F.softplus(self.gate_out(u))
        return PICNNContext(gx, gz, bias, A, P, w_out, self.out_x(u))

    def _ctx(self, c: Tensor | PICNNContext) -> PICNNContext:
        return c if isinstance(c, PICNNContext) else self.prepare(c)

    # -- passes --------------------------------------------------------------------------------
    def _add_pos(self, pre: Tensor, pos: Tensor) -> Tensor:
        hp = pos.shape[-1]
        if hp == self.hidden:
            return pre + pos
        return torch.cat([pre[..., :hp] + pos, pre[..., hp:]], dim=-1)

    def _forward(self, x: Tensor, w: PICNNContext):
        def pre_activation(k: int, zs: list[Tensor]) -> Tensor:
            pre, Pk, gzk = (x * w.gx[k]) @ w.A[k].T + w.bias[k], w.P[k], w.gz[k]
            if Pk is None or gzk is None:
                return pre
            return self._add_pos(pre, (zs[k - 1] * gzk) @ Pk.T)

        return forward_sweep(self.acts, pre_activation)

    def _adjoints(self, w: PICNNContext, s1: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        cs: list[Tensor] = [None] * self.depth  # type: ignore[list-item]
        acc = w.w_out
        grad = w.a_out
        for k in reversed(range(self.depth)):
            cs[k] = acc
            delta = s1[k] * acc
            grad = grad + (delta @ w.A[k]) * w.gx[k]
            Pk, gzk = w.P[k], w.gz[k]
            if Pk is not None and gzk is not None:
                acc = (delta[..., : self.pos_rows[k]] @ Pk) * gzk
        return cs, grad

    def forward(self, x: Tensor, c: Tensor | PICNNContext) -> Tensor:
        """G(x; c), shape (n,)."""
        w = self._ctx(c)
        zs = self._forward(x, w)[1]
        return (zs[-1] * w.w_out).sum(-1) + (x * w.a_out).sum(-1)

    def value_and_grad(self, x: Tensor, c: Tensor | PICNNContext) -> tuple[Tensor, Tensor]:
        """(G (n,), grad_x G (n, d)) from one forward and one adjoint pass."""
        w = self._ctx(c)
        _, zs, s1, _ = self._forward(x, w)
        value = (zs[-1] * w.w_out).sum(-1) + (x * w.a_out).sum(-1)
        return value, self._adjoints(w, s1)[1]

    def grad(self, x: Tensor, c: Tensor | PICNNContext) -> Tensor:
        """grad_x G(x; c), shape (n, d), without autograd."""
        w = self._ctx(c)
        return self._adjoints(w, self._forward(x, w)[2])[1]

    def grad_and_hessian(
        self,
        x: Tensor,
        w: Tensor | PICNNContext,
        scale: Tensor | float = 1.0,
        shift: Tensor | float = 0.0,
        *,
        upper_only: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """(grad_x G (n, d), scale * Hessian in x + shift * I (n, d, d)), built from per-layer
        Jacobians; ``w`` is the context or its :meth:`prepare` d weights (the full Hessian is
        built whatever ``upper_only`` says)."""
        w = self._ctx(w)
        _, _, s1, s2 = self._forward(x, w)
        cs, grad = self._adjoints(w, s1)
        n = x.shape[0]
        H = x.new_zeros(n, self.dim, self.dim)
        J_prev: Tensor | None = None
        for k in range(self.depth):
            U = w.A[k].unsqueeze(0) * w.gx[k].unsqueeze(1)  # (n, h, d)
            Pk, gzk = w.P[k], w.gz[k]
            if Pk is not None and gzk is not None and J_prev is not None:
                pu = torch.matmul(Pk, gzk.unsqueeze(-1) * J_prev)  # (n, hp, d)
                hp = self.pos_rows[k]
                U = torch.cat([U[:, :hp] + pu, U[:, hp:]], 1) if hp < self.hidden else U + pu
            J_prev = s1[k].unsqueeze(-1) * U
            wk = (cs[k] * s2[k]).unsqueeze(-1)
            H = H + torch.bmm((U * wk).transpose(1, 2), U)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return grad, scale * H + shift * eye

    def linearize(self, x: Tensor, c: Tensor | PICNNContext) -> tuple[Tensor, PICNNLinearization]:
        """(grad_x G (n, d), an object applying the x-Hessian at (x, c) to vectors)."""
        w = self._ctx(c)
        _, _, s1, s2 = self._forward(x, w)
        cs, grad = self._adjoints(w, s1)
        return grad, PICNNLinearization(self, w, s1, [a * b for a, b in zip(cs, s2, strict=True)])

    # -- data-dependent initialisation --------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor, c: Tensor) -> None:
        """Set the hidden ActNorms so pre-activations on (x, c) have zero mean, unit variance."""
        if not self.actnorm:
            return
        for k in range(self.depth):
            pre = self._forward(x, self.prepare(c))[0][k]
            sc = torch.exp(self.norm_log_scale[k])
            raw = pre / sc - self.norm_shift[k]
            mean = raw.mean(0)
            std = raw.std(0, unbiased=False) if raw.shape[0] > 1 else torch.ones_like(mean)
            self.norm_shift[k].copy_(-mean)
            self.norm_log_scale[k].copy_(-torch.log(std.clamp_min(1e-3)))
        self.initialized.fill_(True)
