"""Fresh-interpreter entry point for the store tests: load a model and write its outputs.

Run as ``python -m tests.store.store_worker load ...`` from the repository root; pytest does
not collect it.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from model_store import ModelStore
from tests.helpers.flows import actnorm_state, flow_outputs

torch.set_num_threads(1)


def mode_load(root: str, name: str, version: str, x_path: str, out_path: str) -> None:
    loaded = ModelStore(root).load(name, version)
    before = actnorm_state(loaded.flow)
    x = torch.from_numpy(np.load(x_path))
    result = flow_outputs(loaded.flow, x)
    # A first batch with other statistics must not re-initialise ActNorm.
    shifted = x * 5.0 - 7.0
    loaded.flow.log_prob(shifted, method="exact")
    loaded.flow.transform(shifted)
    after = actnorm_state(loaded.flow)
    result["actnorm_unchanged"] = np.array(
        all(torch.equal(before[k], after[k]) for k in before) and len(before) > 0
    )
    result["training"] = np.array(loaded.flow.training)
    np.savez(out_path, **result)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"load": mode_load}[mode](*args)
