"""Conditional data (x, c) and a training loop for a conditional :class:`cpflow.CPFlow`.

* Toy sets with TRUE conditional densities (for floors): ``mog1d`` (a 1-D mixture of two
  Gaussians whose mixing weight is the context c in [0, 1]) and ``banana`` (2-D: x1 ~ N(0, 1),
  x2 | x1 ~ N(c (x1^2 - 1), 0.5^2), the bend set by c in [-1, 1]).
* User arrays (.npy / .csv) split into data and context columns (``context_columns``).
* ``train_conditional``: Adam on the CG surrogate (or the exact log-det for small d), cosine
  learning rate, validation on the exact conditional NLL, best-validation weights kept. The
  surrogate value is never reported as an NLL.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cpflow import CPFlow, FlowConfig
from training.datasets.arrays import load_array_file
from training.datasets.errors import DatasetError
from training.trainer import TrainingCancelled, fit_standardization

__all__ = [
    "CONDITIONAL_TOYS",
    "ConditionalSplits",
    "ConditionalTrainConfig",
    "ConditionalTrainResult",
    "conditional_entropy",
    "conditional_splits",
    "conditional_toy_log_density",
    "is_conditional_source",
    "load_conditional_array",
    "load_conditional_dataset",
    "make_conditional_toy",
    "parse_context_columns",
    "sample_conditional_toy",
    "split_context_columns",
    "train_and_publish_conditional",
    "train_conditional",
]

CONDITIONAL_TOYS = ("mog1d", "banana")
_MOG_MEANS = (-1.5, 1.5)
_MOG_STD = 0.5
_BANANA_STD = 0.5
_LOG_2PI = math.log(2.0 * math.pi)


def _norm_logpdf(x: np.ndarray, mean: np.ndarray | float, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * _LOG_2PI


def context_range(name: str) -> tuple[float, float]:
    """Interval the context of a toy set is drawn from (uniformly)."""
    return {"mog1d": (0.0, 1.0), "banana": (-1.0, 1.0)}[_check(name)]


def _check(name: str) -> str:
    if name not in CONDITIONAL_TOYS:
        raise DatasetError(f"unknown conditional toy {name!r}; choose one of {CONDITIONAL_TOYS}")
    return name


def sample_conditional_toy(name: str, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one x per context value c (shape (n,) or (n, 1)); returns (n, d)."""
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    n = c.shape[0]
    if _check(name) == "mog1d":
        first = rng.random(n) < c
        mean = np.where(first, _MOG_MEANS[0], _MOG_MEANS[1])
        return (mean + _MOG_STD * rng.standard_normal(n))[:, None]
    x1 = rng.standard_normal(n)
    x2 = c * (x1**2 - 1.0) + _BANANA_STD * rng.standard_normal(n)
    return np.stack([x1, x2], 1)


def conditional_toy_log_density(name: str, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The true log p(x | c) (closed form), shape (n,)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1), (x.shape[0],))
    if _check(name) == "mog1d":
        a = np.log(np.clip(c, 1e-300, None)) + _norm_logpdf(x[:, 0], _MOG_MEANS[0], _MOG_STD)
        b = np.log(np.clip(1.0 - c, 1e-300, None)) + _norm_logpdf(x[:, 0], _MOG_MEANS[1], _MOG_STD)
        return np.logaddexp(a, b)
    return _norm_logpdf(x[:, 0], 0.0, 1.0) + _norm_logpdf(
        x[:, 1], c * (x[:, 0] ** 2 - 1.0), _BANANA_STD
    )


def conditional_entropy(name: str, c: float) -> float:
    """The true differential entropy H(X | C = c) in nats (quadrature / closed form)."""
    if _check(name) == "banana":  # a shear of independent Gaussians: volume preserving
        return 0.5 * (1.0 + _LOG_2PI) + 0.5 * (1.0 + _LOG_2PI) + math.log(_BANANA_STD)
    grid = np.linspace(-8.0, 8.0, 200_001)
    lp = conditional_toy_log_density(name, grid[:, None], np.full(grid.shape, c))
    p = np.exp(lp)
    integrand = np.where(p > 0, -p * lp, 0.0)
    return float(np.trapezoid(integrand, grid))


