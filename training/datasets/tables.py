"""A user's table (a file for cpflow-train, an upload for a job) -> checked train/val/test.

The data checks (model_store.data_checks, the same the upload route runs) refuse a
degenerate table naming its columns, unless the caller drops them; their report and the
column names travel in the splits' ``meta`` to the manifest. The hold-outs are the user's to
choose: fractions of the table, or their own validation / test tables, and a table given as
the validation or test set is not cut from the training table again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model_store.data_checks import checked, column_names

from .errors import DatasetError
from .splits import SPLIT_FRACTIONS, SPLIT_SEED, DatasetSplits, make_splits, random_split

__all__ = ["Holdout", "TableOptions", "check_table_values", "table_splits"]


@dataclass(frozen=True)
class TableOptions:
    """What the user chose about a table: columns to drop and the hold-outs.

    ``val_fraction`` / ``test_fraction`` default to 0.15 each, and to 0 when the matching
    table is given (``val_file`` / ``test_file``: paths for cpflow-train)."""

    drop_columns: tuple[str, ...] = ()
    drop_flagged: bool = False
    val_fraction: float | None = None
    test_fraction: float | None = None
    val_file: str | None = None
    test_file: str | None = None


@dataclass(frozen=True)
class Holdout:
    """A validation or test table the user gave: its values, column names and source."""

    values: np.ndarray
    header: list[str] | None
    source: str


def check_table_values(
    values: np.ndarray, header: list[str] | None, options: TableOptions, source: str
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """(values, columns, report dict) after the data checks and the drops; DatasetError
    (whose message names the columns and the way out) when the table is refused."""
    try:
        kept, columns, report = checked(
            values, column_names(header, values.shape[1]), options.drop_columns,
            drop_flagged=options.drop_flagged,
        )  # fmt: skip
    except ValueError as exc:  # DataRefused, or a drop that names no column
        raise DatasetError(f"{source}: {exc}") from None
    return kept, columns, report.to_dict()


def _fraction(value: float | None, given: Holdout | None, what: str) -> float:
    if given is not None:
        if value:
            raise DatasetError(
                f"a {what} table was given: leave the {what} fraction unset (or 0); the "
                "training table is not cut again"
            )
        return 0.0
    fraction = SPLIT_FRACTIONS[1] if value is None else float(value)
    if not 0.0 < fraction < 0.9:
        raise DatasetError(f"the {what} fraction must be above 0 and below 0.9, got {value}")
    return fraction


def _holdout(part: Holdout, original: list[str], kept: list[str], what: str) -> np.ndarray:
    """A hold-out table as the training table's kept columns: by name when it has a header,
    by position otherwise; it must be complete."""
    width = part.values.shape[1]
    names = original if part.header is None else column_names(part.header, width)
    if width != len(original) or set(names) != set(original):
        raise DatasetError(
            f"{part.source}: the {what} table's columns ({', '.join(names)}) are not the "
            f"training table's ({', '.join(original)})"
        )
    values = part.values[:, [names.index(c) for c in kept]]
    if not np.isfinite(values).all():
        r, c = (int(i) for i in np.argwhere(~np.isfinite(values))[0])
        raise DatasetError(
            f"{part.source}: the {what} table has a missing or non-finite cell at row "
            f"{r + 1}, column {kept[c]!r}: fill or remove that row"
        )
    return values


def table_splits(
    name: str,
    values: np.ndarray,
    header: list[str] | None,
    options: TableOptions,
    *,
    val: Holdout | None = None,
    test: Holdout | None = None,
    seed: int = SPLIT_SEED,
    meta: dict[str, Any] | None = None,
) -> DatasetSplits:
    """Check ``values``, then split it by the options' fractions into train / val / test,
    taking the given ``val`` / ``test`` tables instead of cutting those parts."""
    kept, columns, report = check_table_values(values, header, options, name)
    fractions = (
        _fraction(options.val_fraction, val, "validation"),
        _fraction(options.test_fraction, test, "test"),
    )
    if sum(fractions) >= 0.9:
        raise DatasetError(f"validation and test fractions {fractions} leave too few rows")
    train, cut_val, cut_test = random_split(
        kept, seed=seed, fractions=(1 - sum(fractions), *fractions)
    )
    original = column_names(header, values.shape[1])
    val_rows = cut_val if val is None else _holdout(val, original, columns, "validation")
    test_rows = cut_test if test is None else _holdout(test, original, columns, "test")
    split = {
        "val_fraction": fractions[0], "test_fraction": fractions[1], "seed": seed,
        "val": "split" if val is None else val.source,
        "test": "split" if test is None else test.source,
    }  # fmt: skip
    full_meta = {**(meta or {}), "columns": columns, "data_report": report, "split": split}
    return make_splits(name, train, val_rows, test_rows, meta=full_meta)
