"""Conditional flows: p(x | c) on toys against the true conditional density, and a VAE on
binarised digits with a Gaussian or an amortised CP-Flow posterior (paper §5.4 in small).

    python -m bench run conditional_toy --set dataset=mog1d [iterations=1500 seed=0]
    python -m bench run conditional_vae --set posterior=gaussian seed=0
    python -m bench run conditional_vae --set posterior=cpflow icnn=augmented seed=0
    python -m bench run conditional_vae --set posterior=cpflow icnn=vanilla seed=0
    python -m bench run conditional_vae_table --set dir=bench/results

(the setting of bench/reports/2026-11-29, chosen on val; seeds 0 1 2; defaults: latent 8,
iterations 3000, batch 64, lr 1e-3; flow: blocks 4, flow_hidden 64, depth 2, flow_lr 3e-3,
gain 0.1, flow_on z0; add out_dir=DIR, and splits=val,train while choosing settings so test
stays untouched)
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bench.registry import Option, benchmark
from bench.suites.common import threads_option

CONTEXTS = {"mog1d": (0.1, 0.5, 0.9), "banana": (-0.8, 0.0, 0.8)}
_LOG_2PI = math.log(2.0 * math.pi)
ICNN = Option("icnn", "str", "augmented", "ICNN kind", choices=("augmented", "vanilla"))
NO_CUT = Option("no_cut", "bool", False, "keep the deep context path in the PICNN")
SEED = Option("seed", "int", 0, "seed")


# -- library calls -------------------------------------------------------------------------------


def conditional_flow_config(**kw):
    from cpflow import FlowConfig

    return FlowConfig(**kw)


def build_conditional_flow(cfg):
    from cpflow import CPFlow

    return CPFlow(cfg)


def train_conditional_toy(cfg, splits, iterations: int, seed: int, log):
    """The one trainer, with the settings the README's conditional figures were measured
    with (Adam 5e-3, cosine, batch 256, CG surrogate, gradient clipping at 10)."""
    from training.config import TrainConfig
    from training.trainer import Trainer

    tcfg = TrainConfig(
        iterations=iterations, val_every=100, seed=seed, lr=5e-3, batch_size=256,
        loss="surrogate", schedule="cosine", grad_clip=10.0, val_max_points=None,
    )  # fmt: skip
    return Trainer(cfg, splits, tcfg).run()


def conditional_log_prob(flow, x: np.ndarray, c: float) -> np.ndarray:
    """log q(x | c) of rows x at one context value, float64."""
    with torch.no_grad():
        return flow.log_prob(torch.as_tensor(x).float(), torch.tensor([[c]])).double().numpy()


def flow_transform_and_logdet(flow, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
    return flow.transform_and_logdet(z, context)


def set_initial_gain(flow, gain: float) -> None:
    """Each block's softplus(w1) at initialisation."""
    from cpflow.layers import softplus_inv

    with torch.no_grad():
        for block in flow.blocks():
            block.w1.fill_(softplus_inv(gain))


# -- conditional toys ---------------------------------------------------------------------------


