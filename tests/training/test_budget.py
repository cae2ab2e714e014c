"""Time budgets (issue #30): the plan from measured step times, the trainer that keeps to it,
and the settings that ask for it.

The trainer tests run on a fake clock that advances by a fixed time per optimiser step and per
scored row, so the plan and the stop are exact, not wall-clock races."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

import training.trainer as trainer_module
from training.budget import PLAN_MARGIN, plan_budget
from training.config import TrainConfig
from training.pipeline import build_configs
from training.recipes import auto_recipe
from training.trainer import Trainer

TINY_FLOW = {"blocks": 1, "hidden": 8, "depth": 1, "dtype": "float64"}


def _splits(n: int = 600, dim: int = 2) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, dim)) * np.linspace(0.5, 2.0, dim)).astype(np.float32)
    a, b = int(0.7 * n), int(0.85 * n)
    return SimpleNamespace(name="mix", train=x[:a], val=x[a:b], test=x[b:], sha256="abc")


class _Clock:
    """perf_counter for the trainer: a step costs ``step_s``, a scored row ``row_s``."""

    def __init__(self, step_s: float, row_s: float) -> None:
        self.now, self.step_s, self.row_s = 1000.0, step_s, row_s

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock(step_s=1.0, row_s=1e-4)
    monkeypatch.setattr(trainer_module.time, "perf_counter", fake)
    apply, score = Trainer._apply_gradient, Trainer._score

    def timed_apply(self: Trainer, step: int, lr: float) -> None:
        fake.now += fake.step_s
        apply(self, step, lr)

    def timed_score(self: Trainer, x, c, seed: int, keep=None):  # type: ignore[no-untyped-def]
        fake.now += fake.row_s * x.shape[0]
        return score(self, x, c, seed, keep)

    monkeypatch.setattr(Trainer, "_apply_gradient", timed_apply)
    monkeypatch.setattr(Trainer, "_score", timed_score)
    return fake


def test_the_plan_fills_the_time_left_after_the_last_validation_and_the_final_scoring() -> None:
    plan = plan_budget(100.0, 10.0, 20, step_s=0.1, validation_s=1.0, final_s=5.0, val_every=50)
    left = (100.0 - 10.0 - 5.0 - 1.0) * (1 - PLAN_MARGIN)
    per_iteration = 0.1 + 1.0 / 50
    assert plan.iterations == 20 + math.floor(left / per_iteration)
    assert plan.val_every == 50  # no recipe count: the configured interval stays


def test_the_recipe_count_of_validations_sets_the_interval_and_is_capped_by_their_cost() -> None:
    plan = plan_budget(
        100.0, 0.0, 0, step_s=0.01, validation_s=0.01, final_s=0.0, val_every=10, validations=200
    )
    assert plan.iterations * 0.01 + 200 * 0.01 <= 100.0 * (1 - PLAN_MARGIN) + 0.01
    assert plan.val_every == round(plan.iterations / 200)  # 10x the 2,000-iteration interval
    costly = plan_budget(
        100.0, 0.0, 0, step_s=0.01, validation_s=1.0, final_s=0.0, val_every=10, validations=200
    )
    # 200 validations of 1 s would take twice the budget: at most a quarter of it goes to them
    assert costly.iterations / costly.val_every <= 0.25 * 100.0 + 1
    spent = plan_budget(10.0, 12.0, 7, step_s=0.1, validation_s=1.0, final_s=1.0, val_every=10)
    assert spent.iterations == 7


def test_a_timed_run_plans_from_its_measured_steps_and_ends_within_its_budget(
    clock: _Clock,
) -> None:
    splits = _splits()
    cfg = TrainConfig(time_budget_s=60.0, batch_size=32, val_every=10, seed=1)
    start = clock.now
    trainer = Trainer(TINY_FLOW, splits, cfg)
    result = trainer.run()
    plan = trainer.budget_plan
    assert plan is not None and plan.step_s == pytest.approx(clock.step_s)
    # a validation scores the validation rows and up to train_nll_points train rows
    train_rows = min(len(splits.train), cfg.train_nll_points or 0)
    assert plan.validation_s == pytest.approx(clock.row_s * (len(splits.val) + train_rows))
    assert plan.final_s == pytest.approx(clock.row_s * (len(splits.train) + 2 * len(splits.val)))
    assert result.iterations_run == plan.iterations > 40  # ~60 s of 1 s steps
    assert clock.now - start <= cfg.time_budget_s
    assert clock.now - start >= 0.9 * cfg.time_budget_s  # and it used the budget
    record = result.extra["time_budget"]
    assert record["plan"]["iterations"] == plan.iterations and not record["stopped_by_budget"]
    best = min(h["val_nll"] for h in result.history)
    assert result.metrics["val_nll"] == pytest.approx(best)  # the best validated weights


def test_steps_slower_than_measured_stop_the_run_at_the_budget(clock: _Clock) -> None:
    splits = _splits()
    cfg = TrainConfig(time_budget_s=30.0, batch_size=32, val_every=5, seed=1)
    apply = Trainer._apply_gradient

    def slower_after_planning(self: Trainer, step: int, lr: float) -> None:
        if self.budget_plan is not None:
            clock.now += 2 * clock.step_s  # three times the measured step
        apply(self, step, lr)

    start = clock.now
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_apply_gradient", slower_after_planning)
        trainer = Trainer(TINY_FLOW, splits, cfg)
        result = trainer.run()
    assert trainer.budget_plan is not None
    assert result.iterations_run < trainer.budget_plan.iterations
    assert result.extra["time_budget"]["stopped_by_budget"]
    assert clock.now - start <= cfg.time_budget_s + 3 * clock.step_s  # one step past, at most
    assert result.history[-1]["iteration"] == result.iterations_run  # validated where it stopped
    assert result.best_iteration == min(result.history, key=lambda h: h["val_nll"])["iteration"]


def test_the_auto_recipe_sizes_its_schedule_to_the_budget(clock: _Clock) -> None:
    splits = _splits()
    recipe = auto_recipe(splits.train)
    assert recipe.train["budget_validations"] == 2000 // recipe.train["val_every"]
    _, flow, cfg, _ = build_configs(
        preset="auto",
        dataset=None,
        flow_overrides=TINY_FLOW,
        train_overrides={"time_budget_s": 80.0, "schedule": "cosine", "batch_size": 32},
        recipe=recipe,
    )
    assert cfg.iterations is None and cfg.time_budget_s == 80.0
    trainer = Trainer(flow, splits, cfg)
    trainer.run()
    plan = trainer.budget_plan
    assert plan is not None
    assert cfg.budget_validations == 200
    assert trainer.val_every == plan.val_every == max(1, round(plan.iterations / 200))
    assert trainer.schedule.total == plan.iterations  # the cosine decay spans the planned run
    # patience counted in validations: iterations without improvement grow with the interval
    assert cfg.early_stopping_patience is not None


def test_a_time_budget_replaces_iterations_and_epochs_but_not_both() -> None:
    assert TrainConfig(time_budget_s=60).iterations is None
    assert TrainConfig().iterations == 2000  # iteration runs as before
    for clash in ({"iterations": 100}, {"epochs": 3}):
        with pytest.raises(ValidationError, match="not both"):
            TrainConfig(time_budget_s=60, **clash)
    with pytest.raises(ValidationError, match="time_budget_s"):
        TrainConfig(iterations=None)
    # a preset's iterations give way to an explicit budget; an explicit val_every stays
    _, _, cfg, _ = build_configs(
        preset="tabular",
        dataset=None,
        train_overrides={"time_budget_s": 60, "val_every": 7},
    )
    assert cfg.iterations is None and cfg.epochs is None and cfg.val_every == 7
    assert cfg.budget_validations is None
