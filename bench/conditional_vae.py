"""VAE on binarised scikit-learn digits: diagonal Gaussian posterior vs an amortised CP-Flow.

The CP-Flow posterior (paper §5.4, Table 3 in small) pushes the encoder's Gaussian sample
z0 = mu + sigma * eps through conditional CP-Flow blocks whose context is an encoder output h:
z = f(z0; h), log q(z | x) = log N(z0; mu, sigma) - log det df/dz0 (exact Cholesky, d small).
Both models share encoder, decoder, optimiser, iterations and batch; the only difference is the
posterior (the flow's own parameters, and the encoder head that makes its context, may get their
own learning rate, ``--flow-lr``, and each block's initial gain softplus(w1), ``--gain``). The
shared modules are built first and the training draws re-seeded after the flow is built, so for
one seed both posteriors start from the same encoder/decoder and see the same eps and batches.

Data: the fixed 80/20 train/test split of the 1797 digits; the last ``--val`` training images
are held out as a validation split (settings are chosen on it, never on test). Reported:
negative ELBO (nats per image) per split, averaged over ``--eval-samples`` posterior draws per
image, its per-image values (so two models of a seed can be compared image by image; the draws
eps are the same for every model of a given latent size), and an importance-weighted bound
(IWAE, ``--iw`` draws) as a check. ``bench/conditional_vae_table.py`` pairs the runs.

Usage (the setting of bench/reports/2026-11-29, chosen on val; seeds 0 1 2):
    python bench/conditional_vae.py --threads 1 --posterior gaussian --seed 0
    python bench/conditional_vae.py --threads 1 --posterior cpflow --icnn augmented --seed 0
    python bench/conditional_vae.py --threads 1 --posterior cpflow --icnn vanilla --seed 0
    python bench/conditional_vae_table.py --dir bench/results
  (defaults: --latent 8 --iterations 3000 --batch 64 --lr 1e-3; flow: --blocks 4
   --flow-hidden 64 --depth 2 --flow-lr 3e-3 --gain 0.1 --flow-on z0; add --out-dir DIR, and
   --splits val,train while choosing settings so test stays untouched)
Prints one JSON object and writes it to ``--out-dir`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.nn import functional as F

from cpflow.conditional import ConditionalCPFlow, ConditionalFlowConfig
from cpflow.layers import softplus_inv

RESULTS = Path(__file__).resolve().parent / "results"
_LOG_2PI = math.log(2.0 * math.pi)


def binarised_digits(val: int = 180) -> dict[str, np.ndarray]:
    """float32 0/1 arrays (n, 64), pixels > 8 of 16 on: a fixed 80/20 train/test split (the
    same as before validation existed), the last ``val`` training images held out as val."""
    x = (load_digits().data > 8).astype(np.float32)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    cut = int(0.8 * x.shape[0])
    train = x[perm[: cut - val]]
    return {"train": train, "val": x[perm[cut - val : cut]], "test": x[perm[cut:]]}


class VAE(nn.Module):
    """MLP encoder / Bernoulli decoder with an optional conditional CP-Flow posterior."""

    def __init__(
        self,
        latent: int,
        hidden: int,
        context: int,
        flow_cfg: ConditionalFlowConfig | None,
        flow_on: str = "z0",
    ) -> None:
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
        self.flow = ConditionalCPFlow(flow_cfg) if flow_cfg is not None else None

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
            z, logdet = self.flow.transform_and_logdet(z0, h)
            logq = logq - logdet
        else:  # z = mu + sigma f(eps; h): the flow works at the scale of its N(0, I) base
            h = torch.tanh(self.to_ctx(e)).repeat(samples, 1)
            u, logdet = self.flow.transform_and_logdet(eps.reshape(samples * n, d), h)
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--posterior", default="cpflow", choices=["gaussian", "cpflow"])
    p.add_argument("--icnn", default="augmented", choices=["augmented", "vanilla"])
    p.add_argument("--no-cut", action="store_true", help="deep context path in the PICNN")
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--context", type=int, default=16)
    p.add_argument("--context-hidden", type=int, default=32)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--flow-hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--flow-on", default="z0", choices=["z0", "eps"], help="flow input: z0 or eps")
    p.add_argument("--gain", type=float, default=0.1, help="initial softplus(w1) of each block")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--flow-lr", type=float, default=3e-3, help="lr of the flow's parameters")
    p.add_argument("--val", type=int, default=180, help="training images held out for val")
    p.add_argument("--splits", default="val,test", help="splits to evaluate (train = subset)")
    p.add_argument("--eval-samples", type=int, default=50)
    p.add_argument("--iw", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix of the output file name")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = {k: torch.as_tensor(v) for k, v in binarised_digits(args.val).items()}
    train = data["train"]
    flow_cfg = None
    if args.posterior == "cpflow":
        flow_cfg = ConditionalFlowConfig(
            dim=args.latent, context_dim=args.context, blocks=args.blocks,
            hidden=args.flow_hidden, depth=args.depth, icnn=args.icnn,
            context_hidden=args.context_hidden, cut_context=not args.no_cut, actnorm=False,
        )  # fmt: skip
    model = VAE(args.latent, args.hidden, args.context, flow_cfg, args.flow_on)
    torch.manual_seed(args.seed + 1000)  # the same training draws eps with and without a flow
    if model.flow is not None and args.gain is not None:
        with torch.no_grad():
            for block in model.flow.blocks():
                block.w1.fill_(softplus_inv(args.gain))
    flow_lr = args.lr if args.flow_lr is None else args.flow_lr
    flow_ids = {id(q) for q in model.flow_parameters()}
    groups = [{"params": [q for q in model.parameters() if id(q) not in flow_ids]}]
    if flow_ids:
        groups.append({"params": model.flow_parameters(), "lr": flow_lr})
    opt = torch.optim.Adam(groups, lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iterations)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for it in range(1, args.iterations + 1):
        model.train()
        idx = torch.randint(0, train.shape[0], (args.batch,), generator=gen)
        loss = -model.elbo(train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 20.0)
        opt.step()
        sched.step()
        if it % 500 == 0:
            print(json.dumps({"it": it, "train_neg_elbo": float(loss)}), file=sys.stderr)
    train_time = time.perf_counter() - t0
    tag = args.posterior if args.posterior == "gaussian" else f"cpflow_{args.icnn}"
    if args.no_cut:
        tag += "_nocut"
    if args.latent != 8:
        tag += f"_z{args.latent}"
    flow_info = None
    if flow_cfg is not None:
        flow_info = {
            "blocks": args.blocks, "hidden": args.flow_hidden, "depth": args.depth,
            "icnn": args.icnn, "context": args.context, "context_hidden": args.context_hidden,
            "cut_context": not args.no_cut, "flow_lr": flow_lr, "gain": args.gain,
            "flow_on": args.flow_on,
        }  # fmt: skip
    out = {
        "posterior": tag,
        "seed": args.seed,
        "latent": args.latent,
        "iterations": args.iterations,
        # runs with equal "setting" differ only in the posterior and may be paired
        "setting": f"z{args.latent}_h{args.hidden}_it{args.iterations}_b{args.batch}"
        f"_lr{args.lr:g}_val{args.val}",
        "flow": flow_info,
        "parameters": sum(q.numel() for q in model.parameters()),
        "train_time_s": train_time,
        "command": "python " + " ".join(sys.argv),
    }
    for split in args.splits.split(","):
        x = data[split][:360] if split == "train" else data[split]
        out[split] = evaluate(model, x, args.eval_samples, args.iw)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"conditional_vae_{tag}{args.tag}_s{args.seed}.json"
    path.write_text(json.dumps(out, indent=1))
    brief = {k: v for k, v in out.items() if k not in ("val", "test", "train")}
    for split in args.splits.split(","):
        brief[split] = {k: v for k, v in out[split].items() if k != "per_image_neg_elbo"}
    print(json.dumps(brief))


if __name__ == "__main__":
    main()
