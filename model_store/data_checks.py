"""Checks of a table before a density model is trained on it: the one data report that the
upload route, cpflow-train and training jobs all compute (pure numpy, no I/O).

Degenerate tables are refused (``severity == "error"``): a density model fitted to them
reports numbers that mean nothing (a constant column or an exact linear relation has zero
variance in some direction, so its log-density grows without bound; a running row count is
not a feature; a missing cell has no value at all). Each refusal names the columns and what
to do, and :func:`drop_columns` is the explicit way out: drop the named columns and check
again. The other findings are warnings: the data can be trained on, but the user should know.

The report is a plain dict (``DataReport.to_dict``) stored with the data set and in the
manifest of every model trained on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "ERROR_CHECKS",
    "DataRefused",
    "DataReport",
    "Finding",
    "check_table",
    "checked",
    "column_names",
    "drop_columns",
    "resolve_drops",
]

Severity = Literal["error", "warning"]

ERROR_CHECKS = ("missing_values", "constant_column", "index_column", "linear_dependency")
"""Checks whose findings refuse the table (in the order they are reported)."""

NEAR_CONSTANT_SHARE = 0.95
"""A column whose most common value fills at least this share of the rows is near-constant."""

DEPENDENCY_TOLERANCE = 1e-6
"""A standardised column whose variance left after regressing it on the earlier columns is
below this is a linear combination of them (exact relations stored as float32 leave ~1e-12;
each such direction would be worth about -0.5 log(1e-6) = +7 nats of spurious density)."""

ROWS_PER_COLUMN = 10
"""Fewer rows than this per column: warn that the model will likely overfit."""

SKEW_LIMIT = 5.0
"""A column with |sample skewness| above this is extremely skewed: warn (a log transform helps)."""

RANK_ROWS = 50_000
"""Most rows the rank check reads (a seeded subsample of larger tables)."""

_SHOWN = 10  # most column or row names one message lists


@dataclass(frozen=True)
class Finding:
    """One problem of a table: which check, how serious, where, and what to do."""

    check: str
    severity: Severity
    columns: list[str]
    message: str
    rows: list[int] = field(default_factory=list)  # 1-based data rows, where a check names any


@dataclass(frozen=True)
class DataReport:
    """What the checks found in a table of ``rows`` x ``len(columns)``."""

    rows: int
    columns: list[str]
    findings: list[Finding]
    dropped: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """The findings that refuse the table."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The findings that only warn."""
        return [f for f in self.findings if f.severity == "warning"]

    def flagged(self) -> list[str]:
        """Columns named by refusals, in table order: what ``drop_flagged`` drops."""
        named = {c for f in self.errors for c in f.columns}
        return [c for c in self.columns if c in named]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON), as stored with data sets and manifests."""
        return {
            "rows": self.rows,
            "columns": list(self.columns),
            "dropped": list(self.dropped),
            "errors": [asdict(f) for f in self.errors],
            "warnings": [asdict(f) for f in self.warnings],
        }

    def refusal(self) -> str:
        """One message for all refusals, ending with the way out."""
        text = "; ".join(f.message for f in self.errors)
        flagged = self.flagged()
        if flagged:
            text += (
                f". To train without them, drop the named columns: {', '.join(flagged)} "
                "(upload field drop_columns, or drop_flagged=true; cpflow-train "
                "--drop-columns / --drop-flagged)"
            )
        return text


class DataRefused(ValueError):
    """The table is degenerate; ``report`` holds every finding, the message says what to do."""

    def __init__(self, report: DataReport) -> None:
        super().__init__(report.refusal())
        self.report = report

    @property
    def check(self) -> str:
        """The first refusal's check (its machine code)."""
        return self.report.errors[0].check


def column_names(header: Sequence[str] | None, dim: int) -> list[str]:
    """The columns' names: the header's (blank ones ``x<j>``, repeats suffixed ``.2``, ...),
    or ``x1`` ... ``x<dim>`` without a header."""
    names = [str(h).strip() for h in header] if header is not None else []
    if len(names) != dim:
        names = [""] * dim
    out: list[str] = []
    for j, name in enumerate(names):
        base = name or f"x{j + 1}"
        candidate, k = base, 1
        while candidate in out:
            k += 1
            candidate = f"{base}.{k}"
        out.append(candidate)
    return out


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _missing(values: np.ndarray, columns: list[str]) -> list[Finding]:
    bad = ~np.isfinite(values)
    findings = []
    for j in np.flatnonzero(bad.any(axis=0)):
        rows = (np.flatnonzero(bad[:, j]) + 1).tolist()
        findings.append(
            Finding(
                "missing_values", "error", [columns[j]],
                f"column {columns[j]!r} has {len(rows)} missing or non-finite cell(s), at "
                f"row(s) {_listed(rows)}: fill or remove those rows, or drop the column",
                rows[:_SHOWN],
            )
        )  # fmt: skip
    return findings


