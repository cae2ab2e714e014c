r"""Batched per-sample convex minimisation: min_x phi_i(x) for n independent problems at once.

Used to invert a CP-Flow block (Algorithm 1): x = argmin F(x) - y^T x, whose gradient is
f(x) - y. Each sample has its own L-BFGS memory, its own strong-Wolfe line search and its own
stopping test ``max|grad phi_i| <= tol``; converged samples leave the active set, so the cost
follows the hardest samples only. A damped Newton variant (exact Hessian) is offered beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SolveResult", "minimize_batched", "strong_wolfe_batched"]

#: fg(x, idx) -> (phi (k,), grad (k, d)) for the samples idx (k,) at points x (k, d)
ValueGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
#: hess(x, idx) -> (k, d, d)
Hessian = Callable[[Tensor, Tensor], Tensor]


@dataclass
class SolveResult:
    """Minimiser x (n, d), final max|grad| (n,), converged flags (n,), iterations (n,)."""

    x: Tensor
    grad_inf: Tensor
    converged: Tensor
    iterations: Tensor


def _cubic_min(a1, f1, g1, a2, f2, g2, lo_bound, hi_bound):
    """Minimiser of the cubic through two points with slopes, clamped into [lo, hi]."""
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (a1 - a2)
    d2sq = d1 * d1 - g1 * g2
    d2 = torch.sqrt(d2sq.clamp_min(0.0)) * torch.sign(a2 - a1)
    amin = a2 - (a2 - a1) * (g2 + d2 - d1) / (g2 - g1 + 2.0 * d2)
    mid = 0.5 * (lo_bound + hi_bound)
    amin = torch.where(torch.isfinite(amin) & (d2sq >= 0), amin, mid)
    return torch.minimum(torch.maximum(amin, lo_bound), hi_bound)


def strong_wolfe_batched(
    fg: ValueGrad,
    idx: Tensor,
    x: Tensor,
    direction: Tensor,
    f0: Tensor,
    g0: Tensor,
    step0: Tensor,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_ls: int = 25,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-sample strong-Wolfe line search (bracketing + cubic zoom, Nocedal & Wright 3.5).

    Returns (step, x_new, f_new, g_new, ok). Function-value comparisons allow a slack of a few
    ulps of |f0|: near the optimum, decreases fall below round-off and the search must then be
    steered by directional derivatives (which stay accurate), as in approximate-Wolfe searches.
    A sample whose search fails gets step 0 and ok False.
    """
    k = x.shape[0]
    dtype = x.dtype
    eps = torch.finfo(dtype).eps
    gd0 = (g0 * direction).sum(-1)
    slack = 10.0 * eps * (f0.abs() + 1.0)
    zero = torch.zeros_like(f0)
    a = step0.clone()
    a_prev, f_prev, gd_prev = zero.clone(), f0.clone(), gd0.clone()
    g_prev = g0.clone()
    lo_a, lo_f, lo_gd, lo_g = zero.clone(), f0.clone(), gd0.clone(), g0.clone()
    hi_a, hi_f, hi_gd = zero.clone(), f0.clone(), gd0.clone()
    stage = torch.zeros(k, dtype=torch.long, device=x.device)  # 0 bracket, 1 zoom, 2 done
    out_a, out_f, out_g = zero.clone(), f0.clone(), g0.clone()
    first = torch.ones(k, dtype=torch.bool, device=x.device)
    for _ in range(max_ls):
        live = (stage < 2).nonzero().squeeze(1)
        if live.numel() == 0:
            break
        al = a[live]
        fl, gl = fg(x[live] + al.unsqueeze(-1) * direction[live], idx[live])
        fa = torch.full_like(f0, float("nan"))
        fa[live] = fl
        ga = torch.zeros_like(g0)
        ga[live] = gl
        gda = (ga * direction).sum(-1)
        is_live = torch.zeros(k, dtype=torch.bool, device=x.device)
        is_live[live] = True
        armijo_bad = (fa > f0 + c1 * a * gd0 + slack) | ~torch.isfinite(fa)
        curv = gda.abs() <= -c2 * gd0

        # --- bracketing phase
        B = is_live & (stage == 0)
        c_up = armijo_bad | (~first & (fa >= f_prev + slack))
        zA = B & c_up
        doneB = B & ~c_up & curv
        zB = B & ~c_up & ~curv & (gda >= 0)
        ext = B & ~c_up & ~curv & (gda < 0)
        # --- zoom phase
        Z = is_live & (stage == 1)
        z_up = armijo_bad | (fa >= lo_f + slack)
        Z1 = Z & z_up
        Z2 = Z & ~z_up & curv
        Z3 = Z & ~z_up & ~curv
        flip = Z3 & (gda * (hi_a - lo_a) >= 0)

        done = doneB | Z2
        out_a = torch.where(done, a, out_a)
        out_f = torch.where(done, fa, out_f)
        out_g = torch.where(done.unsqueeze(-1), ga, out_g)

        # hi updates: zA -> cur; zB -> prev; Z1 -> cur; flip -> lo
        new_hi_a = torch.where(zA | Z1, a, torch.where(zB, a_prev, torch.where(flip, lo_a, hi_a)))
        new_hi_f = torch.where(zA | Z1, fa, torch.where(zB, f_prev, torch.where(flip, lo_f, hi_f)))
        new_hi_gd = torch.where(
            zA | Z1, gda, torch.where(zB, gd_prev, torch.where(flip, lo_gd, hi_gd))
        )
        # lo updates: zA -> prev; zB -> cur; Z3 -> cur
        set_cur = zB | Z3
        lo_a = torch.where(set_cur, a, torch.where(zA, a_prev, lo_a))
        lo_f = torch.where(set_cur, fa, torch.where(zA, f_prev, lo_f))
        lo_gd = torch.where(set_cur, gda, torch.where(zA, gd_prev, lo_gd))
        lo_g = torch.where(set_cur.unsqueeze(-1), ga, torch.where(zA.unsqueeze(-1), g_prev, lo_g))
        hi_a, hi_f, hi_gd = new_hi_a, new_hi_f, new_hi_gd

        # extrapolation
        a_prev = torch.where(ext, a, a_prev)
        f_prev = torch.where(ext, fa, f_prev)
        gd_prev = torch.where(ext, gda, gd_prev)
        g_prev = torch.where(ext.unsqueeze(-1), ga, g_prev)
        first = first & ~B

        stage = torch.where(done, torch.full_like(stage, 2), stage)
        stage = torch.where(zA | zB, torch.ones_like(stage), stage)
        zoom = stage == 1
        width = (hi_a - lo_a).abs()
        tiny_w = zoom & (width <= 1e-12 * torch.maximum(lo_a.abs(), hi_a.abs()).clamp_min(1e-12))
        # a collapsed bracket: accept lo (it satisfies sufficient decrease) if it moved
        take_lo = tiny_w
        out_a = torch.where(take_lo, lo_a, out_a)
        out_f = torch.where(take_lo, lo_f, out_f)
        out_g = torch.where(take_lo.unsqueeze(-1), lo_g, out_g)
        stage = torch.where(take_lo, torch.full_like(stage, 2), stage)
        zoom = stage == 1

        lo_b = torch.minimum(lo_a, hi_a)
        hi_b = torch.maximum(lo_a, hi_a)
        pad = 0.1 * (hi_b - lo_b)
        a_zoom = _cubic_min(lo_a, lo_f, lo_gd, hi_a, hi_f, hi_gd, lo_b + pad, hi_b - pad)
        a_ext = torch.minimum(a * 4.0, torch.full_like(a, 1e10))
        a = torch.where(zoom, a_zoom, torch.where(ext, a_ext, a))

    # searches that ran out of trials: fall back on the best Armijo point found
    left = stage < 2
    out_a = torch.where(left, lo_a, out_a)
    out_f = torch.where(left, lo_f, out_f)
    out_g = torch.where(left.unsqueeze(-1), lo_g, out_g)
    ok = out_a > 0
    x_new = x + out_a.unsqueeze(-1) * direction
    return out_a, x_new, out_f, out_g, ok


