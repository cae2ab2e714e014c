"""cpflow-train: train a CP-Flow on a data set and publish it to the model store."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from model_store.names import did_you_mean
from training.settings import TorchrunSettings, TrainingSettings

if TYPE_CHECKING:
    from training.distributed import Dist
    from training.trainer import ProgressEvent

__all__ = ["build_parser", "main"]


def build_parser(settings: TrainingSettings | None = None) -> argparse.ArgumentParser:
    """The command line; store defaults come from ``settings`` (the environment's if None)."""
    p = argparse.ArgumentParser(
        prog="cpflow-train",
        description="Train a Convex Potential Flow and publish it as a new model version.",
    )
    _data_options(p)
    _training_options(p)
    _model_options(p)
    _run_options(p, settings or TrainingSettings())
    return p


def _data_options(p: argparse.ArgumentParser) -> None:
    from training.presets import PRESETS

    p.add_argument(
        "--dataset",
        help="built-in name (eight_gaussians, sklearn:wine, ...), "
        "power/gas/... with --data-dir, or file:/path.csv|.npy; the conditional toys "
        "mog1d and banana train p(x | c); digits (mnist, cifar10 with --data-dir) are images "
        "(default: the --preset's own data set; required with auto)",
    )
    p.add_argument(
        "--context-columns",
        metavar="SPEC",
        help="train a conditional model p(x | c) on file: data: the comma-separated column "
        "indices of the context c (e.g. 3,4; negatives count from the end, -1 is the last; "
        "default: none, an unconditional model)",
    )
    p.add_argument("--name", required=True, help="model name in the store (required)")
    choices = ["auto", *sorted(PRESETS)]

    def preset(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"unknown preset {value!r}{did_you_mean(value, choices)}; choose one of "
                + ", ".join(choices)
            )
        return value

    p.add_argument(
        "--preset",
        type=preset,
        choices=choices,
        default="auto",
        help="named settings (docs/cli.md); auto (the default) chooses them from the data",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        help="rows to generate for toy data sets (default: the data set's own size)",
    )
    p.add_argument(
        "--data-dir",
        help="folder with the paper's tabular data sets (default: CPFLOW_DATA_DIR)",
    )
    _table_options(p)


def _table_options(p: argparse.ArgumentParser) -> None:
    """How a file: data set is checked and split (training.datasets.TableOptions)."""
    g = p.add_argument_group(
        "file data",
        "file: data sets are checked first (constant, index-like, linearly dependent columns "
        "and missing cells are refused, naming the columns; other findings are warnings) and "
        "split 70/15/15 unless told otherwise",
    )
    g.add_argument(
        "--drop-columns",
        metavar="NAMES",
        help="comma-separated column names (the header's, else x1..xd) to drop before the checks (default: none)",
    )
    g.add_argument(
        "--drop-flagged",
        action="store_true",
        help="drop every column a data-check refusal names, and train on the rest (default: off)",
    )
    g.add_argument(
        "--val-fraction", type=float, help="share of rows held out for validation (default: 0.15)"
    )
    g.add_argument(
        "--test-fraction", type=float, help="share of rows held out for the test (default: 0.15)"
    )
    g.add_argument(
        "--val-file",
        metavar="PATH",
        help="your own validation table (same columns); the training file is then not cut "
        "for validation (default: none)",
    )
    g.add_argument(
        "--test-file",
        metavar="PATH",
        help="your own test table (same columns); the training file is then not cut for a "
        "test set (default: none)",
    )


# Training and model options left out take the preset's value, or the auto recipe's choice
# from the data (recorded with its reason in the manifest's training.auto).
_CHOSEN = "default: the preset's, or with auto chosen from the data"


def _recipe_option(p: argparse.ArgumentParser, flag: str, what: str, **kw: Any) -> None:
    """An option whose default is the preset's or the auto recipe's: the help says so."""
    p.add_argument(flag, help=f"{what} ({_CHOSEN})", **kw)


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _training_options(p: argparse.ArgumentParser) -> None:
    opt = _recipe_option
    opt(p, "--iterations", "optimiser steps", type=int)
    opt(p, "--epochs", "passes over the training rows, instead of --iterations", type=int)
    p.add_argument(
        "--time-budget",
        type=_seconds,
        dest="time_budget_s",
        metavar="SECONDS",
        help="wall-clock seconds for the whole run (training, validations, final scoring) "
        "instead of --iterations / --epochs: the iterations are planned from the measured "
        "step time, and auto sizes its validation interval, lr decay and early stopping to "
        "them (default: none, the budget is iterations)",
    )
    opt(p, "--batch-size", "rows per step and process", type=int)
    opt(p, "--lr", "Adam learning rate", type=float)
    opt(p, "--weight-decay", "Adam weight decay", type=float)
    opt(p, "--schedule", "learning-rate schedule", choices=["none", "plateau", "cosine"])
    opt(p, "--grad-clip", "largest gradient norm (0: no clipping)", type=float)
    opt(p, "--warmup", "linear lr warm-up iterations", type=int, dest="warmup_iterations")
    opt(
        p,
        "--loss",
        "training objective: CG surrogate, exact log-det, or auto (exact for d <= 2)",
        choices=["auto", "surrogate", "exact"],
    )
    opt(p, "--val-every", "iterations between two validation passes", type=int)
    opt(
        p,
        "--early-stopping",
        "stop after this many validations without improvement",
        type=int,
        dest="early_stopping_patience",
    )
    opt(p, "--dtype", "float type of the flow", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, help="seed of the split, init and batches (default: 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: CPFLOW_DEVICE or cpu)")
    p.add_argument(
        "--checkpoint-dir", help="resumable trainer checkpoints go here (default: none kept)"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        help="iterations between checkpoints (default: one at the end only)",
    )


def _model_options(p: argparse.ArgumentParser) -> None:
    opt = _recipe_option
    opt(p, "--blocks", "flow blocks (convex potentials)", type=int)
    opt(p, "--hidden", "hidden units per ICNN layer", type=int)
    opt(p, "--depth", "ICNN layers per block", type=int)
    opt(p, "--icnn", "ICNN kind", choices=["vanilla", "augmented", "dense"])
    opt(p, "--activation", "ICNN activation", choices=["logistic", "gaussian", "laplace"])
    opt(
        p,
        "--standardization",
        "input scaling fitted on the train split (whiten: full covariance)",
        choices=["diagonal", "isotropic", "whiten"],
    )
    opt(p, "--init-gain", "softplus(w1) at init (the paper's: log 2)", type=float)
    opt(
        p,
        "--radial-units",
        "radial convex units per block (steps of the map along |x|; the rings preset's)",
        type=int,
    )


def _run_options(p: argparse.ArgumentParser, settings: TrainingSettings) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: CPFLOW_WORKER_TORCH_THREADS, else torch's choice)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (runs torchrun; --batch-size is per "
        "process, the global batch is N times it). Several machines: start torchrun yourself, "
        "see docs/deployment.md (default: 1)",
    )
    p.add_argument(
        "--store-dir",
        default=str(settings.store_dir) if settings.store_dir else "./var/store",
        help="model store root (default: CPFLOW_STORE_DIR or ./var/store)",
    )
    p.add_argument(
        "--store-url",
        default=settings.store_url,
        help="model store as s3://bucket/prefix (AWS_* variables) or file:///path; overrides "
        "--store-dir (default: CPFLOW_STORE_URL, else none)",
    )
    p.add_argument(
        "--no-plots", action="store_true", help="publish no plots (default: plots are made)"
    )
    p.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the forward transport and (small d) the exact log-density to ONNX, "
        "parity-checked, so the service answers them with onnxruntime (default: on)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (default: a progress bar)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    try:
        settings = TrainingSettings()
        world_size = TorchrunSettings().world_size
    except ValidationError as exc:  # the environment: name the variable
        first = exc.errors()[0]
        prefix = "CPFLOW_" if exc.title == TrainingSettings.__name__ else ""
        name = prefix + "_".join(str(p) for p in first["loc"]).upper()
        print(f"cpflow-train: error: {name}: {first['msg']}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    if not args.dataset and args.preset == "auto":
        print(
            "cpflow-train: give --dataset or a --preset with a default data set", file=sys.stderr
        )
        return 2

    problem = _context_columns_misuse(args) or _table_misuse(args) or _budget_misuse(args)
    if problem:
        print(f"cpflow-train: error: {problem}", file=sys.stderr)
        return 2
    if args.nproc < 1:
        print("cpflow-train: error: --nproc must be at least 1", file=sys.stderr)
        return 2
    if args.nproc > 1 and world_size == 1:
        return _launch_group(args.nproc, argv)
    from training.distributed import init_from_env

    args.device = args.device or settings.device
    group = init_from_env(args.device)
    try:
        return _train(args, group, settings.cache_dir)
    finally:
        if group.world > 1:
            from torch import distributed

            distributed.destroy_process_group()


def _launch_group(nproc: int, argv: Sequence[str] | None) -> int:
    """Run this command again (without --nproc, which torchrun would take for its own) as a
    torchrun group of ``nproc`` processes; the group's exit status."""
    from training.distributed import launch

    args = list(sys.argv[1:] if argv is None else argv)
    i = next(i for i, arg in enumerate(args) if arg.startswith("--nproc"))
    del args[i : i + (1 if "=" in args[i] else 2)]
    return launch(nproc, "training.cli", args).wait()


def _train(args: argparse.Namespace, group: Dist, cache_dir: Path | None) -> int:
    """Train and publish (rank 0 of a group prints the result; the others print nothing)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from model_store import ModelNameTaken, open_store
    from training.config import TrainConfig
    from training.datasets.errors import DatasetError
    from training.pipeline import train_and_publish
    from training.presets import PresetError
    from training.trainer import TrainingError

    flow_kw = {k: getattr(args, k) for k in _FLOW_OPTIONS}
    # options named as TrainConfig fields go to the trainer (device among them)
    train_kw = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
    bar = _Bar(args.quiet or not group.main)
    new_store = None if args.store_url else _new_store_folder(Path(args.store_dir))
    try:
        store = open_store(args.store_url or args.store_dir, cache_dir)
        published = train_and_publish(
            args.dataset,
            args.name,
            store,
            {k: v for k, v in flow_kw.items() if v is not None},
            {k: v for k, v in train_kw.items() if v is not None},
            preset=args.preset,
            num_samples=args.num_samples,
            data_dir=args.data_dir,
            make_plots=not args.no_plots,
            progress=bar.on_progress,
            checkpoint_dir=args.checkpoint_dir,
            export_onnx=args.onnx,
            context_columns=args.context_columns,
            table=_table(args),
        )
    except DatasetError as exc:  # the data or its context columns: say what to give instead
        return _fail(bar, str(exc), 2 if args.context_columns is not None else 1)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "potential") or "options"
        return _fail(bar, f"--{where.replace('_', '-')}: {first['msg']}", 2)
    except (TrainingError, PresetError, ValueError, ModelNameTaken) as exc:
        return _fail(bar, str(exc), 1)
    bar.close()
    if published is not None:  # None: not rank 0 of a torchrun group
        for warning in (published.manifest["training"].get("data_report") or {}).get(
            "warnings", []
        ):
            print(f"cpflow-train: data warning: {warning['message']}", file=sys.stderr)
        print(json.dumps(_summary(published), indent=2))
        if new_store is not None:
            print(_new_store_notice(new_store), file=sys.stderr)
    return 0


def _table(args: argparse.Namespace) -> Any:
    """The file-data options (training.datasets.TableOptions) of the command line."""
    from training.datasets import TableOptions

    drop = [c.strip() for c in (args.drop_columns or "").split(",") if c.strip()]
    return TableOptions(
        drop_columns=tuple(drop), drop_flagged=args.drop_flagged,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        val_file=args.val_file, test_file=args.test_file,
    )  # fmt: skip


def _new_store_folder(store_dir: Path) -> Path | None:
    """The store folder as an absolute path when it does not exist yet (this run creates it)."""
    folder = store_dir.resolve()
    return None if folder.exists() else folder


def _new_store_notice(folder: Path) -> str:
    """Said when a publish created a new store: a service looking elsewhere would not see it."""
    return (
        f"cpflow-train: note: created a new model store at {folder} (none was there). "
        f"A service serves it when started with CPFLOW_STORE_DIR={folder} (or run cpflow-train "
        "with --store-dir / CPFLOW_STORE_DIR pointing at the store your service already uses)."
    )


def _fail(bar: _Bar, message: str, status: int) -> int:
    bar.close()
    print(f"cpflow-train: error: {message}", file=sys.stderr)
    return status


def _summary(published: Any) -> dict[str, Any]:
    """What cpflow-train prints about the version it published."""
    training = published.manifest.get("training", {})
    return {
        "name": published.name,
        "version": published.version,
        "path": str(Path(published.path).resolve()),
        "kind": training.get("kind"),
        "dataset": training.get("dataset"),
        **{k: training[k] for k in ("context_columns", "context_dim") if k in training},
        **{k: training[k] for k in ("columns", "data_report", "split") if k in training},
        "metrics": training.get("metrics"),
        "world_size": training.get("world_size", 1),
        "wall_time_s": training.get("wall_time_s"),
        "seconds_per_iteration": training.get("seconds_per_iteration"),
        "parameter_count": training.get("parameter_count"),
        "plots": published.manifest.get("plots"),
    }


class _Bar:
    """The progress bar on stderr (none with --quiet), created at the first update."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None  # a tqdm bar

    def on_progress(self, ev: ProgressEvent) -> None:
        """The trainer's progress callback: iteration, losses and phase on the bar."""
        post = {}
        if ev.surrogate_loss is not None:
            post["surrogate"] = f"{ev.surrogate_loss:.3f}"
        if ev.val_nll is not None:
            post["val_nll"] = f"{ev.val_nll:.4f}"
        if ev.cg_iterations is not None:
            post["cg"] = f"{ev.cg_iterations:.1f}"
        if ev.phase != "train":
            post["phase"] = ev.phase
        self.update(ev.iteration, ev.total, post)

    def update(self, iteration: int, total: int | None, post: dict[str, str]) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="it", dynamic_ncols=True, file=sys.stderr)
        self.bar.total = total  # a time budget's total is known once its steps are timed
        self.bar.n = iteration
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# Command-line options that are FlowConfig fields (dtype travels with the trainer's settings).
_FLOW_OPTIONS = (
    "blocks",
    "hidden",
    "depth",
    "icnn",
    "activation",
    "standardization",
    "init_gain",
    "radial_units",
)


