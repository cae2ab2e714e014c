r"""Batched per-sample convex minimisation: min_x phi_i(x) for n independent problems at once.

Used to invert a CP-Flow block (Algorithm 1): x = argmin F(x) - y^T x, whose gradient is
f(x) - y. Each sample has its own L-BFGS memory, its own line search and its own stopping test
``max|grad phi_i| <= tol``; finished samples leave the working set, so the cost follows the
hardest samples only. A damped Newton variant (exact Hessian) is offered beside it.

The objectives are strongly convex, which keeps the iteration lean: s^T y > 0 for every step,
so no curvature condition is needed to keep the L-BFGS matrix positive definite, and the unit
step, accepted after one evaluation, is the common case. Only the samples whose unit step fails
the acceptance test enter a safeguarded secant search on the directional derivative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SolveResult", "line_search_batched", "minimize_batched"]

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


def _acceptable(f0, gd0, slack, a, fa, gda, c1: float, c2: float) -> Tensor:
    """Sufficient decrease (values compared with a round-off slack) and not far past the
    minimum along the line (phi'(a) <= c2 |phi'(0)|). Along a convex line phi'(a) <= 0 implies
    phi(a) < phi(0), so near the optimum, where value differences drown in round-off, the
    directional derivative (which stays accurate) still steers the test."""
    return torch.isfinite(fa) & (fa <= f0 + c1 * a * gd0 + slack) & (gda <= -c2 * gd0)


def line_search_batched(
    fg: ValueGrad,
    idx: Tensor,
    x: Tensor,
    direction: Tensor,
    f0: Tensor,
    g0: Tensor,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_ls: int = 25,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample line search from the unit step, for descent directions of convex functions.

    Every sample is evaluated once, at step 1. Those that fail the test keep a bracket
    [lo, hi] around the minimiser along the line (phi'(lo) < 0, and phi'(hi) > 0 or phi(hi)
    not finite) and try safeguarded secant steps on phi' inside it. Returns
    (step, x_new, f_new, g_new); a sample whose search fails returns its best point before the
    minimiser (step 0 if none: x, f, g unchanged).
    """
    eps = torch.finfo(x.dtype).eps
    gd0 = (g0 * direction).sum(-1)
    slack = 10.0 * eps * (f0.abs() + 1.0)
    xn = x + direction
    fn, gn = fg(xn, idx)
    gdn = (gn * direction).sum(-1)
    step = torch.ones_like(f0)
    bad = (~_acceptable(f0, gd0, slack, step, fn, gdn, c1, c2)).nonzero().squeeze(1)
    if bad.numel() == 0:
        return step, xn, fn, gn
    # the few that failed search on their own; (lo, lo_f, lo_g, lo_gd) is the best point
    # known before the minimiser, (hi, hi_gd) the nearest known point past it
    xb, db, fb0, gdb0, sb = x[bad], direction[bad], f0[bad], gd0[bad], slack[bad]
    lo, lo_f, lo_g, lo_gd = torch.zeros_like(fb0), fb0.clone(), g0[bad], gdb0.clone()
    hi, hi_gd = torch.ones_like(fb0), gdn[bad]
    live = torch.arange(bad.numel(), device=x.device)
    for _ in range(max_ls):
        a_lo, a_hi, d_lo, d_hi = lo[live], hi[live], lo_gd[live], hi_gd[live]
        w = a_hi - a_lo
        secant = a_lo + w * (-d_lo) / (d_hi - d_lo)
        trial = torch.where(
            torch.isfinite(d_hi) & (d_hi > d_lo),
            torch.minimum(torch.maximum(secant, a_lo + 0.1 * w), a_hi - 0.1 * w),
            a_lo + 0.25 * w,
        )
        ft, gt = fg(xb[live] + trial.unsqueeze(-1) * db[live], idx[bad[live]])
        gdt = (gt * db[live]).sum(-1)
        ok = _acceptable(fb0[live], gdb0[live], sb[live], trial, ft, gdt, c1, c2)
        past = ~ok & (~torch.isfinite(ft) | ~torch.isfinite(gdt) | (gdt > 0))
        before = ~ok & ~past
        # an accepted trial becomes lo and its search ends; otherwise the bracket shrinks
        to_lo = ok | before
        upd = live[to_lo]
        lo[upd], lo_f[upd], lo_g[upd], lo_gd[upd] = (
            trial[to_lo],
            ft[to_lo],
            gt[to_lo],
            gdt[to_lo],
        )
        hi[live[past]], hi_gd[live[past]] = trial[past], gdt[past]
        live = live[~ok]
        live = live[(hi[live] - lo[live]) > 1e-10 * hi[live]]  # a collapsed bracket ends it
        if live.numel() == 0:
            break
    step[bad] = lo
    xn[bad] = xb + lo.unsqueeze(-1) * db
    fn[bad], gn[bad] = lo_f, lo_g
    return step, xn, fn, gn


def _two_loop(g: Tensor, S: Tensor, Y: Tensor, rho: Tensor, gamma: Tensor, order: list[int]):
    """Batched L-BFGS two-loop recursion over slots (m, k, d); slots with rho == 0 are inert."""
    q = g.clone()
    alphas = []
    for i in order:  # newest first
        a = rho[i] * (S[i] * q).sum(-1)
        q -= a.unsqueeze(-1) * Y[i]
        alphas.append(a)
    r = gamma.unsqueeze(-1) * q
    for i, a in zip(reversed(order), reversed(alphas), strict=True):
        b = rho[i] * (Y[i] * r).sum(-1)
        r += (a - b).unsqueeze(-1) * S[i]
    return r


