"""Data -> trained flow -> metrics and plots -> a new version in the model store.

This is the one function the CLI and the queue worker both call, so a model trained from the
command line and one trained through the HTTP API carry the same training summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_store.calibration import reference_summary
from training.config import TrainConfig
from training.presets import resolve_preset
from training.recipes import AUTO, Recipe, auto_recipe, image_shape_of, rows_of
from training.splits_protocol import Splits, SplitsInfo, splits_info
from training.trainer import ProgressEvent, Trainer, TrainResult

__all__ = [
    "IMAGE_DATASETS",
    "auto_record",
    "build_configs",
    "data_summary",
    "load_splits",
    "train_and_publish",
    "training_summary",
]

log = logging.getLogger(__name__)


IMAGE_DATASETS = ("digits", "mnist", "cifar10")


def load_splits(
    dataset: Any,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    context_columns: Any = None,
    table: Any = None,
) -> Any:
    """A data set name goes through ``training.datasets.load_dataset`` (``wishart_gaussian:D``
    builds the OT experiment's Gaussian; ``digits``, ``mnist`` and ``cifar10`` are images; the
    conditional toys, or any data with ``context_columns``, give (x, c) splits); splits pass
    through. ``table`` (training.datasets.TableOptions) says how a file is checked and split."""
    if isinstance(dataset, str):
        from training.datasets.conditional import is_conditional_source, load_conditional_dataset

        if is_conditional_source(dataset, context_columns):
            return load_conditional_dataset(
                dataset, context_columns, num_samples=num_samples, seed=seed
            )
        if dataset in IMAGE_DATASETS:
            from training.images import load_image_dataset

            return load_image_dataset(dataset, data_dir=data_dir, seed=seed)
        from training.ot import make_splits, parse_ot_dataset

        ot_dim = parse_ot_dataset(dataset)
        if ot_dim is not None:
            return make_splits(ot_dim, num_samples=num_samples, seed=seed)[0]
        from training.datasets import load_dataset

        return load_dataset(
            dataset, num_samples=num_samples, seed=seed, data_dir=data_dir, table=table
        )
    return dataset


def build_configs(
    *,
    preset: str | None,
    dataset: str | None,
    flow_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    recipe: Recipe | None = None,
) -> tuple[str | None, dict[str, Any], TrainConfig, int | None]:
    """Merge a preset with explicit overrides (explicit wins); ``dim`` is left to the data.

    The ``auto`` preset needs the ``recipe`` that ``training.recipes.auto_recipe`` chose for
    the data."""
    flow: dict[str, Any] = {}
    train_kw: dict[str, Any] = {}
    num_samples = None
    if preset == AUTO:
        if recipe is None:
            raise ValueError("the auto preset is chosen from the data: pass its recipe")
        flow, train_kw = dict(recipe.flow), dict(recipe.train)
    elif preset:
        dataset, flow, train_kw, num_samples = resolve_preset(preset, dataset)
    flow.update({k: v for k, v in (flow_overrides or {}).items() if v is not None})
    overrides = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    if "iterations" in overrides:
        train_kw["epochs"] = None  # an explicit iteration budget replaces a preset's epochs
    if "time_budget_s" in overrides:  # a time budget replaces a preset's iterations or epochs
        train_kw.pop("iterations", None)
        train_kw.pop("epochs", None)
    if {"val_every", "iterations", "epochs"} & set(overrides):
        train_kw.pop("budget_validations", None)  # the user's own validation interval
    train_kw.update(overrides)
    return dataset, flow, TrainConfig.model_validate(train_kw), num_samples


def auto_record(
    recipe: Recipe, flow_overrides: dict[str, Any], train_overrides: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's record of the auto recipe: its choices with reasons, and which of them
    explicit options overrode."""
    explicit = {k for k, v in {**flow_overrides, **train_overrides}.items() if v is not None}
    return {
        "choices": recipe.choices,
        "overridden": sorted(explicit & set(recipe.choices)),
    }


def data_summary(splits: Splits) -> dict[str, Any]:
    """What kind of data a model was trained on: rows, images (shape and grey levels) or
    (x, c) with its context columns; for a user's table also its column names, data report
    and how it was split."""
    info = splits_info(splits)
    meta = getattr(splits, "meta", None) or {}
    keys = ("columns", "context_names", "data_report", "split")
    table = {k: meta[k] for k in keys if k in meta}
    return {**_kind_summary(info), **table}


def _kind_summary(info: SplitsInfo) -> dict[str, Any]:
    if info.contexts is not None:
        return {
            "kind": "conditional",
            "context_columns": list(info.context_columns or []),
            "context_dim": int(info.contexts[0].shape[1]),
        }
    if info.levels:
        return {
            "kind": "image",
            "input_shape": list(info.image_shape or ()),
            "levels": info.levels,
        }
    return {"kind": "rows"}


