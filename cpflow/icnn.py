r"""Input-convex neural networks with analytic gradients, Hessians and Hessian-vector products.

Every hidden layer k computes u_k = P_k z_src + A_k x + b_k (P_k >= 0 elementwise) followed by
an optional positive-scale ActNorm and a softplus-type activation z_k = s(u_k). Because the
only nonlinearities are the elementwise s, the Hessian of the scalar output G is

    H = sum_k U_k^T diag(c_k * s''(u_k)) U_k,   U_k = du_k/dx,  c_k = dG/dz_k >= 0,

which is positive semi-definite for any parameters (c_k >= 0 as every weight acting on hidden
units is non-negative and s' >= 0 after the first layer). Gradients use the same adjoints c_k,
so nothing here needs autograd: the maps are plain tensor programs (ONNX-exportable), and
autograd is only used by callers that want parameter gradients.

Kinds: ``vanilla`` (Amos et al.: x feeds every layer), ``augmented`` (CP-Flow eq. 7: half of
each hidden layer after the first sees x only) and ``dense`` (each layer sees all previous
hidden layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .activations import Activation
from .layers import PositiveLinear
from .sweeps import forward_sweep, hvp_sweep

__all__ = ["ICNN", "ICNNLinearization"]


@dataclass
class _Weights:
    """Effective weights for one call (ActNorm folded in)."""

    A: list[Tensor]  # (h, d)
    b: list[Tensor]  # (h,)
    P: list[Tensor | None]  # (h_pos, H_src)
    w_out: Tensor  # (H_out,)
    a_out: Tensor  # (d,)
    cache: dict = field(default_factory=dict)  # weight-only tensors derived from these

    def select(self, idx: Tensor) -> _Weights:
        """The weights for the samples idx: the same, as they are shared by every sample."""
        return self


class ICNNLinearization:
    """Cached quantities at a batch of points x to apply the ICNN Hessian to vectors.

    ``hvp(v)`` costs two passes of size (n, hidden) per layer; v may carry extra leading
    dimensions (e.g. several probes) that broadcast against the batch.
    """

    def __init__(self, net: ICNN, w: _Weights, s1: list[Tensor], c2: list[Tensor]) -> None:
        self.net = net
        self.w = w
        self.s1 = s1  # s'(u_k)   (n, h)
        self.c2 = c2  # c_k s''(u_k)  (n, h)

    def restrict(self, idx: Tensor) -> ICNNLinearization:
        """The same linearisation for the samples idx only (for solvers that drop converged
        samples)."""
        return ICNNLinearization(
            self.net, self.w, [s[idx] for s in self.s1], [c[idx] for c in self.c2]
        )

    def hvp(self, v: Tensor) -> Tensor:
        net, w = self.net, self.w

        def tangent(k: int, jt: list[Tensor]) -> Tensor:
            tk, Pk = v @ w.A[k].T, w.P[k]
            if Pk is None:
                return tk
            return net._add_pos(tk, net._gather(jt, k) @ Pk.T, k)

        def adjoint(k: int, rk: Tensor, acc: list[Tensor | None]) -> Tensor:
            Pk = w.P[k]
            if Pk is not None:
                net._scatter_back(acc, rk[..., : net.pos_rows[k]] @ Pk, k)
            return rk @ w.A[k]

        return hvp_sweep(self.s1, self.c2, tangent, adjoint)


class ICNN(nn.Module):
    """Scalar input-convex network G: R^d -> R with explicit gradient and Hessian."""

    def __init__(
        self,
        dim: int,
        hidden: int = 32,
        depth: int = 3,
        kind: str = "augmented",
        activation: str = "logistic",
        *,
        symmetric_first: bool = True,
        zero_offset: bool = False,
        actnorm: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("vanilla", "augmented", "dense"):
            raise ValueError(f"unknown ICNN kind {kind!r}")
        if kind == "augmented" and hidden < 2:
            raise ValueError("augmented ICNN needs hidden >= 2")
        self.dim, self.hidden, self.depth, self.kind = dim, hidden, depth, kind
        self.acts = [
            Activation(activation, symmetric=(k == 0 and symmetric_first), zero_offset=zero_offset)
            for k in range(depth)
        ]
        self.sources: list[list[int]] = [[]]
        self.pos_rows: list[int] = [0]
        for k in range(1, depth):
            self.sources.append(list(range(k)) if kind == "dense" else [k - 1])
            self.pos_rows.append(hidden - hidden // 2 if kind == "augmented" else hidden)
        self.out_sources = list(range(depth)) if kind == "dense" else [depth - 1]
        self.lin_x = nn.ModuleList(nn.Linear(dim, hidden) for _ in range(depth))
        self.pos = nn.ModuleList(
            PositiveLinear(hidden * len(self.sources[k]), self.pos_rows[k])
            for k in range(1, depth)
        )
        self.out_pos = PositiveLinear(hidden * len(self.out_sources), 1)
        self.out_x = nn.Linear(dim, 1, bias=False)  # a constant never matters
        self.norms = (
            nn.ModuleList(_HiddenActNorm(hidden) for _ in range(depth)) if actnorm else None
        )

    # -- wiring helpers ---------------------------------------------------------------------
    def _gather(self, zs: list[Tensor], k: int) -> Tensor:
        src = self.sources[k]
        return zs[src[0]] if len(src) == 1 else torch.cat([zs[j] for j in src], dim=-1)

    def _gather_out(self, zs: list[Tensor]) -> Tensor:
        src = self.out_sources
        return zs[src[0]] if len(src) == 1 else torch.cat([zs[j] for j in src], dim=-1)

    def _add_pos(self, pre: Tensor, pos: Tensor, k: int) -> Tensor:
        hp = self.pos_rows[k]
        if hp == self.hidden:
            return pre + pos
        return torch.cat([pre[..., :hp] + pos, pre[..., hp:]], dim=-1)

    def _scatter_back(self, acc: list[Tensor | None], back: Tensor, k: int) -> None:
        h = self.hidden
        for i, j in enumerate(self.sources[k]):
            piece, prev = back[..., i * h : (i + 1) * h], acc[j]
            acc[j] = piece if prev is None else prev + piece

    def prepare(self, context: Tensor | None = None) -> _Weights:
        """The effective weights for a batch (an ICNN takes no context)."""
        if context is not None:
            raise ValueError("an ICNN potential takes no context")
        return self.weights()

    def _linear(self, k: int) -> nn.Linear:
        return cast(nn.Linear, self.lin_x[k])

    def _norm(self, k: int) -> _HiddenActNorm:
        assert self.norms is not None
        return cast(_HiddenActNorm, self.norms[k])

    def weights(self) -> _Weights:
        """The effective weights (the positive maps' softplus, the ActNorms folded in)."""
        A: list[Tensor] = []
        b: list[Tensor] = []
        P: list[Tensor | None] = []
        for k in range(self.depth):
            Ak: Tensor = self._linear(k).weight
            bk: Tensor = self._linear(k).bias
            Pk = cast(PositiveLinear, self.pos[k - 1]).effective_weight() if k > 0 else None
            if self.norms is not None:
                sc, sh = self._norm(k).scale(), self._norm(k).shift
                Ak = Ak * sc[:, None]
                bk = (bk + sh) * sc
                if Pk is not None:
                    Pk = Pk * sc[: self.pos_rows[k], None]
            A.append(Ak)
            b.append(bk)
            P.append(Pk)
        return _Weights(A, b, P, self.out_pos.effective_weight()[0], self.out_x.weight[0])

    # -- passes -----------------------------------------------------------------------------
    def _forward(self, x: Tensor, w: _Weights, order: int):
        def pre_activation(k: int, zs: list[Tensor]) -> Tensor:
            pre, Pk = F.linear(x, w.A[k], w.b[k]), w.P[k]
            if Pk is None:
                return pre
            return self._add_pos(pre, self._gather(zs, k) @ Pk.T, k)

        return forward_sweep(self.acts, pre_activation, order)

    def _adjoints(self, w: _Weights, s1: list[Tensor], n_shape) -> tuple[list[Tensor], Tensor]:
        """c_k = dG/dz_k and the gradient dG/dx."""
        L, h = self.depth, self.hidden
        acc: list[Tensor | None] = [None] * L
        for i, j in enumerate(self.out_sources):
            acc[j] = w.w_out[i * h : (i + 1) * h].expand(*n_shape, h)
        cs: list[Tensor] = [None] * L  # type: ignore[list-item]
        grad = w.a_out.expand(*n_shape, self.dim)
        for k in reversed(range(L)):
            ck = acc[k]
            if ck is None:  # unreachable layer (cannot happen with our wirings)
                ck = torch.zeros_like(s1[k])
            cs[k] = ck
            delta = s1[k] * ck
            grad = grad + delta @ w.A[k]
            Pk = w.P[k]
            if Pk is not None:
                self._scatter_back(acc, delta[..., : self.pos_rows[k]] @ Pk, k)
        return cs, grad

    def forward(self, x: Tensor, w: _Weights | None = None) -> Tensor:
        """G(x), shape (n,)."""
        w = self.weights() if w is None else w
        _, zs, _, _ = self._forward(x, w, 0)
        return self._gather_out(zs) @ w.w_out + x @ w.a_out

    def value_and_grad(self, x: Tensor, w: _Weights | None = None) -> tuple[Tensor, Tensor]:
        """(G(x) (n,), grad G(x) (n, d)) with one forward and one adjoint pass; ``w`` (from
        :meth:`weights`) spares re-deriving the effective weights in repeated calls."""
        w = self.weights() if w is None else w
        _, zs, s1, _ = self._forward(x, w, 1)
        value = self._gather_out(zs) @ w.w_out + x @ w.a_out
        _, grad = self._adjoints(w, s1, x.shape[:-1])
        return value, grad

    def grad(self, x: Tensor, w: _Weights | None = None) -> Tensor:
        """grad G(x), shape (n, d), without autograd."""
        w = self.weights() if w is None else w
        _, _, s1, _ = self._forward(x, w, 1)
        return self._adjoints(w, s1, x.shape[:-1])[1]

    def grad_and_hessian(
        self,
        x: Tensor,
        scale: Tensor | float = 1.0,
        shift: Tensor | float = 0.0,
        *,
        upper_only: bool = False,
        w: _Weights | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(grad G (n, d), scale * Hessian of G + shift * I (n, d, d)) by forward-mode
        Jacobians of the layers (scale and shift are fused in: no extra (n, d, d) passes).
        With ``upper_only`` only the upper triangle (i <= j) is right -- all that an upper
        Cholesky factorisation reads -- and the shared rows' part costs half.

        Rows of U_k = du_k/dx split into per-sample rows (the P_k-fed units) and rows shared
        by every sample (layer 0 entirely; the x-only half of an augmented layer). The shared
        rows' part of H, sum_r w_r(x) a_r a_r^T, is one (n, R) x (R, d^2) product with
        weight-only outer products. The per-sample rows V_k are kept transposed,
        (n, d, h_pos) (:meth:`_sample_rows`), and their Gram matrices V_k^T diag(w) V_k are
        batched products accumulated into one (n, d, d) tensor.
        """
        w = self.weights() if w is None else w
        _, _, s1, s2 = self._forward(x, w, 2)
        cs, grad = self._adjoints(w, s1, x.shape[:-1])
        n, d, pos = x.shape[0], self.dim, self.pos_rows
        outer, eye, upper, tensors = self._hessian_constants(w, upper_only)
        wts = [scale * c * s for c, s in zip(cs, s2, strict=True)]
        shared_w = torch.cat([wt[:, pos[k] :] for k, wt in enumerate(wts)], dim=1)
        shared_part = torch.addmm(shift * eye, shared_w, outer)
        H = x.new_zeros(n, d, d) if upper is not None else shared_part.reshape(n, d, d)
        for k, VT in enumerate(self._sample_rows(w, s1, tensors), start=1):
            H.baddbmm_(VT * wts[k][:, None, : pos[k]], VT.transpose(1, 2))
        if upper is not None:
            H.view(n, d * d).index_add_(1, upper, shared_part)
        return grad, H

    def _hessian_constants(
        self, w: _Weights, upper_only: bool
    ) -> tuple[Tensor, Tensor, Tensor | None, list[Tensor]]:
        """The weight-only parts of the Hessian, built once per prepared weights (the batches
        of one log_prob, the iterations of a Newton solve share them): the shared rows' outer
        products (R, d^2) and the identity (d^2,) -- with ``upper_only`` only the upper
        triangle's columns, and their flat indices -- and, per layer k >= 1, the
        (R_src, d h_pos) map from the shared source rows' slopes to V_k."""
        key = ("hessian", upper_only)
        if key not in w.cache:
            d, h, pos, like = self.dim, self.hidden, self.pos_rows, w.A[0]
            shared = [w.A[k][pos[k] :] for k in range(self.depth)]  # rows equal for all samples
            outer = torch.cat([torch.einsum("rp,rq->rpq", S, S) for S in shared]).reshape(
                -1, d * d
            )
            eye = torch.eye(d, dtype=like.dtype, device=like.device).reshape(-1)
            upper = None
            if upper_only:
                iu, ju = torch.triu_indices(d, d, device=like.device)
                upper = iu * d + ju
                outer, eye = outer[:, upper], eye[upper]
            tensors = []
            for k in range(1, self.depth):
                Pk = w.P[k]
                assert Pk is not None  # every layer after the first has a positive map
                parts = [
                    torch.einsum("pr,rq->rqp", Pk[:, i * h + pos[j] : (i + 1) * h], shared[j])
                    for i, j in enumerate(self.sources[k])
                ]
                tensors.append(torch.cat(parts).reshape(-1, d * pos[k]))
            w.cache[key] = (outer, eye, upper, tensors)
        return w.cache[key]

    def _sample_rows(self, w: _Weights, s1: list[Tensor], tensors: list[Tensor]) -> list[Tensor]:
        """The per-sample rows V_k of U_k for k = 1.. (transposed, (n, d, h_pos)), ``tensors``
        from :meth:`_hessian_constants`: kept transposed so that propagating V_j through P_k
        is one (n d, .) x (., h_pos) product."""
        n, d, h, pos = s1[0].shape[0], self.dim, self.hidden, self.pos_rows
        VT: list[Tensor] = []  # VT[k - 1] for layer k
        for k in range(1, self.depth):
            hp, Pk = pos[k], w.P[k]
            assert Pk is not None  # every layer after the first has a positive map
            coeffs = torch.cat([s1[j][:, pos[j] :] for j in self.sources[k]], 1)
            Vk = torch.addmm(w.A[k][:hp].T.reshape(-1), coeffs, tensors[k - 1])
            Vk = Vk.reshape(n * d, hp)
            for i, j in enumerate(self.sources[k]):
                if pos[j] > 0:
                    src = (s1[j][:, None, : pos[j]] * VT[j - 1]).reshape(n * d, pos[j])
                    Vk.addmm_(src, Pk[:, i * h : i * h + pos[j]].T)
            VT.append(Vk.reshape(n, d, hp))
        return VT

    def linearize(self, x: Tensor, w: _Weights | None = None) -> tuple[Tensor, ICNNLinearization]:
        """(grad G (n, d), an object applying the Hessian at x to vectors)."""
        w = self.weights() if w is None else w
        _, _, s1, s2 = self._forward(x, w, 2)
        cs, grad = self._adjoints(w, s1, x.shape[:-1])
        c2 = [c * d2 for c, d2 in zip(cs, s2, strict=True)]
        return grad, ICNNLinearization(self, w, s1, c2)

    # -- data-dependent initialisation --------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        """Initialise the hidden ActNorms so pre-activations on x have zero mean, unit variance."""
        if self.norms is None:
            return
        # layer by layer: each initialisation changes what later layers see
        for k in range(self.depth):
            norm = self._norm(k)
            us = self._forward(x, self.weights(), 0)[0]
            raw = us[k] / norm.scale() - norm.shift  # undo the folded ActNorm of layer k
            norm.initialize_from(raw)


class _HiddenActNorm(nn.Module):
    """Positive-scale ActNorm on ICNN pre-activations (folded into the weights when used)."""

    initialized: Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    def scale(self) -> Tensor:
        return torch.exp(self.log_scale)

    @torch.no_grad()
    def initialize_from(self, raw: Tensor) -> None:
        norm = self
        mean = raw.mean(0)
        std = raw.std(0, unbiased=False) if raw.shape[0] > 1 else torch.ones_like(mean)
        norm.shift.copy_(-mean)
        norm.log_scale.copy_(-torch.log(std.clamp_min(1e-3)))
        norm.initialized.fill_(True)
