"""Upload parsing: what a .csv/.npy upload becomes, and every way it is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.uploads import MIN_ROWS, UploadError, parse_upload, read_csv


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_csv_with_header_round_trips_values() -> None:
    x = np.random.default_rng(0).normal(size=(12, 3))
    text = "a,b,c\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n\n"
    header, out = parse_upload("d.csv", text.encode())
    # repr() of a float64 round-trips exactly, so the parse must be exact.
    np.testing.assert_array_equal(out, x)
    assert header == ["a", "b", "c"]


def test_plain_and_careful_parsers_agree() -> None:
    # numpy's parser takes plain files; quoted cells, blank rows and CRLF ends either go through
    # it or through the csv-module parser: the values are the same.
    x = np.random.default_rng(2).normal(size=(15, 3))
    plain = "a,b,c\n" + "".join(",".join(repr(float(v)) for v in row) + "\n" for row in x)
    quoted = '"a","b","c"\r\n,,\r\n' + "".join(
        ",".join(f'"{float(v)!r}"' for v in row) + "\r\n" for row in x
    )
    for text in (plain, quoted):
        header, values = read_csv(text.encode())
        assert header == ["a", "b", "c"]
        np.testing.assert_array_equal(values, x)


def test_csv_without_header_and_integers() -> None:
    rows = "\n".join(f"{i},{2 * i}" for i in range(MIN_ROWS))
    header, out = parse_upload("d.CSV", rows.encode())
    assert header is None and out.shape == (MIN_ROWS, 2)
    np.testing.assert_array_equal(out[:, 1], 2 * np.arange(MIN_ROWS))


def test_npy_float32_and_int_accepted() -> None:
    x = np.arange(40, dtype=np.int32).reshape(20, 2)
    np.testing.assert_array_equal(parse_upload("x.npy", _npy(x))[1], x.astype(np.float64))
    y = np.ones((15, 4), dtype=np.float32)
    assert parse_upload("y.npy", _npy(y))[1].shape == (15, 4)


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("n.csv", b"a,b\n" + b"1,2\n" * 20 + b"nan,1\n"),
        ("i.csv", b"a,b\n" + b"1,2\n" * 20 + b"inf,1\n"),
        ("e.csv", b"a,b\n" + b"1,2\n" * 20 + b",1\n"),
        ("q.csv", b"a,b\n" + b'"1","2"\n' * 20 + b'"",1\n'),
        ("m.npy", _npy(np.array([[1.0, 2.0]] * 20 + [[np.nan, 1.0]]))),
    ],
)
def test_missing_cells_reach_the_data_checks_as_nan(filename: str, content: bytes) -> None:
    """An empty, NaN or infinite cell is not a parse error: it is kept (non-finite) for the
    data checks, which name its column and row (model_store.data_checks)."""
    _, values = parse_upload(filename, content)
    bad = np.argwhere(~np.isfinite(values))
    assert bad.tolist() == [[20, 0]]


@pytest.mark.parametrize(
    ("filename", "content", "fragment"),
    [
        (
            "t.csv",
            b"a,b\n1,2\n3,hello\n" + b"4,5\n" * 20,
            "column 2 ('b') has a non-numeric value 'hello'",
        ),
        ("r.csv", b"1,2\n" * 20 + b"1,2,3\n", "ragged rows"),
        ("s.csv", b"a,b\n1,2\n", f"at least {MIN_ROWS}"),
        ("e.csv", b"", "no rows"),
        ("b.csv", b"\xff\xfe\x00garbage", "UTF-8"),
        ("x.json", b"[[1,2]]", ".npy or .csv"),
        ("bad.npy", b"not an npy file", ".npy"),
        # 1e300 is finite in float64 but the store keeps float32: refuse, do not store inf.
        ("big.csv", b"1,2\n" * 20 + b"1e300,1\n", "float32"),
        (
            "cr.csv",
            b"1,2\n" * 20 + b"3,\r4\n",
            "bare carriage return",
        ),  # was an uncaught csv.Error
    ],
)
def test_bad_uploads_are_refused_with_a_reason(filename: str, content: bytes, fragment: str):
    with pytest.raises(UploadError) as info:
        parse_upload(filename, content)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.arange(30.0), "1-D"),
        (np.zeros((4, 5, 6)), "2-D"),
        (np.array([["a", "b"]] * 20), "not numeric"),
        (np.ones((1, 3)), f"at least {MIN_ROWS}"),
        (np.array([[object(), 1]] * 20, dtype=object), "npy"),
    ],
)
def test_bad_npy_arrays_are_refused(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(UploadError) as info:
        parse_upload("a.npy", _npy(array))
    assert fragment in str(info.value)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.one_of(
        st.binary(max_size=120), st.text(alphabet='0123456789.,-+eE \t\r\n"xnaif', max_size=120)
    )
)
def test_any_bytes_parse_or_say_why(content: bytes | str) -> None:
    """Whatever is sent, read_csv returns numbers or raises UploadError (an HTTP 422), never
    anything else (which would be a 500)."""
    data = content.encode() if isinstance(content, str) else content
    try:
        header, values = read_csv(data)
    except UploadError:
        return
    assert values.ndim == 2 and values.shape[0] >= 1
    assert header is None or isinstance(header, list)