def _two_loop(g: Tensor, S: Tensor, Y: Tensor, rho: Tensor, gamma: Tensor, order: list[int]):
    """Batched L-BFGS two-loop recursion; slots with rho == 0 are inert."""
    q = g.clone()
    alphas = []
    for i in order:  # newest first
        a = rho[:, i] * (S[:, i] * q).sum(-1)
        q = q - a.unsqueeze(-1) * Y[:, i]
        alphas.append(a)
    r = gamma.unsqueeze(-1) * q
    for i, a in zip(reversed(order), reversed(alphas), strict=True):
        b = rho[:, i] * (Y[:, i] * r).sum(-1)
        r = r + (a - b).unsqueeze(-1) * S[:, i]
    return r


@torch.no_grad()
def minimize_batched(
    fg: ValueGrad,
    x0: Tensor,
    *,
    tol: float,
    max_iter: int,
    history: int = 10,
    method: str = "lbfgs",
    hessian: Hessian | None = None,
    max_failures: int = 3,
) -> SolveResult:
    """Minimise n independent smooth strongly convex problems, each to max|grad| <= tol."""
    if method not in ("lbfgs", "newton"):
        raise ValueError(f"unknown solver {method!r}")
    if method == "newton" and hessian is None:
        raise ValueError("newton needs a hessian function")
    n, d = x0.shape
    dev = x0.device
    all_idx = torch.arange(n, device=dev)
    x = x0.clone()
    f, g = fg(x, all_idx)
    conv = g.abs().amax(-1) <= tol
    stalled = torch.zeros(n, dtype=torch.bool, device=dev)
    fails = torch.zeros(n, dtype=torch.long, device=dev)
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    # no-progress guard: a sample whose best |grad| has not improved by 1% in `patience`
    # iterations (round-off floor reached) stops and stays flagged unconverged
    best = g.abs().amax(-1)
    since = torch.zeros(n, dtype=torch.long, device=dev)
    patience = 30
    m = history
    if method == "lbfgs":
        S = x.new_zeros(n, m, d)
        Y = x.new_zeros(n, m, d)
        rho = x.new_zeros(n, m)
        gamma = x.new_ones(n)
    for it in range(max_iter):
        act = (~conv & ~stalled).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        xa, fa, ga = x[act], f[act], g[act]
        if method == "lbfgs":
            order = [(it - 1 - j) % m for j in range(min(it, m))]
            direction = -_two_loop(ga, S[act], Y[act], rho[act], gamma[act], order)
        else:
            H = hessian(xa, act)
            L, info = torch.linalg.cholesky_ex(H)
            direction = -torch.cholesky_solve(ga.unsqueeze(-1), L).squeeze(-1)
            direction = torch.where((info != 0).unsqueeze(-1), -ga, direction)
        gd = (ga * direction).sum(-1)
        bad = ~(gd < 0) | ~torch.isfinite(gd)
        direction = torch.where(bad.unsqueeze(-1), -ga, direction)
        step0 = torch.ones_like(fa)
        _, xn, fn, gn, ok = strong_wolfe_batched(fg, act, xa, direction, fa, ga, step0)
        if method == "lbfgs":
            s = xn - xa
            yv = gn - ga
            sy = (s * yv).sum(-1)
            yy = (yv * yv).sum(-1)
            ss = (s * s).sum(-1)
            valid = ok & (sy > 1e-10 * torch.sqrt(ss * yy)) & (yy > 0)
            slot = it % m
            Sa, Ya, ra = S[act], Y[act], rho[act]
            Sa[:, slot] = torch.where(valid.unsqueeze(-1), s, torch.zeros_like(s))
            Ya[:, slot] = torch.where(valid.unsqueeze(-1), yv, torch.zeros_like(yv))
            ra[:, slot] = torch.where(
                valid, 1.0 / torch.where(valid, sy, torch.ones_like(sy)), 0.0
            )
            # a failed search discards the memory: restart from steepest descent
            ra = torch.where(ok.unsqueeze(-1), ra, torch.zeros_like(ra))
            S[act], Y[act], rho[act] = Sa, Ya, ra
            ga_new = torch.where(valid, sy / torch.where(valid, yy, torch.ones_like(yy)), 1.0)
            gamma[act] = torch.where(valid, ga_new, torch.where(ok, gamma[act], 1.0))
        x[act] = torch.where(ok.unsqueeze(-1), xn, xa)
        f[act] = torch.where(ok, fn, fa)
        g[act] = torch.where(ok.unsqueeze(-1), gn, ga)
        gi = g[act].abs().amax(-1)
        conv[act] = gi <= tol
        iters[act] += 1
        improved = gi < 0.99 * best[act]
        best[act] = torch.minimum(best[act], gi)
        since[act] = torch.where(improved, torch.zeros_like(since[act]), since[act] + 1)
        fa_count = torch.where(ok, torch.zeros_like(fails[act]), fails[act] + 1)
        fails[act] = fa_count
        stalled[act] = (fa_count >= max_failures) | (since[act] >= patience)
    return SolveResult(x, g.abs().amax(-1), conv, iters)
