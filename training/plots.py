"""Figures for a trained model, as PNG bytes for ``store.publish(plots=...)``.

2-D models get the paper's Fig. 1 views (data, learned density, samples, the first block's
convex potential, the mesh distorted by its gradient map, the encoding); image models a grid
of samples; conditional models with 1-D or 2-D data their density at three contexts; every
model gets a training curve and, given held-out rows (``training.diagnostics``), its
calibration (a QQ plot of |f(x)|^2 against chi-square) and a histogram of held-out
log-densities; models of rows a corner plot of samples against the held-out rows; OT runs get
transport cost against KL (Fig. 4).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection

from training.diagnostics import (
    Heldout,
    calibration_qq,
    chunk_rows,
    heldout_samples,
    heldout_scores,
    reference_tensor,
)

__all__ = [
    "CORNER_COLUMNS",
    "PNG_MAGIC",
    "calibration_figure",
    "context_slices_figure",
    "corner_figure",
    "density_figure",
    "heldout_figures",
    "make_plots",
    "ot_figure",
    "potential_figure",
    "score_histogram_figure",
    "training_curve",
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CORNER_COLUMNS = 6
"""Columns a corner plot shows at most (the first ones; its title says so)."""

_LOSS_TITLES = {
    "exact": "trained on the exact NLL",
    "surrogate": "trained on the surrogate loss (Algorithm 2)",
}


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _bounds(data: np.ndarray, pad: float = 0.15) -> tuple[float, float, float, float]:
    lo = np.quantile(data, 0.002, axis=0)
    hi = np.quantile(data, 0.998, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _grid(bounds: tuple[float, float, float, float], n: int) -> tuple[np.ndarray, ...]:
    xs = np.linspace(bounds[0], bounds[1], n)
    ys = np.linspace(bounds[2], bounds[3], n)
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], axis=1)


def _flow_tensor(flow: torch.nn.Module, arr: np.ndarray) -> torch.Tensor:
    ref = reference_tensor(flow)
    return torch.as_tensor(arr, dtype=ref.dtype, device=ref.device)


def _grid_chunk_rows(flow: Any, most: int = 4096) -> int:
    """Grid points scored at a time: what the evaluation memory budget allows, at most
    ``most``."""
    return min(most, chunk_rows(flow, "exact"))


def _log_prob_grid(flow: Any, pts: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
    out = []
    c = None if context is None else _flow_tensor(flow, np.atleast_2d(context))
    batch = _grid_chunk_rows(flow)
    for s in range(0, len(pts), batch):
        with torch.no_grad():
            lp = flow.log_prob(_flow_tensor(flow, pts[s : s + batch]), c, method="exact")
        out.append(lp.detach().double().cpu().numpy())
    return np.concatenate(out)


def density_figure(
    flow: Any,
    data: np.ndarray,
    *,
    n_samples: int = 1500,
    grid: int = 120,
    seed: int = 0,
    columns: Sequence[str] | None = None,
) -> bytes:
    """Data, learned density exp(log p) on a grid, and samples drawn from the flow (2-D),
    the axes named by ``columns`` when given."""
    data = np.asarray(data, dtype=np.float64)
    bounds = _bounds(data)
    gx, _, pts = _grid(bounds, grid)
    density = np.exp(_log_prob_grid(flow, pts)).reshape(gx.shape)
    gen = torch.Generator().manual_seed(seed)
    samples, info = flow.sample(n_samples, generator=gen)
    samples = samples.detach().double().cpu().numpy()
    residual = float(info.residual.max()) if hasattr(info, "residual") else float("nan")

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    shown = data[: min(len(data), 5000)]
    axes[0].hist2d(shown[:, 0], shown[:, 1], bins=100, range=[bounds[:2], bounds[2:]])
    axes[0].set_title("data")
    axes[1].imshow(density, origin="lower", extent=bounds, aspect="auto")
    axes[1].set_title("learned density")
    axes[2].hist2d(samples[:, 0], samples[:, 1], bins=100, range=[bounds[:2], bounds[2:]])
    axes[2].set_title(f"samples (max residual {residual:.1e})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        if columns:
            ax.set_xlabel(columns[0])
            ax.set_ylabel(columns[1])
    return _png(fig)


def _first_block_view(
    flow: Any,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Any] | None:
    """(raw x -> the first block's input, the first block) when the flow exposes its layers."""
    layers = getattr(flow, "layers", None)
    stand = getattr(flow, "standardization", None)
    if layers is None or stand is None:
        return None
    index = next((i for i, m in enumerate(layers) if hasattr(m, "potential")), None)
    if index is None:
        return None

    def pre(x: torch.Tensor) -> torch.Tensor:
        h = stand(x)
        for layer in list(layers)[:index]:
            h = layer(h)
        return h

    return pre, layers[index]


def _block_potential(block: Any, u: torch.Tensor) -> torch.Tensor:
    if hasattr(block, "potential"):
        return block.potential(u)
    raise AttributeError("block has no potential()")


def _block_map(block: Any, u: torch.Tensor) -> torch.Tensor:
    if hasattr(block, "gradient_map"):
        return block.gradient_map(u)
    return block(u)


def potential_figure(flow: Any, data: np.ndarray, *, grid: int = 120, lines: int = 25) -> bytes:
    """Fig. 1 (b-d): the first block's convex potential, the mesh its gradient map distorts,
    and the encoding z = transform(x) of the data coloured by angle (2-D)."""
    data = np.asarray(data, dtype=np.float64)
    bounds = _bounds(data)
    view = _first_block_view(flow)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))

    if view is not None:
        pre, block = view
        gx, gy, pts = _grid(bounds, grid)
        with torch.no_grad():
            u = pre(_flow_tensor(flow, pts))
            pot = _block_potential(block, u).detach().double().cpu().numpy().reshape(gx.shape)
        axes[0].contour(gx, gy, pot, levels=25)
        axes[0].set_title("potential F (first block)")

        def mapped(pts_: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = _block_map(block, pre(_flow_tensor(flow, pts_)))
            return out.detach().double().cpu().numpy()

        mesh_title = "mesh under grad F (first block)"
    else:
        axes[0].text(0.5, 0.5, "potential not exposed by this flow", ha="center")

        def mapped(pts_: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = flow.transform(_flow_tensor(flow, pts_))
            return out.detach().double().cpu().numpy()

        mesh_title = "mesh under the flow's transform"

    t = np.linspace(0.0, 1.0, 100)
    segments = []
    for k in np.linspace(0.0, 1.0, lines):
        x0 = bounds[0] + k * (bounds[1] - bounds[0])
        y0 = bounds[2] + k * (bounds[3] - bounds[2])
        segments.append(
            np.stack([np.full_like(t, x0), bounds[2] + t * (bounds[3] - bounds[2])], 1)
        )
        segments.append(
            np.stack([bounds[0] + t * (bounds[1] - bounds[0]), np.full_like(t, y0)], 1)
        )
    moved = mapped(np.concatenate(segments)).reshape(len(segments), len(t), 2)
    axes[1].add_collection(LineCollection(list(moved), linewidths=0.5, colors="k"))
    axes[1].autoscale()
    axes[1].set_title(mesh_title)
    axes[1].set_aspect("equal", adjustable="datalim")

    shown = data[: min(len(data), 3000)]
    with torch.no_grad():
        z = flow.transform(_flow_tensor(flow, shown)).detach().double().cpu().numpy()
    centred = shown - shown.mean(axis=0)
    angle = np.arctan2(centred[:, 1], centred[:, 0])
    axes[2].scatter(z[:, 0], z[:, 1], c=angle, s=2, cmap="hsv")
    axes[2].set_title("encoding z = f(x)")
    axes[2].set_aspect("equal", adjustable="datalim")
    return _png(fig)


def _curve_points(
    history: Sequence[Mapping[str, Any]], key: str
) -> tuple[list[float], list[float]]:
    picked = [h for h in history if h.get(key) is not None]
    return [h["iteration"] for h in picked], [float(h[key]) for h in picked]


def _robust_top(values: Sequence[float]) -> float | None:
    """An upper y limit that keeps a first, far higher point (an untrained model's NLL) from
    flattening the rest of the curve: the 90th percentile plus half the spread below it."""
    if len(values) < 10:
        return None
    lo, top = float(np.min(values)), float(np.quantile(values, 0.9))
    return top + 0.5 * (top - lo) if max(values) > top + 0.5 * (top - lo) else None


def training_curve(
    history: Sequence[Mapping[str, Any]],
    *,
    loss: str | None = None,
    best_iteration: int | None = None,
) -> bytes:
    """Train and validation NLL per iteration on one axis, titled with the training loss
    (``exact`` or ``surrogate``), the kept (best validation) iteration marked.

    The train NLL is the history's ``train_nll`` (fixed train rows scored like the validation
    rows); runs recorded without it show, when trained on the exact NLL, the mean batch NLL
    since the previous validation (a surrogate loss's value is not an NLL, so not drawn)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    its, val = _curve_points(history, "val_nll")
    err = [h.get("val_nll_stderr") or 0.0 for h in history if h.get("val_nll") is not None]
    ax.errorbar(its, val, yerr=err if any(err) else None, marker="o", ms=3, label="validation NLL")
    t_its, train = _curve_points(history, "train_nll")
    train_label = "train NLL"
    if not train and loss == "exact":
        t_its, train = _curve_points(history, "surrogate")
        train_label = "train NLL (mean batch NLL since the previous validation)"
    if train:
        ax.plot(t_its, train, marker=".", color="tab:orange", label=train_label)
    if val:
        kept = best_iteration if best_iteration in its else its[int(np.argmin(val))]
        ax.axvline(kept, color="tab:green", ls="--", lw=1)
        ax.plot([kept], [val[its.index(kept)]], "*", ms=14, color="tab:green",
                label=f"kept: iteration {kept}")  # fmt: skip
    top = _robust_top(val + train)
    if top is not None:
        ax.set_ylim(top=top)
    ax.set_xlabel("iteration")
    ax.set_ylabel("NLL (nats per row)")
    ax.set_title(f"training curve: {_LOSS_TITLES.get(loss or '', 'training loss not recorded')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _view(columns: np.ndarray, pad: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the 0.5%-99.5% quantile range padded by ``pad`` of its span: a view that
    far outliers do not stretch."""
    lo = np.quantile(columns, 0.005, axis=0)
    hi = np.quantile(columns, 0.995, axis=0)
    span = np.maximum(hi - lo, 1e-9)
    return lo - pad * span, hi + pad * span


def corner_figure(
    heldout: np.ndarray,
    samples: np.ndarray,
    *,
    split: str = "test",
    most_columns: int = CORNER_COLUMNS,
    columns: Sequence[str] | None = None,
) -> bytes:
    """Samples against held-out rows over the first ``most_columns`` columns: pairwise
    scatters below the diagonal, both marginals' histograms on it, the view the held-out
    rows' robust quantile range; axes named by ``columns`` (x1..xd without)."""
    dim = heldout.shape[1]
    names = list(columns) if columns is not None else [f"x{i + 1}" for i in range(dim)]
    k = min(dim, most_columns)
    data, drawn = heldout[:, :k], samples[:, :k]
    lo, hi = _view(data)
    size = max(1.9 * k, 4.0)
    fig, axes = plt.subplots(k, k, figsize=(size, size), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                bins = np.linspace(lo[i], hi[i], 31)
                ax.hist(data[:, i], bins=bins, density=True, alpha=0.5, label="held-out")
                ax.hist(drawn[:, i], bins=bins, density=True, histtype="step", lw=1.5,
                        color="tab:orange", label="samples")  # fmt: skip
                ax.set_yticks([])
            else:
                ax.scatter(data[:, j], data[:, i], s=2, alpha=0.4, label="held-out")
                ax.scatter(drawn[:, j], drawn[:, i], s=2, alpha=0.4, color="tab:orange",
                           label="samples")  # fmt: skip
                ax.set_ylim(lo[i], hi[i])
            ax.set_xlim(lo[j], hi[j])
            ax.tick_params(labelsize=7)
            if i == k - 1:
                ax.set_xlabel(names[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
            elif i != j:
                ax.set_yticklabels([])
    shown = f"first {k} of {dim} columns" if k < dim else f"{dim} columns"
    fig.suptitle(
        f"samples (orange, {len(drawn)}) against held-out {split} rows (blue, {len(data)}): "
        f"{shown}",
        fontsize=9,
    )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    return _png(fig)


def calibration_figure(sq_norms: np.ndarray, dim: int, *, split: str = "test") -> bytes:
    """QQ plot of held-out |f(x)|^2 against chi-square with ``dim`` degrees of freedom."""
    expected, observed = calibration_qq(sq_norms, dim)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(expected, observed, ".", ms=3, label=f"{len(observed)} held-out {split} rows")
    top = float(np.quantile(expected, 0.999))
    ax.plot([0, top], [0, top], color="tab:red", lw=1, label="calibrated (y = x)")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, max(top, float(np.quantile(observed, 0.99))) * 1.05)
    ax.set_xlabel(f"chi-square quantile, {dim} degrees of freedom")
    ax.set_ylabel("|f(x)|² of held-out rows, sorted")
    ax.set_title(
        f"calibration: mean |f(x)|² {float(np.mean(observed)):.3g} (calibrated: {dim})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def score_histogram_figure(
    log_prob: np.ndarray, *, split: str = "test", method: str = "exact"
) -> bytes:
    """Histogram of held-out log-densities, the mean (minus the NLL) marked; rows below the
    0.5% quantile are counted in the title, not drawn."""
    values = np.asarray(log_prob, dtype=np.float64)
    values = values[np.isfinite(values)]
    floor = float(np.quantile(values, 0.005))
    below = int(np.sum(values < floor))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.hist(values[values >= floor], bins=40, color="tab:blue", alpha=0.8)
    mean = float(values.mean())
    ax.axvline(mean, color="tab:red", ls="--", label=f"mean {mean:.4g} (NLL {-mean:.4g})")
    ax.set_xlabel(f"log p(x), nats ({method} log-det)")
    ax.set_ylabel("rows")
    note = (
        f"; {below} {'row' if below == 1 else 'rows'} below {floor:.3g} not drawn" if below else ""
    )
    ax.set_title(f"held-out log-density: {len(values)} {split} rows{note}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def heldout_figures(
    flow: Any, heldout: Heldout, columns: Sequence[str] | None = None
) -> dict[str, bytes]:
    """Calibration and held-out score histogram for any model; a corner plot of samples
    against the held-out rows (axes named by ``columns``) for models of rows (not images)."""
    scores = heldout_scores(flow, heldout)
    plots = {
        "calibration.png": calibration_figure(scores.sq_norms, int(flow.dim), split=heldout.split),
        "score_histogram.png": score_histogram_figure(
            scores.log_prob, split=heldout.split, method=scores.method
        ),
    }
    if getattr(flow.config, "image_shape", None) is None:
        samples = heldout_samples(flow, heldout)
        plots["corner.png"] = corner_figure(
            heldout.rows, samples, split=heldout.split, columns=columns
        )
    return plots


def ot_figure(
    curves: Mapping[str, Sequence[tuple[float, float]]], optimum: float, *, title: str = ""
) -> bytes:
    """Fig. 4: transport cost E|x - f(x)|^2 against KL(p_data || p_model) per model."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    styles = ["-", "--", "-.", ":"]
    max_kl = 0.0
    for i, (label, pts) in enumerate(curves.items()):
        arr = np.asarray(pts, dtype=float)
        if arr.size == 0:
            continue
        max_kl = max(max_kl, float(np.nanmax(arr[:, 0])))
        ax.plot(arr[:, 0], arr[:, 1], styles[i % 4], lw=2, marker=".", label=label)
    ax.axhline(optimum, color="red", ls=":", lw=2, label="optimal $W_2^2$")
    ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_xlabel(r"$D_{KL}(p\,\|\,q)$ (nats)")
    ax.set_ylabel("transport cost")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if not math.isfinite(max_kl):
        max_kl = 1.0
    kls = [k for pts in curves.values() for k, _ in pts if math.isfinite(k)]
    if kls:  # Monte Carlo KL can dip just below 0; do not let that stretch the axis
        ax.set_xlim(left=max(min(kls), -1e-3) - 1e-4, right=max_kl * 1.2 + 1e-3)
    fig.tight_layout()
    return _png(fig)


def context_slices_figure(
    flow: Any, data: np.ndarray, contexts: np.ndarray, *, grid: int = 120
) -> bytes:
    """p(x | c) at the 10%, 50% and 90% quantiles of the training contexts (1-D or 2-D x)."""
    data = np.asarray(data, dtype=np.float64)
    contexts = np.asarray(contexts, dtype=np.float64)
    picks = np.quantile(contexts, [0.1, 0.5, 0.9], axis=0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, c in zip(axes, picks, strict=True):
        label = ", ".join(f"{v:.2g}" for v in c)
        if data.shape[1] == 1:
            lo, hi = np.quantile(data[:, 0], [0.002, 0.998])
            xs = np.linspace(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo), 400)
            ax.plot(xs, np.exp(_log_prob_grid(flow, xs[:, None], c)))
            ax.set_xlabel("x")
        else:
            bounds = _bounds(data)
            gx, _, pts = _grid(bounds, grid)
            density = np.exp(_log_prob_grid(flow, pts, c)).reshape(gx.shape)
            ax.imshow(density, origin="lower", extent=bounds, aspect="auto")
        ax.set_title(f"p(x | c = {label})")
    fig.tight_layout()
    return _png(fig)


def image_samples_figure(flow: Any, *, n: int = 64, seed: int = 0) -> bytes:
    """A grid of samples of an image model, in the [0, 1] pixel range of its training data."""
    from training.images import sample_grid_png

    with torch.no_grad():
        images, _ = flow.sample(n, generator=torch.Generator().manual_seed(seed), images=True)
    return sample_grid_png(images)


def make_plots(
    flow: Any,
    train_data: np.ndarray,
    history: Sequence[Mapping[str, Any]],
    *,
    contexts: np.ndarray | None = None,
    heldout: Heldout | None = None,
    loss: str | None = None,
    best_iteration: int | None = None,
    columns: Sequence[str] | None = None,
) -> dict:
    """Every figure that applies to this model, keyed by file name (``loss`` and
    ``best_iteration`` title and mark the training curve; ``heldout`` rows add the held-out
    diagnostics; axes are named by the data's ``columns`` where a figure has data axes)."""
    plots = {
        "training_curve.png": training_curve(history, loss=loss, best_iteration=best_iteration)
    }
    dim = int(flow.dim)
    if getattr(flow.config, "image_shape", None) is not None:
        plots["samples.png"] = image_samples_figure(flow)
    elif contexts is not None:
        if dim <= 2:
            plots["context_slices.png"] = context_slices_figure(flow, train_data, contexts)
    elif dim == 2:
        plots["density.png"] = density_figure(flow, train_data, columns=columns)
        plots["potential.png"] = potential_figure(flow, train_data)
    if heldout is not None:
        plots.update(heldout_figures(flow, heldout, columns))
    return plots