def _table_misuse(args: argparse.Namespace) -> str | None:
    """What is wrong with the file-data options here, or None (they apply to file: data)."""
    given = [
        f"--{k.replace('_', '-')}"
        for k in ("drop_columns", "drop_flagged", "val_fraction", "test_fraction",
                  "val_file", "test_file")
        if getattr(args, k)
    ]  # fmt: skip
    if not given or (args.dataset or "").startswith("file:"):
        return None
    return f"{', '.join(given)} apply to file: data sets only; give --dataset file:/path.csv"


def _budget_misuse(args: argparse.Namespace) -> str | None:
    """What is wrong with --time-budget here, or None (it replaces iterations and epochs)."""
    if args.time_budget_s is None:
        return None
    given = [f"--{k}" for k in ("iterations", "epochs") if getattr(args, k) is not None]
    if given:
        return f"--time-budget replaces {given[0]}: give one of them"
    return None


def _context_columns_misuse(args: argparse.Namespace) -> str | None:
    """What is wrong with --context-columns here, or None (they split file: data only)."""
    from training.datasets.conditional import CONDITIONAL_TOYS

    ds = args.dataset or ""
    if args.context_columns is None or ds.startswith("file:"):
        return None
    if ds in CONDITIONAL_TOYS:
        return f"{ds} has its context built in; drop --context-columns"
    return (
        f"--context-columns applies to file: data sets only, not {ds or 'a preset'!r}; "
        "give --dataset file:/path.csv|.npy, or drop --context-columns"
    )


if __name__ == "__main__":
    raise SystemExit(main())
