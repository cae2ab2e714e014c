"""ModelStore.load rebuilds kind="multiscale" models; a forged, invalid image config is a
CorruptModel (not a crash or a silently different model)."""

from __future__ import annotations

import json

import pytest
import torch

from cpflow import CPFlow
from model_store import CorruptModel, ModelStore
from model_store.fsio import sha256_bytes
from model_store.manifest import MANIFEST_DIGEST_FILE, MANIFEST_FILE, dump_manifest
from tests.helpers.image_flows import random_image_flow


def test_store_loads_multiscale_models(tmp_path):
    flow = random_image_flow((1, 4, 4), (1, 1), hidden=4, seed=3)
    store = ModelStore(tmp_path)
    store.publish("img", flow)
    loaded = store.load("img")
    assert isinstance(loaded.flow, CPFlow)
    assert loaded.flow.input_shape == (1, 4, 4)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(loaded.flow.log_prob(x), flow.log_prob(x))
    assert torch.equal(loaded.flow.transform(x), flow.transform(x))


@pytest.mark.parametrize(
    "change", [{"input_shape": [1, 4, 5]}, {"blocks": []}, {"unknown_option": 1}]
)
def test_invalid_image_config_is_corrupt(tmp_path, change):
    store = ModelStore(tmp_path)
    pub = store.publish("img", random_image_flow((1, 4, 4), (1, 1), hidden=4, seed=1))
    manifest = json.loads((pub.path / MANIFEST_FILE).read_text())
    manifest["flow_config"].update(change)
    raw = dump_manifest(manifest)
    (pub.path / MANIFEST_FILE).write_bytes(raw)
    (pub.path / MANIFEST_DIGEST_FILE).write_text(sha256_bytes(raw) + "\n")
    with pytest.raises(CorruptModel, match="invalid flow_config"):
        store.load("img")