@dataclass
class ConditionalSplits:
    """Train / val / test arrays of data x (n, d) and context c (n, k), float32."""

    name: str
    x_train: np.ndarray
    c_train: np.ndarray
    x_val: np.ndarray
    c_val: np.ndarray
    x_test: np.ndarray
    c_test: np.ndarray
    context_columns: list[int] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def context_dim(self) -> int:
        return self.c_train.shape[1]


def _split(name, x, c, seed, context_columns, fractions=(0.8, 0.1)) -> ConditionalSplits:
    n = x.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    a = round(fractions[0] * n)
    b = a + round(fractions[1] * n)
    if a < 1 or b - a < 1 or n - b < 1:
        raise DatasetError(f"{name}: {n} rows are too few for train / val / test splits")
    idx = perm[:a], perm[a:b], perm[b:]
    xs = [x[i].astype(np.float32) for i in idx]
    cs = [c[i].astype(np.float32) for i in idx]
    return ConditionalSplits(name, xs[0], cs[0], xs[1], cs[1], xs[2], cs[2], context_columns)


def make_conditional_toy(name: str, num_samples: int = 20_000, seed: int = 0) -> ConditionalSplits:
    """A toy conditional set: c ~ U(context_range), x ~ p(x | c); 80/10/10 split."""
    rng = np.random.default_rng(seed)
    lo, hi = context_range(name)
    c = rng.uniform(lo, hi, num_samples)
    x = sample_conditional_toy(name, c, rng)
    return _split(name, x, c[:, None], seed + 1, [])


def parse_context_columns(spec: str | Sequence[int], ncols: int) -> list[int]:
    """Column indices from "3,4" / "-1" / [3, 4] (negatives count from the end), checked."""
    if isinstance(spec, str):
        try:
            items = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError as exc:
            raise DatasetError(
                f"context columns {spec!r}: give comma-separated integer indices, e.g. '3,4'"
            ) from exc
    else:
        items = [int(s) for s in spec]
    if not items:
        raise DatasetError("name at least one context column")
    cols = []
    for i in items:
        j = i + ncols if i < 0 else i
        if not 0 <= j < ncols:
            raise DatasetError(f"context column {i} is out of range for {ncols} columns")
        cols.append(j)
    if len(set(cols)) != len(cols):
        raise DatasetError("context columns must not repeat")
    if len(cols) >= ncols:
        raise DatasetError("at least one column must remain as data (not context)")
    return cols


