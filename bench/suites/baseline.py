"""A faithful re-implementation of the CP-Flow paper's published algorithms, as a baseline.

Same model, same weights: it reuses a :class:`cpflow.CPFlow`'s modules but differentiates the
scalar potential with autograd, as the paper's code does:

* exact log-det: f = grad F (create_graph), then the Hessian row by row with d sequential
  backward passes (create_graph=True), then slogdet;
* inversion: torch.optim.LBFGS over the whole batch's summed objective sum_i F(x_i) - y_i.x_i
  with a strong-Wolfe line search and tolerance_grad = tol, i.e. one batch-global stopping rule
  (max over the batch of |grad|);
* training step: Hessian-vector products by autograd, CG that stops only once every sample is
  below tolerance, surrogate stop_grad(z)^T H v back-propagated through a double backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cpflow import CPFlow
from cpflow.block import CPFlowBlock

__all__ = [
    "block_grad",
    "block_logdet_exact",
    "exact_nll_loss",
    "inverse_lbfgs",
    "log_prob_exact",
    "training_loss",
]

_LOG_2PI = math.log(2 * math.pi)


def block_grad(block: CPFlowBlock, x: Tensor, create_graph: bool = True) -> Tensor:
    """f(x) = grad F(x) by autograd (x must require grad)."""
    (f,) = torch.autograd.grad(block.potential(x).sum(), x, create_graph=create_graph)
    return f


def block_logdet_exact(block: CPFlowBlock, x: Tensor) -> tuple[Tensor, Tensor]:
    """(f(x), log det H(x)) with H built from d sequential backward passes (create_graph)."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        f = block_grad(block, x, create_graph=True)
        rows = []
        for i in range(x.shape[1]):
            (row,) = torch.autograd.grad(f[:, i].sum(), x, create_graph=True, retain_graph=True)
            rows.append(row)
        H = torch.stack(rows, dim=1)
        return f, torch.linalg.slogdet(H)[1]


def _const_logdet(flow: CPFlow) -> Tensor:
    return flow._const_logdet()


def _log_prob_through_hessians(flow: CPFlow, x: Tensor, h: Tensor) -> Tensor:
    """log p(x) from the standardised input h (requiring grad), block log-dets by
    :func:`block_logdet_exact`."""
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for layer in flow.layers:
        if isinstance(layer, CPFlowBlock):
            h, ld = block_logdet_exact(layer, h)
            total = total + ld
        else:
            h = layer(h)
    base = -0.5 * (h * h).sum(-1) - 0.5 * x.shape[1] * _LOG_2PI
    return base + total + _const_logdet(flow)


def log_prob_exact(flow: CPFlow, x: Tensor) -> Tensor:
    """log p(x) with the paper's exact Hessian (see module docstring)."""
    h = flow.standardization(x)
    with torch.enable_grad():
        return _log_prob_through_hessians(flow, x, h.detach().requires_grad_(True))


def exact_nll_loss(flow: CPFlow, x: Tensor) -> Tensor:
    """-mean log p(x) through the paper's exact Hessian (to back-propagate through log det)."""
    h = flow.standardization(x).requires_grad_(True)
    return -_log_prob_through_hessians(flow, x, h).mean()


def _invert_block(block: CPFlowBlock, y: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int]:
    y = y.detach()
    x = y.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4,
        tolerance_grad=tol,
        tolerance_change=0.0,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = block.potential(x).sum() - (x * y).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    n_iter = opt.state[opt._params[0]].get("n_iter", 0)
    return x.detach(), int(n_iter)


def inverse_lbfgs(
    flow: CPFlow, z: Tensor, tol: float, max_iter: int = 1000
) -> tuple[Tensor, Tensor, int]:
    """(x, residual (n,) = max|transform(x) - z|, max iterations over blocks)."""
    h = z
    iters = 0
    for layer in reversed(flow.layers):
        if isinstance(layer, CPFlowBlock):
            h, it = _invert_block(layer, h, tol, max_iter)
            iters = max(iters, it)
        else:
            with torch.no_grad():
                h = layer.inverse(h)
    x = flow.standardization.inverse(h)
    with torch.no_grad():
        res = (flow.transform(x) - z).abs().amax(-1)
    return x, res, iters


@torch.no_grad()
def _cg_all(hvp, v: Tensor, atol: float, max_iter: int) -> tuple[Tensor, int]:
    """Batched CG that keeps iterating every sample until ALL are below tolerance."""
    z = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = (r * r).sum(-1)
    it = 0
    while it < max_iter and bool((r.abs().amax(-1) > atol).any()):
        Hp = hvp(p)
        alpha = rs / (p * Hp).sum(-1)
        z = z + alpha[:, None] * p
        r = r - alpha[:, None] * Hp
        rs_new = (r * r).sum(-1)
        p = r + (rs_new / rs)[:, None] * p
        rs = rs_new
        it += 1
    return z, it


def training_loss(
    flow: CPFlow, x: Tensor, atol: float, generator: torch.Generator | None = None
) -> tuple[Tensor, int]:
    """The paper's surrogate loss with autograd HVPs and all-samples CG; (loss, max CG iters)."""
    h = flow.standardization(x)
    surrogate = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    cg_max = 0
    for layer in flow.layers:
        if not isinstance(layer, CPFlowBlock):
            h = layer(h)
            continue
        if not h.requires_grad:
            h = h.requires_grad_(True)
        f = block_grad(layer, h, create_graph=True)
        bits = torch.randint(0, 2, h.shape, generator=generator, device=h.device)
        v = (2 * bits - 1).to(h.dtype)

        def hvp(u: Tensor, f=f, h=h) -> Tensor:
            return torch.autograd.grad(f, h, u, retain_graph=True)[0]

        z, it = _cg_all(hvp, v, atol, x.shape[1])
        cg_max = max(cg_max, it)
        (Hv,) = torch.autograd.grad(f, h, v, create_graph=True)
        surrogate = surrogate + (z.detach() * Hv).sum(-1)
        h = f
    base = -0.5 * (h * h).sum(-1) - 0.5 * x.shape[1] * _LOG_2PI
    return -(base + surrogate + _const_logdet(flow)).mean(), cg_max
