"""cpflow-train: train a CP-Flow on a data set and publish it to the model store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from training.presets import PRESETS

    p = argparse.ArgumentParser(
        prog="cpflow-train",
        description="Train a Convex Potential Flow and publish it as a new model version.",
    )
    p.add_argument(
        "--dataset",
        help="built-in name (eight_gaussians, sklearn:wine, ...), "
        "power/gas/... with --data-dir, or file:/path.csv|.npy",
    )
    p.add_argument("--name", required=True, help="model name in the store")
    p.add_argument("--preset", choices=sorted(PRESETS), help="paper settings (see README)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["none", "plateau", "cosine"])
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--val-every", type=int)
    p.add_argument("--early-stopping", type=int, dest="early_stopping_patience")
    p.add_argument("--blocks", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--icnn", choices=["vanilla", "augmented", "dense"])
    p.add_argument("--activation", choices=["logistic", "gaussian", "laplace"])
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: CPFLOW_DEVICE or cpu)")
    p.add_argument("--num-samples", type=int, help="rows to generate for toy data sets")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--store-dir",
        default=os.environ.get("CPFLOW_STORE_DIR", "./var/store"),
        help="model store root (default: CPFLOW_STORE_DIR or ./var/store)",
    )
    p.add_argument("--data-dir", help="folder with the paper's tabular data sets")
    p.add_argument("--checkpoint-dir", help="resumable trainer checkpoints go here")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--onnx", action="store_true", help="also export the transport map to ONNX")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if not args.dataset and not args.preset:
        print(
            "cpflow-train: give --dataset or a --preset with a default data set", file=sys.stderr
        )
        return 2

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tqdm import tqdm

    from model_store import ModelStore
    from training.pipeline import train_and_publish
    from training.presets import PresetError
    from training.trainer import ProgressEvent, TrainingError

    flow_kw = {k: getattr(args, k) for k in ("blocks", "hidden", "depth", "icnn", "activation")}
    train_kw = {
        k: getattr(args, k)
        for k in (
            "iterations",
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "schedule",
            "grad_clip",
            "val_every",
            "early_stopping_patience",
            "seed",
            "dtype",
            "checkpoint_every",
        )
    }
    train_kw["device"] = args.device or os.environ.get("CPFLOW_DEVICE") or None
    bar: tqdm | None = None

    def progress(ev: ProgressEvent) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=ev.total, unit="it", dynamic_ncols=True, file=sys.stderr)
        bar.n = ev.iteration
        post = {}
        if ev.surrogate_loss is not None:
            post["surrogate"] = f"{ev.surrogate_loss:.3f}"
        if ev.val_nll is not None:
            post["val_nll"] = f"{ev.val_nll:.4f}"
        if ev.cg_iterations is not None:
            post["cg"] = f"{ev.cg_iterations:.1f}"
        if ev.phase != "train":
            post["phase"] = ev.phase
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    try:
        store = ModelStore(args.store_dir)
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
            progress=progress,
            checkpoint_dir=args.checkpoint_dir,
            export_onnx=args.onnx,
        )
    except (TrainingError, PresetError, ValueError) as exc:
        if bar is not None:
            bar.close()
        print(f"cpflow-train: error: {exc}", file=sys.stderr)
        return 1
    if bar is not None:
        bar.close()
    training = published.manifest.get("training", {})
    out = {
        "name": published.name,
        "version": published.version,
        "path": str(published.path),
        "metrics": training.get("metrics"),
        "wall_time_s": training.get("wall_time_s"),
        "seconds_per_iteration": training.get("seconds_per_iteration"),
        "parameter_count": training.get("parameter_count"),
        "plots": published.manifest.get("plots"),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