def training_summary(
    result: TrainResult,
    *,
    dataset_name: str,
    dataset_sha256: str,
    job_id: str | None,
    preset: str | None,
    num_train: int,
) -> dict[str, Any]:
    """What the manifest's ``training`` field records about this run."""
    compact = [
        {
            k: h.get(k)
            for k in ("iteration", "val_nll", "val_nll_stderr", "train_nll", "surrogate", "lr")
        }
        for h in result.history
    ]
    return {
        "dataset": dataset_name,
        "sha256": dataset_sha256,
        "num_train": num_train,
        "preset": preset,
        "config": result.train_config.model_dump(mode="json"),
        "metrics": dict(result.metrics),
        "wall_time_s": result.wall_time_s,
        "parameter_count": result.parameter_count,
        "iterations_run": result.iterations_run,
        "best_iteration": result.best_iteration,
        "stopped_early": result.stopped_early,
        "world_size": result.metrics.get("world_size", 1),
        "global_batch_size": result.metrics.get("global_batch_size"),
        "seconds_per_iteration": (
            result.extra.get("seconds_per_iteration")
            if result.extra.get("seconds_per_iteration") is not None
            else result.wall_time_s / max(result.iterations_run, 1)
        ),
        "job_id": job_id,
        "history": compact,
        **{k: result.extra[k] for k in ("time_budget",) if k in result.extra},
    }


