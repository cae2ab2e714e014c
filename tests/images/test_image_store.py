"""Image flows in the model store: publish writes kind + input_shape into the manifest, and
``CPFlow(FlowConfig.model_validate(manifest["flow_config"]))`` rebuilds the exact model."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from cpflow import CPFlow, FlowConfig
from model_store import ModelStore
from tests.helpers.image_flows import random_image_flow
from training.images import sample_grid_png


def test_publish_manifest_and_rebuild(tmp_path):
    flow = random_image_flow((1, 4, 4), (1, 1), seed=2)
    store = ModelStore(tmp_path)
    grid = sample_grid_png(torch.rand(4, 1, 4, 4))
    pub = store.publish(
        "digits-cp", flow, training={"input_shape": [1, 4, 4]}, plots={"samples.png": grid}
    )
    man = store.manifest("digits-cp")
    assert man["flow_config"]["potential"]["kind"] == "conv"
    assert man["flow_config"]["image_shape"] == [1, 4, 4]
    assert man["dim"] == 16 and "samples.png" in man["plots"]
    assert store.plot_path("digits-cp", pub.version, "samples.png").read_bytes() == grid
    rebuilt = CPFlow(FlowConfig.model_validate(man["flow_config"]))
    assert isinstance(rebuilt, CPFlow)
    weights = next(p for p in pub.path.iterdir() if p.suffix == ".safetensors")
    rebuilt.load_state_dict(load_file(str(weights)), strict=True)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(rebuilt.log_prob(x), flow.log_prob(x))
    assert torch.equal(rebuilt.transform(x), flow.transform(x))
