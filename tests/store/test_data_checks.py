"""The data checks (model_store.data_checks): each refusal and warning fires on a table built
to have it, names the columns (and rows) involved, and stays quiet on the same table without
the defect; the rank check agrees with numpy's matrix_rank on the standardised data."""

from __future__ import annotations

import numpy as np
import pytest

from model_store.data_checks import (
    DataRefused,
    check_table,
    checked,
    column_names,
    resolve_drops,
)

NAMES = ["a", "b", "c", "d"]


def _clean(n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)) * [1.0, 2.0, 0.5, 3.0] + 10.0


def _checks(values: np.ndarray, names: list[str]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for f in check_table(values, names).findings:
        out.setdefault(f.check, []).append(f.columns)
    return out


def test_a_clean_table_has_no_findings() -> None:
    report = check_table(_clean(), NAMES)
    assert report.findings == [] and report.to_dict()["errors"] == []


def test_column_names_from_a_header_or_x() -> None:
    assert column_names(None, 3) == ["x1", "x2", "x3"]
    # pandas' index column has a blank name; repeated names are told apart
    assert column_names(["", "a", "a", " b "], 4) == ["x1", "a", "a.2", "b"]


def test_constant_column_is_refused_by_name() -> None:
    x = _clean()
    x[:, 2] = 4.25
    report = check_table(x, NAMES)
    assert [(f.check, f.columns) for f in report.errors] == [("constant_column", ["c"])]
    assert "'c' is constant (4.25" in report.refusal() and "drop" in report.refusal()


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_running_count_is_refused_as_an_index(shuffle: bool) -> None:
    index = np.arange(300.0) + 1
    if shuffle:  # an id column in shuffled order is still a count
        index = np.random.default_rng(1).permutation(index)
    x = np.column_stack([index, _clean()])
    assert _checks(x, ["id", *NAMES]) == {"index_column": [["id"]]}
    # integers that are not a running count (a gap, or repeats) are a feature
    gap = index.copy()
    gap[gap == 7] = 1000
    assert "index_column" not in _checks(np.column_stack([gap, _clean()]), ["id", *NAMES])
    counts = np.random.default_rng(2).integers(0, 50, 300).astype(float)
    assert "index_column" not in _checks(np.column_stack([counts, _clean()]), ["k", *NAMES])


@pytest.mark.parametrize("noise", [0.0, 1e-5])
def test_exact_and_near_exact_linear_relations_are_refused_naming_the_columns(
    noise: float,
) -> None:
    x = _clean()
    rng = np.random.default_rng(3)
    e = 2.0 * x[:, 0] - 0.5 * x[:, 3] + noise * rng.normal(size=len(x))
    table = np.column_stack([x, e]).astype(np.float32)  # as stored: float32
    report = check_table(table, [*NAMES, "e"])
    assert [(f.check, f.columns) for f in report.errors] == [("linear_dependency", ["e"])]
    message = report.errors[0].message
    assert "'e' is a linear combination of 'a', 'd'" in message  # only the columns it uses
    assert "'b'" not in message and "'c'" not in message


def test_a_strong_but_real_correlation_is_not_a_dependency() -> None:
    x = _clean()
    e = x[:, 0] + 0.05 * np.random.default_rng(4).normal(size=len(x))  # corr ~ 0.999
    assert check_table(np.column_stack([x, e]), [*NAMES, "e"]).errors == []


@pytest.mark.parametrize("relations", [1, 3])
def test_rank_deficiency_count_matches_numpy_matrix_rank(relations: int) -> None:
    """Independent reference: the number of dependent columns found is the rank deficiency
    of the standardised table as numpy.linalg.matrix_rank computes it."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(500, 6))
    mix = rng.normal(size=(6, relations))
    x = np.column_stack([base, base @ mix])
    names = column_names(None, x.shape[1])
    found = [f for f in check_table(x, names).errors if f.check == "linear_dependency"]
    z = (x - x.mean(0)) / x.std(0)
    assert len(found) == x.shape[1] - np.linalg.matrix_rank(z) == relations


def test_missing_cells_are_refused_naming_column_and_rows() -> None:
    x = _clean()
    x[[4, 9], 1] = np.nan
    x[20, 3] = np.inf
    report = check_table(x, NAMES)
    found = {f.columns[0]: f for f in report.errors}
    assert set(found) == {"b", "d"}
    assert found["b"].rows == [5, 10] and "at row(s) 5, 10" in found["b"].message
    assert found["d"].rows == [21]
    # the other checks still ran on the complete rows: nothing else is wrong
    assert {f.check for f in report.findings} == {"missing_values"}


def test_warnings_duplicates_few_rows_skew_near_constant() -> None:
    x = _clean(n=200)
    x[100:140] = x[:40]  # 40 repeated rows
    checks = _checks(x, NAMES)
    assert checks == {"duplicate_rows": [[]]}
    few = _checks(_clean(n=30), NAMES)
    assert few == {"few_rows": [NAMES]}  # 30 rows for 4 columns
    y = _clean()
    y[:, 1] = np.exp(3.0 * np.random.default_rng(6).normal(size=len(y)))  # lognormal, s=3
    y[:, 2] = 0.0
    y[:6, 2] = [1.0, -1.0, 2.0, -2.0, 3.0, -3.0]  # one value in 98% of the rows, no skew
    found = _checks(y, NAMES)
    assert found["skewed_column"] == [["b"]] and found["near_constant_column"] == [["c"]]
    assert check_table(y, NAMES).errors == []  # warnings only


def test_drops_explicit_and_flagged() -> None:
    x = _clean()
    x[:, 1] = 1.0
    with pytest.raises(DataRefused) as info:
        checked(x, NAMES)
    assert info.value.check == "constant_column"
    assert "drop the named columns: b" in str(info.value)
    values, names, report = checked(x, NAMES, drop_flagged=True)
    assert names == ["a", "c", "d"] and values.shape == (300, 3)
    assert report.dropped == ["b"] and report.errors == []
    values, names, _ = checked(x, NAMES, ["b"])
    assert names == ["a", "c", "d"]
    with pytest.raises(ValueError, match="cannot drop 'z': no such column"):
        resolve_drops(check_table(x, NAMES), ["z"])
    with pytest.raises(ValueError, match="would leave none"):
        resolve_drops(check_table(x, NAMES), NAMES)