def _index_like(x: np.ndarray) -> bool:
    """A running count: distinct integers filling a range (a saved row index, an id)."""
    n = len(x)
    if n < 3 or not np.all(x == np.round(x)):
        return False
    return bool(x.max() - x.min() == n - 1 and len(np.unique(x)) == n)


def _column_findings(values: np.ndarray, columns: list[str]) -> list[Finding]:
    """Constant, near-constant, index-like and extremely skewed columns."""
    findings = []
    n = len(values)
    by_column = np.ascontiguousarray(values.T)  # one copy; strided column reads are slow
    for j, name in enumerate(columns):
        x = by_column[j]
        std = float(x.std()) if n else 0.0
        if std <= 1e-12 * max(abs(float(x.mean())) if n else 0.0, 1.0):
            findings.append(Finding(
                "constant_column", "error", [name],
                f"column {name!r} is constant ({float(x[0]) if n else 0.0:g} in every row): a "
                "density has nothing to fit there; drop the column",
            ))  # fmt: skip
            continue
        if _index_like(x):
            findings.append(Finding(
                "index_column", "error", [name],
                f"column {name!r} is a running count ({x.min():g} to {x.max():g}, each value "
                "once): a saved row index or id, not a feature; drop the column (or save "
                "the file without it, e.g. pandas to_csv(index=False))",
            ))  # fmt: skip
            continue
        # A value in over half the rows is the median: one pass finds it (no sort)
        share = float(np.count_nonzero(x == np.median(x))) / n
        if share >= NEAR_CONSTANT_SHARE:
            findings.append(Finding(
                "near_constant_column", "warning", [name],
                f"column {name!r} holds one value in {share:.1%} of the rows: the model sees "
                "almost no spread there; consider dropping it",
            ))  # fmt: skip
        z = (x - x.mean()) / std
        skew = float(np.mean(z * z * z))
        if abs(skew) > SKEW_LIMIT:
            findings.append(Finding(
                "skewed_column", "warning", [name],
                f"column {name!r} is extremely skewed (skewness {skew:.3g}): a few extreme "
                "rows dominate it; a log or rank transform usually trains better",
            ))  # fmt: skip
    return findings


def _dependencies(values: np.ndarray, columns: list[str]) -> list[Finding]:
    """Columns that are (near-)exact linear combinations of earlier columns, each named with
    the columns it depends on: the in-order QR of the standardised table."""
    n, d = values.shape
    if d < 2 or n < 2:
        return []
    if n > RANK_ROWS:
        keep = np.sort(np.random.default_rng(0).choice(n, RANK_ROWS, replace=False))
        values = values[keep]
        n = RANK_ROWS
    z = (values - values.mean(axis=0)) / values.std(axis=0)
    r = np.linalg.qr(z / np.sqrt(n), mode="r")
    residual = np.diag(r) ** 2  # variance of column j left by the columns before it
    dependent = np.flatnonzero(residual < DEPENDENCY_TOLERANCE)
    if n <= d:  # more columns than rows: the rank cannot exceed the rows
        dependent = np.union1d(dependent, np.arange(n - 1, d))
    findings = []
    for j in dependent:
        before = [k for k in range(j) if k not in set(dependent.tolist())]
        coef = np.linalg.lstsq(z[:, before], z[:, j], rcond=None)[0] if before else np.zeros(0)
        used = [columns[before[i]] for i in np.flatnonzero(np.abs(coef) > 1e-3)]
        findings.append(Finding(
            "linear_dependency", "error", [columns[j]],
            f"column {columns[j]!r} is a linear combination of {_listed(used) or 'the others'} "
            f"(variance left {float(residual[j]) if j < len(residual) else 0.0:.2g} of its "
            "own): the data has no density in that direction; drop the column",
        ))  # fmt: skip
    return findings


