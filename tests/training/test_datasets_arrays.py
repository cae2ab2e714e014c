"""User arrays (.npy / .csv): what parses, and a clear DatasetError for every bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest

from training.datasets import DatasetError, load_array_file, load_dataset, validate_array
from training.datasets.arrays import parse_array_bytes


def _csv(tmp_path, text: str, name: str = "d.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _rows(n: int, d: int = 3, sep: str = ",") -> str:
    rng = np.random.default_rng(0)
    return "\n".join(sep.join(f"{v:.6f}" for v in row) for row in rng.normal(size=(n, d)))


def test_csv_with_and_without_header(tmp_path) -> None:
    body = _rows(12)
    plain = load_array_file(_csv(tmp_path, body + "\n"))
    headed = load_array_file(_csv(tmp_path, "a,b,c\n" + body, "h.csv"))
    assert plain.shape == (12, 3) and plain.dtype == np.float64
    assert np.array_equal(plain, headed)
    expected = np.array([[float(v) for v in ln.split(",")] for ln in body.splitlines()])
    assert np.array_equal(plain, expected)


@pytest.mark.parametrize("sep", [";", "\t", " "])
def test_csv_other_delimiters(tmp_path, sep) -> None:
    arr = load_array_file(_csv(tmp_path, _rows(11, 4, sep), "d.txt"))
    assert arr.shape == (11, 4)


def test_csv_blank_lines_bom_and_quotes(tmp_path) -> None:
    text = '\ufeff"x","y"\n\n' + "\n".join(f'"{i}",{i * 2}' for i in range(10)) + "\n\n"
    arr = load_array_file(_csv(tmp_path, text))
    assert arr.shape == (10, 2) and arr[3, 1] == 6.0


def test_csv_single_column(tmp_path) -> None:
    arr = load_array_file(_csv(tmp_path, "v\n" + "\n".join(str(i) for i in range(10))))
    assert arr.shape == (10, 1)


def test_csv_text_cell_names_line_and_column(tmp_path) -> None:
    lines = ["x,y,label"] + [f"{i},{i},1" for i in range(10)]
    lines[4] = "3,3,cat"
    with pytest.raises(DatasetError) as err:
        load_array_file(_csv(tmp_path, "\n".join(lines)))
    msg = str(err.value)
    assert "line 5" in msg and "column 3 ('label')" in msg and "'cat'" in msg
    assert "not a number" in msg


def test_csv_header_with_a_numeric_name(tmp_path) -> None:
    with pytest.raises(
        DatasetError, match=r"line 1 looks like a header, but its column 2 \('1'\)"
    ):
        load_array_file(_csv(tmp_path, "a,1\n" + _rows(10, 2)))


def test_csv_text_in_first_data_row(tmp_path) -> None:
    text = "a,1\nb,2\n" + _rows(10, 2)
    with pytest.raises(DatasetError, match=r"line 1, column 1 holds 'a', which is not a number"):
        load_array_file(_csv(tmp_path, text))


def test_csv_empty_cell(tmp_path) -> None:
    text = _rows(10, 3).splitlines()
    text[6] = "1.0,,2.0"
    with pytest.raises(DatasetError, match=r"line 7, column 2 is empty \(missing value\)"):
        load_array_file(_csv(tmp_path, "\n".join(text)))


@pytest.mark.parametrize(("token", "word"), [("nan", "NaN"), ("inf", r"\+inf"), ("-inf", "-inf")])
def test_csv_non_finite(tmp_path, token, word) -> None:
    text = _rows(10, 3).splitlines()
    text[2] = f"1.0,2.0,{token}"
    with pytest.raises(DatasetError, match=rf"1 missing or infinite.*{word} at row 3, column 3"):
        load_array_file(_csv(tmp_path, "\n".join(text)))


def test_csv_ragged_rows(tmp_path) -> None:
    text = _rows(10, 3).splitlines()
    text[5] += ",9"
    with pytest.raises(DatasetError, match="line 6 has 4 column.*line 1 has 3"):
        load_array_file(_csv(tmp_path, "\n".join(text)))
    with pytest.raises(DatasetError, match="line 3 has 2 column.*the header has 3"):
        load_array_file(_csv(tmp_path, "a,b,c\n1,2,3\n1,2\n" + _rows(10), "h.csv"))


def test_too_few_rows(tmp_path) -> None:
    with pytest.raises(DatasetError, match="4 rows; at least 10 are needed"):
        load_array_file(_csv(tmp_path, _rows(4)))
    assert load_array_file(_csv(tmp_path, _rows(4), "e.csv"), min_rows=2).shape == (4, 3)


@pytest.mark.parametrize("text", ["", "   \n\n  \n"])
def test_empty_file(tmp_path, text) -> None:
    with pytest.raises(DatasetError, match="empty"):
        load_array_file(_csv(tmp_path, text))


def test_header_only(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"only a header line \(1\), no data rows"):
        load_array_file(_csv(tmp_path, "a,b,c\n"))


def test_not_utf8(tmp_path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(b"a,b\n1,\xff\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_array_file(p)


def test_npy_roundtrip_and_integer_dtype(tmp_path) -> None:
    arr = np.arange(30, dtype=np.int16).reshape(15, 2)
    np.save(tmp_path / "a.npy", arr)
    got = load_array_file(tmp_path / "a.npy")
    assert got.dtype == np.float64 and np.array_equal(got, arr)
    f32 = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    np.save(tmp_path / "b.npy", f32)
    assert np.array_equal(load_array_file(tmp_path / "b.npy"), f32.astype(np.float64))


@pytest.mark.parametrize(
    ("arr", "pattern"),
    [
        (np.zeros(20), r"2-D array.*1-D array of shape \(20,\); reshape to \(20, 1\)"),
        (np.zeros((20, 2, 2)), r"got shape \(20, 2, 2\); flatten each sample"),
        (np.array(3.0), "single number"),
        (np.zeros((20, 0)), "20 rows but no columns"),
        (np.zeros((20, 2), dtype=bool), "booleans"),
        (np.zeros((20, 2), dtype=complex), "complex numbers"),
        (np.full((20, 2), "a"), "text"),
        (np.zeros((20, 2), dtype="datetime64[s]"), "dates"),
        (np.zeros(20, dtype=[("a", "f8"), ("b", "f8")]), "structured array with fields"),
    ],
    ids=["1d", "3d", "0d", "no-cols", "bool", "complex", "text", "dates", "structured"],
)
def test_npy_wrong_dtype_or_ndim(tmp_path, arr, pattern) -> None:
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(DatasetError, match=pattern):
        load_array_file(tmp_path / "a.npy")


def test_npy_object_array_is_refused_without_unpickling(tmp_path) -> None:
    np.save(tmp_path / "o.npy", np.array([[1, "x"]] * 12, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="Python objects.*pickle"):
        load_array_file(tmp_path / "o.npy")


def test_npy_nan_location(tmp_path) -> None:
    arr = np.ones((12, 3))
    arr[7, 1] = np.nan
    arr[9, 2] = np.inf
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(DatasetError, match="2 missing or infinite.*NaN at row 8, column 2"):
        load_array_file(tmp_path / "a.npy")


def test_npy_corrupt_or_not_npy(tmp_path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ones((50, 3)))
    (tmp_path / "t.npy").write_bytes(buf.getvalue()[:100])
    with pytest.raises(DatasetError, match="corrupt|unreadable"):
        load_array_file(tmp_path / "t.npy")
    (tmp_path / "n.npy").write_bytes(b"1,2,3\n4,5,6\n")
    with pytest.raises(DatasetError, match="not a .npy file"):
        load_array_file(tmp_path / "n.npy")


def test_file_type_and_path_errors(tmp_path) -> None:
    (tmp_path / "a.xlsx").write_bytes(b"PK")
    with pytest.raises(DatasetError, match="unsupported file type '.xlsx'"):
        load_array_file(tmp_path / "a.xlsx")
    with pytest.raises(DatasetError, match="file not found"):
        load_array_file(tmp_path / "missing.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DatasetError, match="is a directory"):
        load_array_file(tmp_path / "dir.csv")


def test_parse_bytes_for_uploads() -> None:
    buf = io.BytesIO()
    np.save(buf, np.ones((10, 2)))
    assert parse_array_bytes(buf.getvalue(), "npy").shape == (10, 2)
    assert parse_array_bytes(_rows(10).encode(), "csv", source="x.csv").shape == (10, 3)
    with pytest.raises(DatasetError, match="unknown format"):
        parse_array_bytes(b"1", "xlsx")
    with pytest.raises(DatasetError, match="^upload: the file is empty"):
        parse_array_bytes(b"", "csv")


def test_validate_array_direct() -> None:
    assert validate_array([[1, 2], [3, 4]], min_rows=2).dtype == np.float64
    with pytest.raises(DatasetError, match="not a rectangular numeric array"):
        validate_array([[1, 2], [3]], min_rows=1)
    with pytest.raises(DatasetError, match="does not fit in float32"):
        validate_array(np.full((3, 1), 1e300), min_rows=1)
    with pytest.raises(DatasetError, match="^data: 1 row; at least 2"):
        validate_array(np.ones((1, 2)), min_rows=2)


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_load_dataset_from_files(tmp_path) -> None:
    p = _csv(tmp_path, "a,b,c\n" + _rows(40))
    s = load_dataset(f"file:{p}")
    assert s.sizes == {"train": 28, "val": 6, "test": 6}
    assert s.name == "file:d.csv" and s.meta["kind"] == "file"
    # the split is fixed (not tied to the training seed), so the hash is too
    assert load_dataset(f"file:{p}", seed=5).sha256 == s.sha256
    every = np.concatenate([s.train, s.val, s.test])
    src = load_array_file(p).astype(np.float32)
    assert sorted(map(tuple, every)) == sorted(map(tuple, src))  # a partition of the rows
    np.save(tmp_path / "a.npy", src)
    assert load_dataset(f"file:{tmp_path / 'a.npy'}").sha256 == s.sha256
    small = load_dataset(f"file:{p}", num_samples=20, seed=1)
    assert sum(small.sizes.values()) == 20
    assert load_dataset(f"file://{p}").sha256 == s.sha256  # URI form, file:///abs/path
    with pytest.raises(DatasetError, match="needs a path"):
        load_dataset("file:")
    with pytest.raises(DatasetError, match="exceeds the 40 rows"):
        load_dataset(f"file:{p}", num_samples=41)
