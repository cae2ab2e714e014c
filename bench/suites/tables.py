"""Real public tables: cpflow's ``auto`` recipe against zuko's NSF and MAF and a full-covariance
Gaussian, at equal iterations and batch.

    python -m bench run tables [--set tables=held_out seeds=0,1,2 iterations=1500]

Every table ships inside a registry package (scikit-learn's bundled data, statsmodels'
bundled data sets): nothing is downloaded at run time.

Columns. A table keeps its continuous columns: numeric, at least 20 distinct values, and no
point mass: no value on more than a third of the rows, and no value on more than 5% of them
unless the column is recorded on a lattice coarser than 1% of its std (a count's zero cell
becomes a density of width one step; a mass at 0 of a fine-grained column stays a spike that
would dominate every model's NLL); time indices (year, quarter),
row ids and columns that are functions of other kept columns (anes96's logpopul, star98's
interaction products) are dropped. Rows with a missing value are dropped.

Dequantisation. A column recorded on a lattice q * Z (q the largest power of ten <= 1 dividing
every value, e.g. 1 for counts, 0.1 for one decimal) with repeated values gets uniform noise of
one resolution step, U(-q/2, q/2), drawn once from a fixed seed
(training.datasets.sklearn_sets.dequantize): the probability of a recorded value becomes a
density over its cell.

Split and scaling. One fixed shuffle cuts each table 80/20 into train and test; the last eighth
of the train part is the validation rows every model uses to keep its best state (so every flow
trains on the same 70% and selects on the same 10%). Columns are standardised by the train
rows' mean and std for every model; NLLs are nats per row in those standardised units (the
same constant shift for all models).

Held out (decided 2026-12-04 ~07:50 UTC, BEFORE any tuning of the auto recipe): the recipe is
tuned on TUNING only; HELD_OUT is reported as held out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TUNING = (
    "sklearn:iris",
    "sklearn:wine",
    "statsmodels:engel",
    "statsmodels:modechoice",
)
HELD_OUT = (
    "sklearn:diabetes",
    "sklearn:breast_cancer",
    "statsmodels:macrodata",
    "statsmodels:star98",
    "statsmodels:grunfeld",
    "statsmodels:anes96",
    "statsmodels:cancer",
)


@dataclass(frozen=True)
class Table:
    """Where a table comes from and which of its columns are kept."""

    load: Callable[[], object]  # a pandas DataFrame
    columns: tuple[str, ...] | None  # None: every column passing the continuous-column rule
    drop: tuple[str, ...] = ()


def _sklearn(name: str, **kw) -> Callable[[], object]:
    def load():
        from sklearn import datasets

        return getattr(datasets, f"load_{name}")(as_frame=True, **kw).data

    return load


def _statsmodels(name: str) -> Callable[[], object]:
    def load():
        from statsmodels import datasets

        return getattr(datasets, name).load_pandas().data

    return load


STAR98_INTERACTIONS = (
    "PERMINTE_AVYRSEXP",
    "PERMINTE_AVSAL",
    "AVYRSEXP_AVSAL",
    "PERSPEN_PTRATIO",
    "PERSPEN_PCTAF",
    "PTRATIO_PCTAF",
    "PERMINTE_AVYRSEXP_AVSAL",
    "PERSPEN_PTRATIO_PCTAF",
)

TABLES: dict[str, Table] = {
    "sklearn:iris": Table(_sklearn("iris"), None),
    "sklearn:wine": Table(_sklearn("wine"), None),
    # raw (unscaled) values, so that their recording resolution shows
    "sklearn:diabetes": Table(_sklearn("diabetes", scaled=False), None),
    "sklearn:breast_cancer": Table(_sklearn("breast_cancer"), None),
    "statsmodels:engel": Table(_statsmodels("engel"), None),
    "statsmodels:modechoice": Table(_statsmodels("modechoice"), None, drop=("individual",)),
    "statsmodels:macrodata": Table(_statsmodels("macrodata"), None, drop=("year", "quarter")),
    "statsmodels:star98": Table(_statsmodels("star98"), None, drop=STAR98_INTERACTIONS),
    "statsmodels:grunfeld": Table(_statsmodels("grunfeld"), None, drop=("year",)),
    "statsmodels:anes96": Table(_statsmodels("anes96"), None, drop=("logpopul",)),
    "statsmodels:cancer": Table(_statsmodels("cancer"), None),
}

MIN_DISTINCT = 20
MAX_MODAL_SHARE = 1 / 3
MAX_SPIKE_SHARE = 0.05  # a column on a lattice finer than 1% of its std


def continuous_columns(frame) -> list[str]:
    """The columns passing the rule of the module docstring."""
    from training.datasets.sklearn_sets import lattice_step

    keep = []
    for col in frame.select_dtypes("number").columns:
        values = frame[col].dropna().to_numpy(dtype=np.float64)
        _, counts = np.unique(values, return_counts=True)
        modal = counts.max() / len(values)
        step = lattice_step(values) or 0.0
        coarse = step >= 0.01 * values.std()
        limit = MAX_MODAL_SHARE if coarse else MAX_SPIKE_SHARE
        if len(counts) >= MIN_DISTINCT and modal <= limit:
            keep.append(col)
    return keep


def table_array(name: str) -> tuple[np.ndarray, list[str]]:
    """The table's kept columns as float64 rows (rows with a missing value dropped)."""
    table = TABLES[name]
    frame = table.load()
    frame = frame.drop(columns=[c for c in table.drop if c in frame.columns])
    cols = list(table.columns or continuous_columns(frame))
    data = frame[cols].dropna().to_numpy(dtype=np.float64)
    return data, cols
