"""Run under torchrun (or alone) with a global batch of 16 rows split over the processes:
for the exact and the surrogate objective, one DDP gradient ("grad") and the trainer's
parameters after 3 iterations ("train"), saved by rank 0 as OUT_DIR/<mode>-<loss>.safetensors.
Used by test_distributed.py.

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_worker.py OUT_DIR
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from safetensors.torch import save_file

from cpflow import CPFlow, FlowConfig
from training.config import TrainConfig
from training.distributed import init_from_env
from training.trainer import _Objective, train


class Splits:
    """Correlated 3-D rows (so the CG surrogate is not trivial) and 2-D contexts."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(96, 3)) @ np.array([[1.0, 0.4, 0.0], [0, 1, 0.5], [0, 0, 0.7]])
        self.train, self.val, self.test = x[:64], x[64:80], x[80:]
        c = rng.uniform(-1, 1, size=(96, 2))
        self.contexts = (c[:64], c[64:80], c[80:])
        self.sha256 = "ddp-test"


FLOW = {"blocks": 2, "hidden": 6, "depth": 2, "context_dim": 2, "dtype": "float64"}


def run(group, mode: str, loss: str, batch: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    if mode == "train":
        cfg = TrainConfig(iterations=3, batch_size=batch, lr=0.01, loss=loss, val_every=3,
                          cg_atol=1e-12, final_train_max_points=16)  # fmt: skip
        state = train(FLOW, Splits(), cfg).flow.state_dict()
    else:
        flow = CPFlow(FlowConfig(dim=3, **FLOW))
        data = Splits()
        x, c = torch.as_tensor(data.train), torch.as_tensor(data.contexts[0])
        flow.set_standardization(x.mean(0), x.std(0), c.mean(0), c.std(0))
        flow.initialize(x, c)
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1),
                                         dtype=p.dtype))  # fmt: skip
        objective = group.wrap(_Objective(flow, loss), torch.device("cpu"))
        start, stop = group.rows(batch * group.world)
        gen = torch.Generator().manual_seed(5)
        value, _ = objective(x[start:stop], c[start:stop], gen, (start, batch * group.world))
        (value * ((stop - start) * group.world / (batch * group.world))).backward()
        state = {n: p.grad for n, p in flow.named_parameters()}
    return state


def main(out_dir: str) -> None:
    group = init_from_env("cpu")
    for mode in ("grad", "train"):
        for loss in ("exact", "surrogate"):
            state = run(group, mode, loss, 16 // group.world)
            if group.main:
                path = f"{out_dir}/{mode}-{loss}.safetensors"
                save_file({k: v.detach().contiguous() for k, v in state.items()}, path)


if __name__ == "__main__":
    main(sys.argv[1])