def _plot(flow, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.datasets.conditional import conditional_toy_log_density

    if name == "mog1d":
        grid = np.linspace(-4, 4, 801)
        fig, ax = plt.subplots(figsize=(6, 3.6))
        cmap = plt.get_cmap("viridis")
        for i, c in enumerate((0.05, 0.25, 0.5, 0.75, 0.95)):
            col = cmap(i / 4)
            true = np.exp(conditional_toy_log_density(name, grid[:, None], c))
            lp = conditional_log_prob(flow, grid[:, None], c)
            ax.plot(grid, np.exp(lp), color=col, lw=2, label=f"model c={c}")
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
            lp = conditional_log_prob(flow, pts, c)
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


@benchmark(
    "conditional_toy",
    "conditional toy: learned p(x | c) vs the true conditional density at three contexts",
    options=[
        Option("dataset", "str", "mog1d", "conditional toy", choices=tuple(sorted(CONTEXTS))),
        Option("iterations", "int", 1500, "training iterations"),
        Option("num_samples", "int", 20_000, "training rows"),
        Option("eval_samples", "int", 20_000, "fresh rows per context value"),
        Option("blocks", "int", 3, "blocks"),
        Option("hidden", "int", 32, "hidden units"),
        ICNN,
        NO_CUT,
        SEED,
        threads_option(1),
    ],
)
def conditional_toy(opts, ctx) -> dict:
    """For each context value c, fresh x ~ p(x | c) are scored by the model (exact log-det) and
    by the true density; the gap NLL_model - NLL_true on the same points estimates
    KL(p(.|c) || q(.|c)) with little Monte-Carlo noise, and H(X | c) (quadrature / closed
    form) is given beside it. Writes a figure of the conditional curves to the results dir."""
    from training.datasets.conditional import (
        conditional_entropy,
        conditional_toy_log_density,
        make_conditional_toy,
        sample_conditional_toy,
    )

    name = opts.dataset
    splits = make_conditional_toy(name, opts.num_samples, opts.seed)
    cfg = conditional_flow_config(
        dim=splits.dim,
        context_dim=1,
        blocks=opts.blocks,
        hidden=opts.hidden,
        depth=3,
        icnn=opts.icnn,
        context_hidden=16,
        cut_context=not opts.no_cut,
    )
    res = train_conditional_toy(cfg, splits, opts.iterations, opts.seed, ctx.log)
    rng = np.random.default_rng(10_000 + opts.seed)
    rows = []
    for c in CONTEXTS[name]:
        x = sample_conditional_toy(name, np.full(opts.eval_samples, c), rng)
        lq = conditional_log_prob(res.flow, x, c)
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
    tag = f"conditional_toy_{name}_{opts.icnn}{'_nocut' if opts.no_cut else ''}_s{opts.seed}"
    figure = ctx.results() / f"{tag}.png"
    _plot(res.flow, name, figure)
    return {
        "dataset": name,
        "icnn": opts.icnn,
        "cut_context": not opts.no_cut,
        "seed": opts.seed,
        "iterations": opts.iterations,
        "best_val_nll": res.metrics["val_nll"],
        "test_nll": res.metrics["test_nll"],
        "wall_time_s": res.wall_time_s,
        "per_context": rows,
        "history": res.history,
        "figure": ctx.relative(figure),
    }


# -- VAE with a CP-Flow posterior ---------------------------------------------------------------


def binarised_digits(val: int = 180) -> dict[str, np.ndarray]:
    """float32 0/1 arrays (n, 64), pixels > 8 of 16 on: a fixed 80/20 train/test split (the
    same as before validation existed), the last ``val`` training images held out as val."""
    from sklearn.datasets import load_digits

    x = (load_digits().data > 8).astype(np.float32)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    cut = int(0.8 * x.shape[0])
    train = x[perm[: cut - val]]
    return {"train": train, "val": x[perm[cut - val : cut]], "test": x[perm[cut:]]}


class VAE(nn.Module):
    """MLP encoder / Bernoulli decoder with an optional conditional CP-Flow posterior."""

    def __init__(self, latent: int, hidden: int, context: int, flow_cfg, flow_on: str = "z0"):
        super().__init__()
        self.latent, self.flow_on = latent, flow_on
        self.enc = nn.Sequential(
            nn.Linear(64, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU()
        )
        self.to_mu = nn.Linear(hidden, latent)
        self.to_logstd = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(
            nn.Linear(latent, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
            nn.Linear(hidden, 64),
        )  # fmt: skip
        # built last, so the shared modules start the same with and without a flow
        self.to_ctx = nn.Linear(hidden, context) if flow_cfg is not None else None
        self.flow = build_conditional_flow(flow_cfg) if flow_cfg is not None else None

    def flow_parameters(self) -> list[nn.Parameter]:
        """Parameters that exist only for the CP-Flow posterior (flow and context head)."""
        if self.flow is None:
            return []
        return [*self.flow.parameters(), *self.to_ctx.parameters()]

    def elbo(self, x: Tensor, samples: int = 1) -> Tensor:
        """Per-draw ELBO terms log p(x|z) + log p(z) - log q(z|x), shape (samples, n)."""
        e = self.enc(x)
        mu, logstd = self.to_mu(e), self.to_logstd(e).clamp(-8.0, 4.0)
        n, d = mu.shape
        eps = torch.randn(samples, n, d, dtype=x.dtype)
        z0 = (mu + logstd.exp() * eps).reshape(samples * n, d)
        logq = (-0.5 * eps * eps - logstd - 0.5 * _LOG_2PI).sum(-1).reshape(samples * n)
        if self.flow is None:
            z = z0
        elif self.flow_on == "z0":  # z = f(mu + sigma eps; h)
            h = torch.tanh(self.to_ctx(e)).repeat(samples, 1)
            z, logdet = flow_transform_and_logdet(self.flow, z0, h)
            logq = logq - logdet
        else:  # z = mu + sigma f(eps; h): the flow works at the scale of its N(0, I) base
            h = torch.tanh(self.to_ctx(e)).repeat(samples, 1)
            u, logdet = flow_transform_and_logdet(self.flow, eps.reshape(samples * n, d), h)
            z = (mu + logstd.exp() * u.reshape(samples, n, d)).reshape(samples * n, d)
            logq = logq - logdet
        logits = self.dec(z)
        xs = x.repeat(samples, 1)
        logpx = -F.binary_cross_entropy_with_logits(logits, xs, reduction="none").sum(-1)
        logpz = (-0.5 * z * z - 0.5 * _LOG_2PI).sum(-1)
        return (logpx + logpz - logq).reshape(samples, n)


@torch.no_grad()
def evaluate(model: VAE, x: Tensor, samples: int, iw: int) -> dict:
    """Negative ELBO (mean, stderr over images, per image) and the IWAE bound (iw > 0)."""
    model.eval()
    torch.manual_seed(12345)  # the same draws for every model (of one latent size) and split
    neg_elbo, iwae = [], []
    for i in range(0, x.shape[0], 60):
        xb = x[i : i + 60]
        neg_elbo.append(-model.elbo(xb, samples).mean(0))
        if iw:
            w = model.elbo(xb, iw)
            iwae.append(-(torch.logsumexp(w, 0) - math.log(iw)))
    ne = torch.cat(neg_elbo).double()
    out = {
        "images": ne.numel(),
        "neg_elbo": float(ne.mean()),
        "neg_elbo_stderr": float(ne.std() / math.sqrt(ne.numel())),
    }
    if iw:
        out["iwae_nll"] = float(torch.cat(iwae).double().mean())
    out["per_image_neg_elbo"] = [round(v, 4) for v in ne.tolist()]
    return out


@benchmark(
    "conditional_vae",
    "VAE on binarised digits: diagonal Gaussian posterior vs an amortised CP-Flow posterior",
    options=[
        Option("posterior", "str", "cpflow", "posterior", choices=("gaussian", "cpflow")),
        ICNN,
        NO_CUT,
        Option("latent", "int", 8, "latent size"),
        Option("hidden", "int", 128, "encoder / decoder hidden units"),
        Option("context", "int", 16, "context size the encoder gives the flow"),
        Option("context_hidden", "int", 32, "the PICNN's context hidden units"),
        Option("blocks", "int", 4, "flow blocks"),
        Option("flow_hidden", "int", 64, "flow hidden units"),
        Option("depth", "int", 2, "flow ICNN depth"),
        Option("flow_on", "str", "z0", "flow input", choices=("z0", "eps")),
        Option("gain", "float", 0.1, "initial softplus(w1) of each block"),
        Option("iterations", "int", 3000, "training iterations"),
        Option("batch", "int", 64, "batch size"),
        Option("lr", "float", 1e-3, "Adam lr"),
        Option("flow_lr", "float", 3e-3, "lr of the flow's parameters (unset: lr)"),
        Option("val", "int", 180, "training images held out for val"),
        Option("splits", "strs", ["val", "test"], "splits to evaluate (train = a subset)"),
        Option("eval_samples", "int", 50, "posterior draws per image for the ELBO"),
        Option("iw", "int", 200, "draws of the importance-weighted bound (0: none)"),
        SEED,
        threads_option(1),
        Option("tag", "str", "", "suffix of the run file's name"),
        Option("out_dir", "str", None, "folder of the run file (unset: the results dir)"),
    ],
)
def conditional_vae(opts, ctx) -> dict:
    """Both models share encoder, decoder, optimiser, iterations and batch; the only difference
    is the posterior (the flow's own parameters, and the encoder head that makes its context,
    may get their own learning rate, flow_lr, and each block's initial gain softplus(w1),
    gain). The shared modules are built first and the training draws re-seeded after the flow
    is built, so for one seed both posteriors start from the same encoder/decoder and see the
    same eps and batches. Reported: negative ELBO (nats per image) per split, averaged over
    eval_samples posterior draws per image, and an importance-weighted bound (IWAE, iw draws)
    as a check. The run file (with per-image values) is what conditional_vae_table pairs."""
    torch.manual_seed(opts.seed)
    data = {k: torch.as_tensor(v) for k, v in binarised_digits(opts.val).items()}
    train = data["train"]
    flow_cfg = None
    if opts.posterior == "cpflow":
        flow_cfg = conditional_flow_config(
            dim=opts.latent, context_dim=opts.context, blocks=opts.blocks,
            hidden=opts.flow_hidden, depth=opts.depth, icnn=opts.icnn,
            context_hidden=opts.context_hidden, cut_context=not opts.no_cut, actnorm=False,
        )  # fmt: skip
    model = VAE(opts.latent, opts.hidden, opts.context, flow_cfg, opts.flow_on)
    torch.manual_seed(opts.seed + 1000)  # the same training draws eps with and without a flow
    if model.flow is not None and opts.gain is not None:
        set_initial_gain(model.flow, opts.gain)
    flow_lr = opts.lr if opts.flow_lr is None else opts.flow_lr
    flow_ids = {id(q) for q in model.flow_parameters()}
    groups = [{"params": [q for q in model.parameters() if id(q) not in flow_ids]}]
    if flow_ids:
        groups.append({"params": model.flow_parameters(), "lr": flow_lr})
    opt = torch.optim.Adam(groups, lr=opts.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, opts.iterations)
    gen = torch.Generator().manual_seed(opts.seed)
    t0 = time.perf_counter()
    for it in range(1, opts.iterations + 1):
        model.train()
        idx = torch.randint(0, train.shape[0], (opts.batch,), generator=gen)
        loss = -model.elbo(train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 20.0)
        opt.step()
        sched.step()
        if it % 500 == 0:
            ctx.log({"it": it, "train_neg_elbo": float(loss)})
    train_time = time.perf_counter() - t0
    tag = opts.posterior if opts.posterior == "gaussian" else f"cpflow_{opts.icnn}"
    if opts.no_cut:
        tag += "_nocut"
    if opts.latent != 8:
        tag += f"_z{opts.latent}"
    flow_info = None
    if flow_cfg is not None:
        flow_info = {
            "blocks": opts.blocks, "hidden": opts.flow_hidden, "depth": opts.depth,
            "icnn": opts.icnn, "context": opts.context, "context_hidden": opts.context_hidden,
            "cut_context": not opts.no_cut, "flow_lr": flow_lr, "gain": opts.gain,
            "flow_on": opts.flow_on,
        }  # fmt: skip
    out = {
        "posterior": tag,
        "seed": opts.seed,
        "latent": opts.latent,
        "iterations": opts.iterations,
        # runs with equal "setting" differ only in the posterior and may be paired
        "setting": f"z{opts.latent}_h{opts.hidden}_it{opts.iterations}_b{opts.batch}"
        f"_lr{opts.lr:g}_val{opts.val}",
        "flow": flow_info,
        "parameters": sum(q.numel() for q in model.parameters()),
        "train_time_s": train_time,
    }
    for split in opts.splits:
        x = data[split][:360] if split == "train" else data[split]
        out[split] = evaluate(model, x, opts.eval_samples, opts.iw)
    out_dir = Path(opts.out_dir) if opts.out_dir else ctx.results()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"conditional_vae_{tag}{opts.tag}_s{opts.seed}.json"
    path.write_text(json.dumps(out, indent=1))
    brief = {k: v for k, v in out.items() if k not in ("val", "test", "train")}
    for split in opts.splits:
        brief[split] = {k: v for k, v in out[split].items() if k != "per_image_neg_elbo"}
    brief["run_file"] = ctx.relative(path)
    return brief


# -- table of VAE runs --------------------------------------------------------------------------


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean, stderr) over images of a_i - b_i."""
    if len(a) != len(b):
        raise ValueError("runs evaluated different images")
    d = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


def load_vae_runs(directory: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(directory.glob("conditional_vae_*.json")):
        d = json.loads(path.read_text())
        if "seed" not in d or "posterior" not in d:
            continue  # e.g. a table written next to the runs
        name = re.sub(r"_s\d+$", "", path.stem).removeprefix("conditional_vae_")
        runs.setdefault(name, {})[d["seed"]] = d
    return runs


def vae_table(runs: dict[str, dict[int, dict]], split: str) -> dict:
    gauss: dict[tuple[str, int], dict] = {}
    for by_seed in runs.values():
        for seed, d in by_seed.items():
            if d["posterior"].startswith("gaussian") and split in d:
                gauss.setdefault((d.get("setting", ""), seed), d)
    table = {}
    for name, by_seed in sorted(runs.items()):
        rows = {}
        for seed, d in sorted(by_seed.items()):
            if split not in d:
                continue
            r = d[split]
            row = {"neg_elbo": round(r["neg_elbo"], 3), "stderr": round(r["neg_elbo_stderr"], 3)}
            if "iwae_nll" in r:
                row["iwae_nll"] = round(r["iwae_nll"], 3)
            ref = gauss.get((d.get("setting", ""), seed))
            if not d["posterior"].startswith("gaussian") and ref is not None:
                if "per_image_neg_elbo" in r:
                    m, se = paired(r["per_image_neg_elbo"], ref[split]["per_image_neg_elbo"])
                    row["margin"], row["margin_stderr"] = round(m, 4), round(se, 4)
                else:
                    row["margin"] = round(r["neg_elbo"] - ref[split]["neg_elbo"], 4)
                row["gaussian_neg_elbo"] = round(ref[split]["neg_elbo"], 3)
            rows[seed] = row
        if not rows:
            continue
        any_run = next(iter(by_seed.values()))
        entry = {
            "posterior": any_run["posterior"],
            "setting": any_run.get("setting"),
            "flow": any_run.get("flow"),
            "per_seed": rows,
            "neg_elbo_mean": round(statistics.fmean(r["neg_elbo"] for r in rows.values()), 3),
        }
        margins = [r["margin"] for r in rows.values() if "margin" in r]
        if margins:
            entry["margin_mean"] = round(statistics.fmean(margins), 4)
            ses = [r["margin_stderr"] for r in rows.values() if "margin_stderr" in r]
            if len(ses) == len(margins):
                entry["margin_mean_stderr"] = round(
                    math.sqrt(sum(s * s for s in ses)) / len(ses), 4
                )
            if len(margins) > 1:
                entry["margin_sd_over_seeds"] = round(statistics.stdev(margins), 4)
        table[name] = entry
    return table


def vae_markdown(table: dict, split: str) -> str:
    lines = [
        f"| run | seed | {split} -ELBO | IWAE | margin vs Gaussian (paired, +- se) |",
        "|---|---|---|---|---|",
    ]
    for name, e in table.items():
        for seed, r in e["per_seed"].items():
            margin = ""
            if "margin" in r:
                margin = f"{r['margin']:+.3f}"
                if "margin_stderr" in r:
                    margin += f" +- {r['margin_stderr']:.3f}"
            lines.append(
                f"| {name} | {seed} | {r['neg_elbo']:.3f} +- {r['stderr']:.3f} |"
                f" {r.get('iwae_nll', '')} | {margin} |"
            )
        if "margin_mean" in e:
            s = f"{e['margin_mean']:+.3f}"
            if "margin_mean_stderr" in e:
                s += f" +- {e['margin_mean_stderr']:.3f}"
            if "margin_sd_over_seeds" in e:
                s += f" (sd over seeds {e['margin_sd_over_seeds']:.3f})"
            lines.append(f"| {name} | mean | {e['neg_elbo_mean']:.3f} | | {s} |")
    return "\n".join(lines) + "\n"


@benchmark(
    "conditional_vae_table",
    "collect conditional_vae run files into one table with paired margins vs Gaussian",
    options=[
        Option("dir", "str", None, "folder of the run files (unset: the results dir)"),
        Option("split", "str", "test", "split to tabulate"),
        Option("markdown", "str", None, "also write the table as markdown to this file"),
    ],
)
def conditional_vae_table(opts, ctx) -> dict:
    """Per run (file name less its _s<seed>) and seed: negative ELBO on the split, and for a
    CP-Flow posterior its PAIRED margin over the Gaussian-posterior run of the same setting
    and seed (negative = CP-Flow better): the mean over images of the per-image difference of
    the two negative ELBOs, with its standard error over images. Both runs evaluate the same
    images with the same draws, so the paired error is far smaller than either mean's. Over
    seeds: the mean margin, its image-level error sqrt(sum se^2) / k and the sd of the
    per-seed margins."""
    table = vae_table(load_vae_runs(Path(opts.dir) if opts.dir else ctx.results_dir), opts.split)
    if opts.markdown:
        Path(opts.markdown).write_text(vae_markdown(table, opts.split))
    return {"split": opts.split, "runs": table}