class _WorkingSet:
    """The unfinished samples' state, compacted when enough of them have finished."""

    def __init__(self, idx: Tensor, x: Tensor, f: Tensor, g: Tensor, m: int, lbfgs: bool):
        self.idx, self.x, self.f, self.g = idx, x, f, g
        k, d = x.shape
        self.iters = torch.zeros(k, dtype=torch.long, device=x.device)
        self.best = g.abs().amax(-1)
        self.since = torch.zeros_like(self.iters)
        self.fails = torch.zeros_like(self.iters)
        self.memory = (
            (x.new_zeros(m, k, d), x.new_zeros(m, k, d), x.new_zeros(m, k)) if lbfgs else None
        )
        self.gamma = x.new_ones(k)

    def direction(self, it: int, history: int, hessian: Hessian | None) -> Tensor:
        """The search direction at iteration ``it``: the L-BFGS two-loop recursion, or a
        Newton step (steepest descent where the Hessian's Cholesky factorisation fails)."""
        if self.memory is not None:
            S, Y, rho = self.memory
            order = [(it - 1 - j) % history for j in range(min(it, history))]
            return -_two_loop(self.g, S, Y, rho, self.gamma, order)
        if hessian is None:
            raise ValueError("newton needs a hessian function")
        L, info = torch.linalg.cholesky_ex(hessian(self.x, self.idx))
        direction = -torch.cholesky_solve(self.g.unsqueeze(-1), L).squeeze(-1)
        return torch.where((info != 0).unsqueeze(-1), -self.g, direction)

    def remember(self, slot: int, xn: Tensor, gn: Tensor, moved: Tensor, finished: Tensor) -> None:
        """Keep the step to (xn, gn) in L-BFGS memory ``slot`` (before x and g move there);
        nothing for Newton."""
        if self.memory is None:
            return
        S, Y, rho = self.memory
        s, yv = xn - self.x, gn - self.g
        sy, yy = (s * yv).sum(-1), (yv * yv).sum(-1)
        valid = moved & (sy > 0) & (yy > 0)
        S[slot] = s
        Y[slot] = yv
        rho[slot] = torch.where(valid, 1.0 / torch.where(valid, sy, 1.0), 0.0)
        # a failed search discards the memory: steepest descent next time
        rho.masked_fill_((~moved & ~finished).unsqueeze(0), 0.0)
        self.gamma = torch.where(
            valid, sy / torch.where(valid, yy, 1.0), torch.where(moved, self.gamma, 1.0)
        )

    def keep(self, rows: Tensor) -> None:
        for name in ("idx", "x", "f", "g", "iters", "best", "since", "fails", "gamma"):
            setattr(self, name, getattr(self, name)[rows])
        if self.memory is not None:
            S, Y, rho = self.memory
            self.memory = (S[:, rows], Y[:, rows], rho[:, rows])


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
    patience: int = 30,
) -> SolveResult:
    """Minimise n independent smooth strongly convex problems, each to max|grad| <= tol.

    A sample stops when it converges, after ``max_failures`` failed line searches in a row, or
    when its best max|grad| has not improved by 1% in ``patience`` iterations (the round-off
    floor); the last two stay flagged unconverged.
    """
    if method not in ("lbfgs", "newton"):
        raise ValueError(f"unknown solver {method!r}")
    if method == "newton" and hessian is None:
        raise ValueError("newton needs a hessian function")
    n = x0.shape[0]
    dev = x0.device
    out_x = x0.clone()
    f, g = fg(out_x, torch.arange(n, device=dev))
    out_g = g.abs().amax(-1)
    out_iters = torch.zeros(n, dtype=torch.long, device=dev)
    ws = _WorkingSet(torch.arange(n, device=dev), x0.clone(), f, g, history, method == "lbfgs")
    finished = out_g <= tol
    for it in range(max_iter):
        # retire finished samples once they are a quarter of the working set (compacting the
        # L-BFGS memory costs about as much as evaluating them a few more times)
        n_done = int(finished.sum())
        if n_done and (4 * n_done >= finished.numel() or n_done == finished.numel()):
            done = finished.nonzero().squeeze(1)
            out_x[ws.idx[done]] = ws.x[done]
            out_g[ws.idx[done]] = ws.g[done].abs().amax(-1)
            out_iters[ws.idx[done]] = ws.iters[done]
            rest = (~finished).nonzero().squeeze(1)
            ws.keep(rest)
            finished = finished[rest]
        if ws.idx.numel() == 0:
            break
        direction = ws.direction(it, history, hessian)
        gd = (ws.g * direction).sum(-1)
        bad = ~(gd < 0) | ~torch.isfinite(gd)
        direction = torch.where(bad.unsqueeze(-1), -ws.g, direction)
        # finished samples stay put: a zero direction is accepted at once and changes nothing
        direction = direction.masked_fill(finished.unsqueeze(-1), 0.0)
        step, xn, fn, gn = line_search_batched(fg, ws.idx, ws.x, direction, ws.f, ws.g)
        moved = (step > 0) & ~finished
        ws.remember(it % history, xn, gn, moved, finished)
        keep_g = finished.unsqueeze(-1)
        ws.x, ws.f, ws.g = xn, torch.where(finished, ws.f, fn), torch.where(keep_g, ws.g, gn)
        gi = ws.g.abs().amax(-1)
        ws.iters += (~finished).long()
        improved = gi < 0.99 * ws.best
        ws.best = torch.minimum(ws.best, gi)
        ws.since = torch.where(improved, 0, ws.since + 1)
        ws.fails = torch.where(moved | finished, 0, ws.fails + 1)
        finished = finished | (gi <= tol) | (ws.fails >= max_failures) | (ws.since >= patience)
    out_x[ws.idx] = ws.x
    out_g[ws.idx] = ws.g.abs().amax(-1)
    out_iters[ws.idx] = ws.iters
    return SolveResult(out_x, out_g, out_g <= tol, out_iters)
