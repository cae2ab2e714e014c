r"""The two sweeps that every convex network (dense ICNN, PICNN, convolutional ICNN) runs; the
networks supply only how their layers apply their weights.

Forward: pre_k = pre_activation(k, z_0..z_{k-1}), z_k = s_k(pre_k), keeping s'(pre_k) and
s''(pre_k) for the derivatives.

Hessian-vector product at a linearisation point: with U_k = d pre_k / dx and c_k = dG/dz_k,
H = sum_k U_k^T diag(c_k s''_k) U_k, applied to v by a forward tangent sweep
(t_k = U_k v, built from v and s'_j t_j of the layers feeding layer k) and a reverse sweep
(r_k = c_k s''_k t_k + s'_k a_k, a_k the adjoint reaching z_k from later layers; H v =
sum_k of layer k's direct-input part of U_k^T r_k).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

__all__ = ["forward_sweep", "hvp_sweep"]


def forward_sweep(
    acts: Sequence, pre_activation: Callable[[int, list[Tensor]], Tensor], order: int = 2
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """(pre-activations, outputs, s'(pre), s''(pre)) per layer; ``pre_activation(k, zs)``
    computes layer k's input from x and the outputs ``zs`` of the layers before it."""
    pres: list[Tensor] = []
    zs: list[Tensor] = []
    s1: list[Tensor] = []
    s2: list[Tensor] = []
    for k, act in enumerate(acts):
        pre = pre_activation(k, zs)
        z, d1, d2 = act.all(pre, order)
        pres.append(pre)
        zs.append(z)
        s1.append(d1)
        s2.append(d2)
    return pres, zs, s1, s2


def hvp_sweep(
    s1: Sequence[Tensor],
    c2: Sequence[Tensor],
    tangent: Callable[[int, list[Tensor]], Tensor],
    adjoint: Callable[[int, Tensor, list[Tensor | None]], Tensor],
) -> Tensor:
    """H v. ``tangent(k, jt)`` gives t_k = U_k v from ``jt`` = [s'_j t_j of earlier layers];
    ``adjoint(k, r_k, acc)`` returns the direct-input part of U_k^T r_k and adds the part
    that flows to earlier layers' outputs into ``acc`` (one entry per layer). ``s1`` are the
    layers' s', ``c2`` their c_k s''."""
    depth = len(s1)
    t: list[Tensor] = []
    jt: list[Tensor] = []
    for k in range(depth):
        tk = tangent(k, jt)
        t.append(tk)
        jt.append(s1[k] * tk)
    acc: list[Tensor | None] = [None] * depth
    out: Tensor | None = None
    for k in reversed(range(depth)):
        rk, ak = c2[k] * t[k], acc[k]
        if ak is not None:
            rk = rk + s1[k] * ak
        term = adjoint(k, rk, acc)
        out = term if out is None else out + term
    if out is None:
        raise ValueError("a convex network has at least one layer")
    return out
