"""Conditional toy: learned p(x | c) vs the true conditional density at three context values.

For each context value c, fresh x ~ p(x | c) are scored by the model (exact log-det) and by the
true density; the gap NLL_model - NLL_true on the same points estimates KL(p(.|c) || q(.|c))
with little Monte-Carlo noise, and H(X | c) (quadrature / closed form) is printed beside it.

Usage: python bench/conditional_toy.py --dataset mog1d [--iterations 1500] [--seed 0]
Prints one JSON object; writes it and a figure of the conditional curves to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cpflow.conditional import ConditionalFlowConfig
from training.conditional import (
    ConditionalTrainConfig,
    conditional_entropy,
    conditional_toy_log_density,
    make_conditional_toy,
    sample_conditional_toy,
    train_conditional,
)

RESULTS = Path(__file__).resolve().parent / "results"
CONTEXTS = {"mog1d": (0.1, 0.5, 0.9), "banana": (-0.8, 0.0, 0.8)}


def _plot(flow, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if name == "mog1d":
        grid = np.linspace(-4, 4, 801)
        fig, ax = plt.subplots(figsize=(6, 3.6))
        cmap = plt.get_cmap("viridis")
        for i, c in enumerate((0.05, 0.25, 0.5, 0.75, 0.95)):
            col = cmap(i / 4)
            true = np.exp(conditional_toy_log_density(name, grid[:, None], c))
            with torch.no_grad():
                lp = flow.log_prob(torch.as_tensor(grid[:, None]).float(), torch.tensor([[c]]))
            ax.plot(grid, np.exp(lp.numpy()), color=col, lw=2, label=f"model c={c}")
            ax.plot(grid, true, color=col, lw=1, ls="--")
        ax.set_xlabel("x")
        ax.set_ylabel("p(x | c)")
        ax.set_title("conditional CP-Flow (solid) vs true (dashed)")
        ax.legend(fontsize=7)
    else:
        g = np.linspace(-3, 3, 121)
        xx, yy = np.meshgrid(g, g)
        pts = np.stack([xx.ravel(), yy.ravel()], 1)
        cs = CONTEXTS[name]
        fig, axes = plt.subplots(2, len(cs), figsize=(3 * len(cs), 6))
        for j, c in enumerate(cs):
            with torch.no_grad():
                lp = flow.log_prob(torch.as_tensor(pts).float(), torch.tensor([[c]])).numpy()
            true = conditional_toy_log_density(name, pts, c)
            axes[0, j].imshow(np.exp(lp).reshape(xx.shape), origin="lower", extent=(-3, 3, -3, 3))
            axes[1, j].imshow(
                np.exp(true).reshape(xx.shape), origin="lower", extent=(-3, 3, -3, 3)
            )
            axes[0, j].set_title(f"model c={c}")
            axes[1, j].set_title(f"true c={c}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="mog1d", choices=sorted(CONTEXTS))
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--num-samples", type=int, default=20_000)
    p.add_argument("--eval-samples", type=int, default=20_000)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--icnn", default="augmented", choices=["augmented", "vanilla"])
    p.add_argument("--no-cut", action="store_true", help="keep the deep context path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    name = args.dataset
    splits = make_conditional_toy(name, args.num_samples, args.seed)
    cfg = ConditionalFlowConfig(
        dim=splits.dim,
        context_dim=1,
        blocks=args.blocks,
        hidden=args.hidden,
        depth=3,
        icnn=args.icnn,
        context_hidden=16,
        cut_context=not args.no_cut,
    )
    tcfg = ConditionalTrainConfig(iterations=args.iterations, validate_every=100, seed=args.seed)
    res = train_conditional(
        cfg, splits, tcfg, progress=lambda h: print(json.dumps(h), file=sys.stderr, flush=True)
    )
    rng = np.random.default_rng(10_000 + args.seed)
    rows = []
    for c in CONTEXTS[name]:
        x = sample_conditional_toy(name, np.full(args.eval_samples, c), rng)
        with torch.no_grad():
            lq = res.flow.log_prob(torch.as_tensor(x).float(), torch.tensor([[c]])).double()
        lq = lq.numpy()
        lp = conditional_toy_log_density(name, x, c)
        gap = lp - lq
        rows.append(
            {
                "context": c,
                "model_nll": float(-lq.mean()),
                "true_nll_same_points": float(-lp.mean()),
                "true_entropy": conditional_entropy(name, c),
                "gap_kl_estimate": float(gap.mean()),
                "gap_stderr": float(gap.std(ddof=1) / np.sqrt(len(gap))),
                "within_0.05": bool(abs(float(-lq.mean()) - conditional_entropy(name, c)) < 0.05),
            }
        )
    RESULTS.mkdir(exist_ok=True)
    tag = f"conditional_toy_{name}_{args.icnn}{'_nocut' if args.no_cut else ''}_s{args.seed}"
    _plot(res.flow, name, RESULTS / f"{tag}.png")
    out = {
        "dataset": name,
        "icnn": args.icnn,
        "cut_context": not args.no_cut,
        "seed": args.seed,
        "iterations": args.iterations,
        "best_val_nll": res.best_val_nll,
        "test_nll": res.test_nll,
        "wall_time_s": res.wall_time_s,
        "per_context": rows,
        "history": res.history,
        "figure": f"bench/results/{tag}.png",
        "command": "python " + " ".join(sys.argv),
    }
    (RESULTS / f"{tag}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