def _repeated_rows(values: np.ndarray) -> int:
    """How many rows repeat an earlier row exactly: rows hashed to one integer each (a
    1-D sort, not a row-wise one), then only the rows whose hashes collide are compared."""
    if len(values) < 2:
        return 0
    clean = np.ascontiguousarray(values + 0.0)  # + 0.0: -0.0 becomes 0.0, equal as numbers
    bits = clean.view(np.uint64)
    weights = np.random.default_rng(0).integers(1, 2**63, bits.shape[1], dtype=np.uint64) | 1
    with np.errstate(over="ignore"):
        hashes = (bits * weights).sum(axis=1, dtype=np.uint64)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    if not shared.any():
        return 0
    candidates = clean[shared]
    return len(candidates) - len(np.unique(candidates, axis=0))


def _table_findings(values: np.ndarray, columns: list[str], rows: int) -> list[Finding]:
    findings = []
    repeated = _repeated_rows(values)
    if repeated:
        findings.append(Finding(
            "duplicate_rows", "warning", [],
            f"{repeated} of {len(values)} rows repeat an earlier row exactly: "
            "a density model puts spikes on repeats; drop them unless they are real",
        ))  # fmt: skip
    if rows < ROWS_PER_COLUMN * len(columns):
        findings.append(Finding(
            "few_rows", "warning", list(columns),
            f"{rows} rows for {len(columns)} columns (fewer than {ROWS_PER_COLUMN} per column): "
            "the model will likely overfit; get more rows or drop columns",
        ))  # fmt: skip
    return findings


def check_table(
    values: np.ndarray, columns: Sequence[str], *, dropped: Sequence[str] = ()
) -> DataReport:
    """Every check on ``values`` (rows x columns, float; NaN or inf where a cell is missing).

    Checks after the missing-value one read the complete rows only, so one report names
    every problem at once."""
    values = np.asarray(values, dtype=np.float64)
    names = list(columns)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"values of shape {values.shape} do not match {len(names)} column names")
    findings = _missing(values, names)
    finite = np.isfinite(values).all(axis=1)
    complete = values if finite.all() else values[finite]
    per_column = _column_findings(complete, names)
    findings += per_column
    degenerate = {c for f in per_column if f.severity == "error" for c in f.columns}
    live = [j for j, c in enumerate(names) if c not in degenerate]
    findings += _dependencies(complete[:, live], [names[j] for j in live])
    findings += _table_findings(complete, names, len(values))
    order = {check: i for i, check in enumerate(ERROR_CHECKS)}
    findings.sort(key=lambda f: (f.severity != "error", order.get(f.check, len(order))))
    return DataReport(len(values), names, findings, list(dropped))


def resolve_drops(
    report: DataReport, drop: Sequence[str] = (), *, flagged: bool = False
) -> list[str]:
    """The columns to drop: those named in ``drop`` (ValueError naming any unknown one),
    plus every column a refusal names when ``flagged``."""
    unknown = [c for c in drop if c not in report.columns]
    if unknown:
        raise ValueError(
            f"cannot drop {_listed(unknown)}: no such column; the columns are "
            f"{_listed(report.columns)}"
        )
    wanted = set(drop) | (set(report.flagged()) if flagged else set())
    if len(wanted) >= len(report.columns):
        raise ValueError("dropping those columns would leave none; keep at least one")
    return [c for c in report.columns if c in wanted]


def drop_columns(
    values: np.ndarray, columns: Sequence[str], drop: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """``values`` and ``columns`` without the columns named in ``drop``."""
    keep = [j for j, c in enumerate(columns) if c not in set(drop)]
    return np.asarray(values)[:, keep], [columns[j] for j in keep]


def checked(
    values: np.ndarray,
    columns: Sequence[str],
    drop: Sequence[str] = (),
    *,
    drop_flagged: bool = False,
) -> tuple[np.ndarray, list[str], DataReport]:
    """Check a table, drop the columns asked for, check again: (values, columns, report), or
    DataRefused when a refusal remains (ValueError for a bad ``drop``)."""
    report = check_table(values, columns)
    gone = resolve_drops(report, drop, flagged=drop_flagged)
    if gone:
        values, columns = drop_columns(values, columns, gone)
        report = check_table(values, columns, dropped=gone)
    if report.errors:
        raise DataRefused(report)
    return np.asarray(values), list(columns), report