def split_context_columns(
    arr: np.ndarray, context_columns: str | Sequence[int]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(x, c, resolved column indices): the context columns go to c, the others to x."""
    arr = np.asarray(arr)
    cols = parse_context_columns(context_columns, arr.shape[1])
    rest = [j for j in range(arr.shape[1]) if j not in cols]
    return arr[:, rest], arr[:, cols], cols


def conditional_splits(
    arr: np.ndarray, context_columns: str | Sequence[int], *, name: str, seed: int = 0
) -> ConditionalSplits:
    """An in-memory array (e.g. an uploaded data set) split into data and context, then into
    seeded train / val / test parts."""
    x, c, cols = split_context_columns(arr, context_columns)
    return _split(name, x, c, seed, cols)


def load_conditional_array(
    path: str | Path, context_columns: str | Sequence[int], *, seed: int = 0
) -> ConditionalSplits:
    """A .npy / .csv file (validated by training.datasets) split into data and context."""
    return conditional_splits(
        load_array_file(path), context_columns, name=f"file:{path}", seed=seed
    )


def is_conditional_source(dataset: str, context_columns: object = None) -> bool:
    """True when ``dataset`` (a CLI / job data set name) means a conditional model: a
    conditional toy, or any data set given together with context columns."""
    return dataset in CONDITIONAL_TOYS or context_columns is not None


def load_conditional_dataset(
    dataset: str,
    context_columns: str | Sequence[int] | None = None,
    *,
    num_samples: int | None = None,
    seed: int = 0,
) -> ConditionalSplits:
    """``mog1d`` / ``banana`` (fixed context, no columns) or ``file:PATH`` with context columns;
    anything else is a DatasetError saying what to give instead."""
    if dataset.startswith("file:"):
        if context_columns is None:
            raise DatasetError("file data needs context columns, e.g. --context-columns 3,4")
        return load_conditional_array(dataset[5:], context_columns, seed=seed)
    if context_columns is None:  # a conditional toy (DatasetError names them otherwise)
        return make_conditional_toy(dataset, num_samples or 20_000, seed)
    if dataset in CONDITIONAL_TOYS:
        raise DatasetError(
            f"{dataset} has its context built in; context columns apply to file data only"
        )
    raise DatasetError(
        f"context columns apply to file data (file:/path.csv|.npy) only, not {dataset!r}; "
        f"drop them, or train a conditional toy ({', '.join(CONDITIONAL_TOYS)})"
    )


# -- training ---------------------------------------------------------------------------------
@dataclass
class ConditionalTrainConfig:
    """Optimisation settings for :func:`train_conditional`."""

    iterations: int = 2000
    batch_size: int = 256
    lr: float = 5e-3
    weight_decay: float = 0.0
    loss: str = "surrogate"  # "surrogate" (Algorithm 2) | "exact" (autograd through Cholesky)
    validate_every: int = 200
    grad_clip: float = 10.0
    seed: int = 0
    standardize: str = "diagonal"


@dataclass
class ConditionalTrainResult:
    flow: CPFlow
    best_val_nll: float
    test_nll: float
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0


def _nll(flow: CPFlow, x: np.ndarray, c: np.ndarray, batch: int = 4096) -> float:
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xb = torch.as_tensor(x[i : i + batch])
            cb = torch.as_tensor(c[i : i + batch])
            total += float(-flow.log_prob(xb, cb, method="auto").double().sum())
    return total / x.shape[0]


def train_conditional(
    flow_config: FlowConfig,
    splits: ConditionalSplits,
    cfg: ConditionalTrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    *,
    on_step: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ConditionalTrainResult:
    """Fit p(x | c) on splits; returns the best-validation model and its test NLL (nats).

    ``progress`` gets each validation (``iteration``, ``val_nll``); ``on_step`` gets every
    iteration (``iteration``, ``total``, ``loss``, ``lr``, ``seconds_per_iteration``,
    ``eta_s``); ``should_stop`` is asked every iteration and, when true, raises
    :class:`training.trainer.TrainingCancelled`.
    """
    cfg = cfg or ConditionalTrainConfig()
    if cfg.loss not in ("surrogate", "exact"):
        raise ValueError("loss must be 'surrogate' or 'exact'")
    if flow_config.dim != splits.dim or flow_config.context_dim != splits.context_dim:
        data = flow_config.model_dump()
        data["potential"]["context_dim"] = splits.context_dim
        flow_config = FlowConfig.model_validate({**data, "dim": splits.dim})
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    flow = CPFlow(flow_config)
    dtype = flow_config.torch_dtype
    xs = fit_standardization(splits.x_train, cfg.standardize)
    cs = fit_standardization(splits.c_train, "diagonal")
    if xs is not None:
        flow.set_standardization(
            torch.as_tensor(xs[0]), torch.as_tensor(xs[1]), torch.as_tensor(cs[0]),
            torch.as_tensor(cs[1]),
        )  # fmt: skip
    x_tr = torch.as_tensor(splits.x_train, dtype=dtype)
    c_tr = torch.as_tensor(splits.c_train, dtype=dtype)
    gen = torch.Generator().manual_seed(cfg.seed)
    init = torch.randperm(x_tr.shape[0], generator=gen)[: min(2048, x_tr.shape[0])]
    flow.initialize(x_tr[init], c_tr[init])
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)
    best, best_state, history = math.inf, None, []

    def validate(it: int) -> None:
        nonlocal best, best_state
        flow.eval()
        val = _nll(flow, splits.x_val.astype(np.float32), splits.c_val)
        history.append({"iteration": it, "val_nll": val})
        if progress:
            progress(history[-1])
        if math.isfinite(val) and val < best:
            best = val
            best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}

    t_loop = time.perf_counter()
    for it in range(1, cfg.iterations + 1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(it - 1)
        flow.train()
        idx = torch.randint(0, x_tr.shape[0], (cfg.batch_size,), generator=gen)
        xb, cb = x_tr[idx], c_tr[idx]
        if cfg.loss == "surrogate":
            loss, _ = flow.training_loss(xb, cb, generator=gen)
        else:
            loss = -flow.log_prob(xb, cb, method="exact").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        if on_step is not None:
            per_it = (time.perf_counter() - t_loop) / it
            on_step(
                {"iteration": it, "total": cfg.iterations, "loss": float(loss.detach()), "lr": lr,
                 "seconds_per_iteration": per_it, "eta_s": per_it * (cfg.iterations - it)}
            )  # fmt: skip
        if it % cfg.validate_every == 0 or it == cfg.iterations:
            validate(it)
    if best_state is not None:
        flow.load_state_dict(best_state)
    flow.eval()
    test = _nll(flow, splits.x_test, splits.c_test)
    return ConditionalTrainResult(flow, best, test, history, time.perf_counter() - t0)


# -- publishing and a small CLI -----------------------------------------------------------------
def train_and_publish_conditional(
    splits: ConditionalSplits,
    model_name: str,
    store,
    flow_config: FlowConfig | None = None,
    train_config: ConditionalTrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    *,
    on_step: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    summary_extra: dict | None = None,
):
    """Train p(x | c) and publish it; the manifest's training summary records the context
    columns, data set, trainer settings and exact NLLs (nats), plus ``summary_extra`` (e.g.
    a job id). ``on_step`` / ``should_stop`` as in :func:`train_conditional`.
    Returns PublishedVersion."""
    from dataclasses import asdict

    flow_config = flow_config or FlowConfig(dim=splits.dim, context_dim=splits.context_dim)
    train_config = train_config or ConditionalTrainConfig()
    res = train_conditional(
        flow_config, splits, train_config, progress, on_step=on_step, should_stop=should_stop
    )
    summary = {
        "kind": "conditional",
        "dataset": splits.name,
        "context_columns": list(splits.context_columns),
        "context_dim": splits.context_dim,
        "trainer": asdict(train_config),
        "metrics": {
            "val_nll": res.best_val_nll,
            "test_nll": res.test_nll,
            "method": "exact" if splits.dim <= flow_config.exact_max_dim else "slq",
        },
        "wall_time_s": res.wall_time_s,
        **(summary_extra or {}),
    }
    return store.publish(model_name, res.flow, training=summary)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.conditional --dataset mog1d|banana|file:PATH --context-columns 3,4
    --name MODEL`` trains a conditional flow straight into the store (CPFLOW_STORE_DIR)."""
    import argparse
    import os

    from model_store import ModelStore

    p = argparse.ArgumentParser(prog="python -m training.conditional")
    p.add_argument("--dataset", required=True, help="mog1d, banana or file:/path.csv|.npy")
    p.add_argument("--context-columns", help="context column indices for file data, e.g. 3,4")
    p.add_argument("--name", required=True)
    p.add_argument("--store-dir", default=os.environ.get("CPFLOW_STORE_DIR", "./store"))
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--icnn", choices=["augmented", "vanilla"], default="augmented")
    p.add_argument("--no-cut-context", action="store_true")
    p.add_argument("--num-samples", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        splits = load_conditional_dataset(
            a.dataset, a.context_columns, num_samples=a.num_samples, seed=a.seed
        )
    except DatasetError as exc:
        p.error(str(exc))
    cfg = FlowConfig(
        dim=splits.dim, context_dim=splits.context_dim, blocks=a.blocks, hidden=a.hidden,
        depth=a.depth, icnn=a.icnn, cut_context=not a.no_cut_context,
    )  # fmt: skip
    tcfg = ConditionalTrainConfig(
        iterations=a.iterations, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
        validate_every=max(1, min(200, a.iterations)),
    )  # fmt: skip
    pub = train_and_publish_conditional(
        splits, a.name, ModelStore(a.store_dir), cfg, tcfg,
        progress=lambda h: print(f"it {h['iteration']} val_nll {h['val_nll']:.4f}", flush=True),
    )  # fmt: skip
    print(f"published {pub.name} v{pub.version}: test_nll {pub.manifest['training']['metrics']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
