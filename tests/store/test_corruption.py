"""Damaged versions are caught at load with an error naming model, version and file, on both
backends: the local folder's files are damaged in place, the object store's objects in the
bucket (the reader's cached copy is dropped after each change, as a replica that had not
cached the version yet would see it)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model_store import CorruptModel, ModelStore
from model_store.manifest import MANIFEST_DIGEST_FILE, MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE
from tests.helpers.flows import make_flow


class _Bucket:
    """The files of victim version 1 in the bucket, with the Path calls the tests make."""

    def __init__(self, store, name: str = "") -> None:
        self.store, self.name = store, name

    def __truediv__(self, part: str) -> _Bucket:
        return _Bucket(self.store, f"{self.name}/{part}" if self.name else part)

    def _key(self) -> str:
        return self.store.objects.key("victim", 1, self.name)

    def _changed(self) -> None:
        shutil.rmtree(self.store.root / "victim" / "1", ignore_errors=True)

    def read_bytes(self) -> bytes:
        return self.store.objects.get(self._key())

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.store.objects.put(self._key(), data)
        self._changed()

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self) -> None:
        self.store.objects.call("delete_object", Key=self._key())
        self._changed()


@pytest.fixture
def two_models(store):
    """Two models in one store: 'victim' gets damaged, 'bystander' must keep loading."""
    store.publish("victim", make_flow(2, seed=1, blocks=1, hidden=4),
                  plots={"curve.png": b"plot-bytes"})  # fmt: skip
    store.publish("bystander", make_flow(2, seed=2, blocks=1, hidden=4))
    if isinstance(store, ModelStore) and not hasattr(store, "objects"):
        return store, store.root / "victim" / "1"
    shutil.rmtree(store.root / "victim" / "1")  # read from the bucket from now on
    return store, _Bucket(store)


def _expect_corrupt(store: ModelStore, filename: str) -> CorruptModel:
    with pytest.raises(CorruptModel) as caught:
        store.load("victim")
    err = caught.value
    assert (err.name, err.version, err.file) == ("victim", 1, filename)
    message = str(err)
    assert "'victim'" in message and "version 1" in message and filename in message
    # The other model is untouched and still loads and answers.
    other = store.load("bystander")
    assert other.flow.transform(torch.zeros(1, 2)).isfinite().all()
    # Listing reads manifests only: a damaged manifest hides its model, nothing else does.
    listed = [m["name"] for m in store.list_models()]
    manifest_damaged = filename in (MANIFEST_FILE, MANIFEST_DIGEST_FILE)
    assert listed == (["bystander"] if manifest_damaged else ["bystander", "victim"])
    return err


def test_every_byte_of_the_weights_is_covered(two_models) -> None:
    """Flip one bit in each byte of the weights file in turn (header and tensor data alike):
    every single change is refused. verify() is the check load() runs before building."""
    store, folder = two_models
    path = folder / WEIGHTS_FILE
    original = path.read_bytes()
    missed = []
    # every byte on disk; every 13th in the bucket (each flip is a round trip to the server)
    stride = 13 if isinstance(folder, _Bucket) else 1
    for offset in range(0, len(original), stride):
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        try:
            store.verify("victim")
        except CorruptModel as err:
            assert (err.name, err.version, err.file) == ("victim", 1, WEIGHTS_FILE)
        else:
            missed.append(offset)
    assert missed == []
    damaged = bytearray(original)
    damaged[len(original) // 2] ^= 0x80
    path.write_bytes(bytes(damaged))
    _expect_corrupt(store, WEIGHTS_FILE)  # load() itself, and the other model still loads
    path.write_bytes(original)
    store.load("victim")  # restored bytes load again


@pytest.mark.parametrize("keep", [0, 100, -1])
def test_truncated_weights(two_models, keep: int) -> None:
    store, folder = two_models
    path = folder / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    _expect_corrupt(store, WEIGHTS_FILE)


def test_truncated_plot_and_missing_files(two_models) -> None:
    store, folder = two_models
    plot = folder / "plots" / "curve.png"
    plot.write_bytes(b"plot-byt")
    _expect_corrupt(store, "plots/curve.png")
    plot.unlink()
    _expect_corrupt(store, "plots/curve.png")


def test_missing_weights(two_models) -> None:
    store, folder = two_models
    (folder / WEIGHTS_FILE).unlink()
    _expect_corrupt(store, WEIGHTS_FILE)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["training"].update(parameter_count=1),
        lambda m: m["flow_config"].update(hidden=5),
        lambda m: m.update(version=2),
        lambda m: m["files"].update({WEIGHTS_FILE: "0" * 64}),
    ],
)
def test_edited_manifest(two_models, edit) -> None:
    store, folder = two_models
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _expect_corrupt(store, MANIFEST_FILE)
    with pytest.raises(CorruptModel):
        store.manifest("victim")


def test_whitespace_edit_and_truncated_manifest(two_models) -> None:
    store, folder = two_models
    path = folder / MANIFEST_FILE
    raw = path.read_bytes()
    path.write_bytes(raw + b" ")
    _expect_corrupt(store, MANIFEST_FILE)
    path.write_bytes(raw[: len(raw) // 2])
    _expect_corrupt(store, MANIFEST_FILE)
    path.unlink()
    _expect_corrupt(store, MANIFEST_FILE)


def test_missing_manifest_digest(two_models) -> None:
    store, folder = two_models
    (folder / MANIFEST_DIGEST_FILE).unlink()
    _expect_corrupt(store, MANIFEST_DIGEST_FILE)


def test_unlisted_file_is_refused(two_models) -> None:
    """A file the manifest does not list, lying in a version's folder. (On object storage a
    reader fetches only the listed objects, so an extra object there is never read.)"""
    store, folder = two_models
    if isinstance(folder, _Bucket):
        folder = store.version_path("victim", 1)
    (folder / ONNX_FILE).write_bytes(b"not listed")
    _expect_corrupt(store, ONNX_FILE)


def test_consistent_forgery_of_config_is_still_caught(two_models) -> None:
    """Manifest edited and its digest recomputed: weights no longer fit the config."""
    from model_store.fsio import sha256_bytes
    from model_store.manifest import dump_manifest

    store, folder = two_models
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["flow_config"]["hidden"] = 6
    raw = dump_manifest(manifest)
    (folder / MANIFEST_FILE).write_bytes(raw)
    (folder / MANIFEST_DIGEST_FILE).write_text(sha256_bytes(raw) + "\n")
    err = _expect_corrupt(store, WEIGHTS_FILE)
    assert "flow_config" in str(err)
