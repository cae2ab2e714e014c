"""A CPFlow published to the model store loads back as the same p(x | c)."""

from __future__ import annotations

import torch

from cpflow import CPFlow, FlowConfig
from model_store import ModelStore


def test_publish_and_load_conditional_flow(tmp_path):
    cfg = FlowConfig(dim=2, context_dim=1, blocks=1, hidden=4, depth=2)
    flow = CPFlow(cfg)
    x = torch.randn(16, 2)
    c = torch.rand(16, 1)
    flow.set_standardization(x.mean(0), x.std(0), c.mean(0), c.std(0))
    flow.initialize(x, c)
    store = ModelStore(tmp_path)
    pub = store.publish("cond", flow, training={"context_columns": [2]})
    assert pub.manifest["flow_config"]["potential"]["kind"] == "picnn"
    assert pub.manifest["training"]["context_columns"] == [2]
    loaded = store.load("cond")
    assert isinstance(loaded.flow, CPFlow)
    assert torch.equal(loaded.flow.log_prob(x, c), flow.log_prob(x, c))
    assert torch.equal(loaded.flow.context_standardization.mean, flow.context_standardization.mean)
