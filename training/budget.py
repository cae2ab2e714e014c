"""Time budgets: how many iterations (and how often to validate) fit a wall-clock budget.

A run with ``TrainConfig.time_budget_s`` has no iteration count up front. The trainer times its
first validation and its first optimiser steps (:data:`CALIBRATION_STEPS`, or fewer when they
take :data:`CALIBRATION_SHARE` of the budget), then :func:`plan_budget` turns the measured step
and validation times into the run's iteration count and validation interval, keeping back the
time of the last validation and of the final scoring (train / val / test) so that the whole run
ends within the budget. Everything the schedule measures in iterations follows from that plan:
the cosine decay runs over the planned iterations, and the plateau decay and early stopping,
counted in validations, scale with the validation interval. A guard in the loop ends the run
early when steps turn out slower than measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CALIBRATION_SHARE", "CALIBRATION_STEPS", "BudgetPlan", "plan_budget"]

CALIBRATION_STEPS = 10
"""Optimiser steps timed before the plan is made (the first one, with its one-off costs, is
not counted in the mean unless it is the only one)."""

CALIBRATION_SHARE = 0.1
"""Fraction of the budget after which calibration ends even with fewer steps."""

PLAN_MARGIN = 0.05
"""Fraction of the time left that the plan leaves unused, for steps slower than measured."""

MAX_VALIDATION_SHARE = 0.25
"""Most of the time left that validations may take when their count is set by the recipe."""


@dataclass(frozen=True)
class BudgetPlan:
    """The planned run: total iterations, validation interval, and the times behind them."""

    iterations: int
    val_every: int
    step_s: float
    validation_s: float
    final_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_budget(
    budget_s: float,
    elapsed_s: float,
    done: int,
    *,
    step_s: float,
    validation_s: float,
    final_s: float,
    val_every: int,
    validations: int | None = None,
) -> BudgetPlan:
    """The plan for the rest of a run that has spent ``elapsed_s`` of ``budget_s`` seconds on
    ``done`` iterations, one step costing ``step_s`` and one validation ``validation_s``.

    ``validations`` (the recipe's) spreads that many validations over the planned run, so the
    interval grows with the budget (fewer when they would take more than
    :data:`MAX_VALIDATION_SHARE` of the time left); None keeps ``val_every``. The time of one
    last validation and ``final_s`` (the final scoring) are kept back, and :data:`PLAN_MARGIN`
    of the rest. A budget already spent
    plans no more iterations (``iterations == done``).
    """
    step_s = max(step_s, 1e-9)
    left = (budget_s - elapsed_s - final_s - validation_s) * (1 - PLAN_MARGIN)
    if validations is None:
        total = done + max(0, math.floor(left / (step_s + validation_s / val_every)))
    else:
        count = validations
        if validation_s > 0:
            count = min(count, max(1, math.floor(MAX_VALIDATION_SHARE * left / validation_s)))
        total = done + max(0, math.floor((left - count * validation_s) / step_s))
        val_every = max(1, round(total / count))
    return BudgetPlan(total, val_every, step_s, validation_s, final_s)