def train_and_publish(
    dataset: Any,
    model_name: str,
    store: Any,
    flow_config: Any = None,
    train_config: TrainConfig | dict | None = None,
    *,
    preset: str | None = None,
    num_samples: int | None = None,
    data_dir: str | Path | None = None,
    dataset_seed: int = 0,
    job_id: str | None = None,
    make_plots: bool = True,
    progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    export_onnx: bool = True,
    context_columns: Any = None,
    tenant: str | None = None,
    table: Any = None,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> Any:
    """Train on ``dataset`` (name or splits; None: the preset's default data set) and publish
    the best flow as a new version.

    ``on_stage(stage, details)`` hears each stage as it begins: ``loading``, ``training``
    (details: ``{"resolved": ...}``, what the run will train with and why), ``plotting`` and
    ``publishing`` (the trainer's progress events tell validation and evaluation apart).

    ``context_columns`` (with file data) trains p(x | c) on the other columns; ``table``
    (training.datasets.TableOptions) drops columns and chooses the hold-outs of file data.
    ``tenant``: the version is that tenant's (a job of a service with CPFLOW_MODEL_SCOPE=tenant).
    ``flow_config`` may be a FlowConfig or a dict of overrides without ``dim``;
    ``train_config`` a TrainConfig or a dict. A ``preset`` fills what they leave out; without
    one the ``auto`` recipe chooses from the loaded data (the manifest's ``training.auto``
    says what it chose and why).
    Returns the store's PublishedVersion (None on the ranks other than 0 of a torchrun group).
    """
    from model_store import ModelStore

    if not hasattr(store, "publish"):
        store = ModelStore(store)
    stage = on_stage or (lambda name, details: None)
    stage("loading", {})
    plan = _plan(
        dataset, flow_config, train_config, preset=preset or AUTO, num_samples=num_samples,
        data_dir=data_dir, dataset_seed=dataset_seed, context_columns=context_columns,
        table=table,
    )  # fmt: skip
    info = splits_info(plan.splits)
    stage("training", {"resolved": resolved_spec(plan)})
    ot_curve, hook = None, None
    if info.problem is not None:  # the OT experiment: follow KL and transport cost as Fig. 4
        from training.ot import ot_monitor

        ot_curve, hook = ot_monitor(info.problem, np.asarray(plan.splits.test)[:2000])
    trainer = Trainer(
        plan.flow, plan.splits, plan.train, progress=progress, should_stop=should_stop,
        checkpoint_dir=checkpoint_dir, on_validate=hook,
    )  # fmt: skip
    result = trainer.run()
    if not trainer.group.main:  # in a torchrun group, rank 0 alone publishes (one version)
        return None
    if make_plots:
        stage("plotting", {})
    plots = _plots(result, plan.splits, info, ot_curve) if make_plots else None
    summary = _summary(result, plan, info, ot_curve, job_id)
    stage("publishing", {})
    return store.publish(
        model_name,
        result.flow,
        training=summary,
        plots=plots,
        export_onnx=export_onnx,
        tenant=tenant,
    )


def resolved_spec(plan: _Plan) -> dict[str, Any]:
    """What a run trains with: the preset, the flow and trainer settings after the preset or
    the auto recipe filled what was left out, and (auto) each choice with its reason."""
    resolved: dict[str, Any] = {
        "preset": plan.preset,
        "data": {"name": str(plan.dataset_name), "train_rows": len(plan.splits.train)},
        "model": dict(plan.flow),
        "training": plan.train.model_dump(mode="json"),
    }
    if plan.recipe is not None:
        resolved["auto"] = auto_record(plan.recipe, plan.flow_overrides, plan.train_overrides)
    return resolved


@dataclass(frozen=True)
class _Plan:
    """What a run trains: the loaded splits and the merged flow and trainer settings."""

    splits: Splits
    dataset_name: Any
    preset: str
    flow: dict[str, Any]
    train: TrainConfig
    recipe: Recipe | None
    flow_overrides: dict[str, Any]
    train_overrides: dict[str, Any]


def _plan(
    dataset: Any,
    flow_config: Any,
    train_config: TrainConfig | dict | None,
    *,
    preset: str,
    num_samples: int | None,
    data_dir: str | Path | None,
    dataset_seed: int,
    context_columns: Any,
    table: Any = None,
) -> _Plan:
    """Load the data and merge preset (or the auto recipe, which needs the data), and
    explicit overrides into the run's settings."""
    by_name = dataset is None or isinstance(dataset, str)  # None: the preset's data set
    ds_name = dataset if by_name else splits_info(dataset).name or "custom"
    flow_overrides = (
        flow_config.model_dump() if hasattr(flow_config, "model_dump") else dict(flow_config or {})
    )
    train_overrides = (
        train_config.model_dump(exclude_unset=True)
        if isinstance(train_config, TrainConfig)
        else dict(train_config or {})
    )
    configs: dict[str, Any] = {
        "flow_overrides": flow_overrides,
        "train_overrides": train_overrides,
    }
    ds_resolved, preset_samples = ds_name if by_name else None, None
    if preset != AUTO:
        ds_resolved, flow_kw, cfg, preset_samples = build_configs(
            preset=preset, dataset=ds_resolved, **configs
        )
    if by_name:
        ds_name = ds_resolved or dataset
        if ds_name is None:
            raise ValueError(f"no data set: give one (preset {preset!r} names no default)")
    splits = load_splits(
        ds_name if by_name else dataset,
        num_samples=num_samples or preset_samples,
        seed=dataset_seed,
        data_dir=data_dir,
        context_columns=context_columns,
        table=table,
    )
    recipe = None
    if preset == AUTO:
        recipe = auto_recipe(rows_of(splits), image_shape=image_shape_of(splits))
        _, flow_kw, cfg, _ = build_configs(preset=AUTO, dataset=None, recipe=recipe, **configs)
    return _Plan(splits, ds_name, preset, flow_kw, cfg, recipe, flow_overrides, train_overrides)


def _summary(
    result: TrainResult, plan: _Plan, info: SplitsInfo, ot_curve: list[Any] | None, job_id: Any
) -> dict[str, Any]:
    """The manifest's ``training`` record of a finished run: its metrics, data, calibration
    reference, the auto recipe's choices and the OT experiment's figures where they apply."""
    summary = training_summary(
        result,
        dataset_name=str(info.name if info.name is not None else plan.dataset_name),
        dataset_sha256=info.sha256,
        job_id=job_id,
        preset=plan.preset,
        num_train=len(plan.splits.train),
    )
    summary.update(data_summary(plan.splits))
    heldout = result.extra.get("heldout_log_prob")
    if heldout is not None:  # the reference of calibrated scores (model_store.calibration)
        summary["calibration"] = reference_summary(
            heldout[1], split=heldout[0], method=result.metrics["method"]
        )
    if plan.recipe is not None:
        summary["auto"] = auto_record(plan.recipe, plan.flow_overrides, plan.train_overrides)
    if ot_curve:
        summary["ot"] = {
            "w2_squared_optimum": info.problem.w2_squared,
            "final_kl": ot_curve[-1][0],
            "final_transport_cost": ot_curve[-1][1],
        }
    return summary


def _plots(
    result: TrainResult, splits: Splits, info: SplitsInfo, ot_curve: list[Any] | None
) -> dict[str, bytes] | None:
    """The model's figures (None if plotting fails: a figure must never lose a model)."""
    from training.diagnostics import HELDOUT_ROWS, HELDOUT_ROWS_SLQ, heldout_rows
    from training.plots import make_plots, ot_figure

    try:
        contexts, flow = info.contexts, result.flow
        most = HELDOUT_ROWS if flow.dim <= flow.config.exact_max_dim else HELDOUT_ROWS_SLQ
        plots = make_plots(
            flow,
            splits.train,
            result.history,
            contexts=None if contexts is None else contexts[0],
            heldout=heldout_rows(splits, most, seed=result.train_config.seed),
            loss=result.metrics.get("train_loss"),
            best_iteration=result.best_iteration,
            columns=(getattr(splits, "meta", None) or {}).get("columns"),
        )
        if ot_curve:
            plots["ot_transport_vs_kl.png"] = ot_figure(
                {"CP-Flow": ot_curve}, info.problem.w2_squared, title=str(info.name)
            )
    except Exception:
        log.exception("plotting failed; publishing without plots")
        return None
    return plots
