"""The data set area: content-addressed by sha256, atomic, verified on load."""

from __future__ import annotations

import numpy as np
import pytest

from model_store import (
    CorruptDataset,
    DatasetNotFound,
    InvalidDataset,
    ModelStore,
    array_sha256,
)


def _data(rows: int = 50, dim: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def test_put_get_load_roundtrip(store) -> None:
    data = _data()
    record = store.datasets.put(data, "my data.csv")
    assert record.id == record.sha256 == array_sha256(data)
    assert (record.rows, record.dim, record.name) == (50, 3, "my data.csv")
    assert (store.root / "datasets" / record.id / "data.npy").is_file()
    assert store.datasets.get(record.id) == record
    loaded = store.datasets.load(record.id)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, data)
    assert [r.id for r in store.datasets.list()] == [record.id]


def test_same_content_is_stored_once_and_takes_the_new_name(store) -> None:
    first = store.datasets.put(_data(), "a")
    again = store.datasets.put(_data().astype(np.float64), "b")  # same float32 values
    assert (again.id, again.created_at) == (first.id, first.created_at)
    # The new upload's name is recorded, never dropped; the old one still addresses it.
    assert (again.name, again.all_names) == ("b", ["a", "b"])
    assert store.datasets.get(first.id) == again
    assert len(store.datasets.list()) == 1
    assert store.datasets.resolve("a").id == store.datasets.resolve("b").id == first.id


def test_columns_and_report_are_kept(store) -> None:
    report = {"rows": 50, "columns": ["u", "v", "w"], "errors": [], "warnings": []}
    record = store.datasets.put(_data(), "t", columns=["u", "v", "w"], report=report)
    assert store.datasets.get(record.id).column_names == ["u", "v", "w"]
    assert store.datasets.get(record.id).report == report
    plain = store.datasets.put(_data(seed=1), "p")
    assert plain.column_names == ["x1", "x2", "x3"]  # no header: x1..xd
    with pytest.raises(InvalidDataset, match="2 column names for 3 columns"):
        store.datasets.put(_data(seed=2), "q", columns=["u", "v"])


def test_a_name_addresses_its_latest_upload(store) -> None:
    old = store.datasets.put(_data(seed=0), "iris")
    new = store.datasets.put(_data(seed=1), "iris")
    assert store.datasets.resolve("iris").id == new.id
    assert store.datasets.resolve(old.id).id == old.id  # the id still works
    store.datasets.put(_data(seed=0), "iris")  # the first content again, under that name
    assert store.datasets.resolve("iris").id == old.id
    assert store.datasets.resolve("iris", visible=lambda i: i != old.id).id == new.id
    with pytest.raises(DatasetNotFound, match="neither an id nor a name"):
        store.datasets.resolve("nope")


def test_digest_depends_on_shape_and_values() -> None:
    data = _data(rows=4, dim=2)
    assert array_sha256(data) != array_sha256(data.reshape(2, 4))
    changed = data.copy()
    changed[0, 0] = np.nextafter(changed[0, 0], np.float32(np.inf))
    assert array_sha256(data) != array_sha256(changed)


def test_altered_data_detected(store) -> None:
    record = store.datasets.put(_data(), "x")
    path = store.datasets.path(record.id)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # flip a bit of the last float
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataset, match=record.id):
        store.datasets.load(record.id)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(3), np.zeros((0, 2)), np.array([[1.0, np.nan]]), np.array([["a", "b"]])],
)
def test_invalid_arrays_refused(store, bad) -> None:
    with pytest.raises(InvalidDataset):
        store.datasets.put(bad, "bad")


def test_unknown_and_malformed_ids(store) -> None:
    for dataset_id in ["0" * 64, "../etc", "", "ABC"]:
        with pytest.raises(DatasetNotFound):
            store.datasets.get(dataset_id)
        with pytest.raises(DatasetNotFound):
            store.datasets.load(dataset_id)


def test_delete(store) -> None:
    record = store.datasets.put(_data(), "x")
    store.datasets.delete(record.id)
    assert store.datasets.list() == []
    with pytest.raises(DatasetNotFound):
        store.datasets.get(record.id)
    with pytest.raises(DatasetNotFound):
        store.datasets.delete(record.id)
    leftovers = [p.name for p in (store.root / "datasets").iterdir() if p.name != ".lock"]
    assert leftovers == []  # no trash left


def test_datasets_area_is_not_a_model(store) -> None:
    store.datasets.put(_data(), "x")
    assert store.names() == []
    assert store.list_models() == []


def _put_then_hang(root: str, marker: str) -> None:
    """Forked child: store a data set but hang right after writing data.npy."""
    import time
    from pathlib import Path

    from model_store import fsio

    original = fsio.write_durable

    def slow(path, data):
        original(path, data)
        Path(marker).write_text("paused")
        time.sleep(120)

    fsio.write_durable = slow
    ModelStore(root).datasets.put(_data(), "killed")


def test_killed_upload_leaves_nothing_visible(tmp_path) -> None:
    import multiprocessing
    import os
    import signal
    import time

    marker = tmp_path / "paused"
    proc = multiprocessing.get_context("fork").Process(
        target=_put_then_hang, args=(str(tmp_path), str(marker)), daemon=True
    )
    proc.start()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    store = ModelStore(tmp_path)
    assert store.datasets.list() == []
    with pytest.raises(DatasetNotFound):
        store.datasets.get(array_sha256(_data()))
    removed = store.cleanup()
    assert len(removed) == 1 and removed[0].startswith("datasets/.tmp-")
    record = store.datasets.put(_data(), "again")  # the same content stores fine afterwards
    np.testing.assert_array_equal(store.datasets.load(record.id), _data())
