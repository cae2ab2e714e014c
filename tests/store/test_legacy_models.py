"""Models published before the one-flow redesign load and answer as they did then.

tests/fixtures/legacy_store holds five models written by the three-class code (a dense float64
flow with radial units, whitening and a dense ICNN; a dense float32 flow; a multiscale image
flow; its affine-coupling ablation; a conditional flow p(x | c)), and legacy_answers.json what
that code answered (see tests/fixtures/README.md). The store is copied so nothing writes there.

Tolerances: exact log-densities, forward maps and SLQ estimates (same seed) may differ from the
recorded ones only by floating-point reassociation (the chain now sums terms in one order for
every kind): 1e-9 relative in float64, 2e-5 in float32. Samples are inverses solved to the
model's tolerance, and the end-to-end polish has changed, so they must agree to within a few
times that tolerance (plus the map's conditioning), not bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model_store import ModelStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ANSWERS = json.loads((FIXTURES / "legacy_answers.json").read_text())


@pytest.fixture(scope="module")
def legacy_store(tmp_path_factory) -> ModelStore:
    root = tmp_path_factory.mktemp("legacy") / "store"
    shutil.copytree(FIXTURES / "legacy_store", root)
    return ModelStore(root)


def _close(a: torch.Tensor, b: list, dtype: torch.dtype, scale: float = 1.0) -> None:
    rtol = 1e-9 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(a.double(), torch.tensor(b, dtype=torch.float64),
                               rtol=rtol * scale, atol=rtol * scale)  # fmt: skip


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_legacy_model_answers_as_before(legacy_store: ModelStore, name: str) -> None:
    rec = ANSWERS[name]
    flow = legacy_store.load(name).flow
    dtype = flow.standardization.mean.dtype
    x = torch.tensor(rec["inputs"], dtype=dtype)
    c = None if rec["context"] is None else torch.tensor(rec["context"], dtype=dtype)
    with torch.no_grad():
        _close(flow.log_prob(x, c, method="exact"), rec["log_prob_exact"], dtype)
        slq, err = flow.log_prob(
            x, c, method="slq", generator=torch.Generator().manual_seed(5), return_stderr=True
        )
        _close(slq, rec["log_prob_slq"], dtype, scale=10.0)
        if rec["slq_stderr"] is not None:
            _close(err, rec["slq_stderr"], dtype, scale=10.0)
        _close(flow.transform(x, c), rec["transform"], dtype)
        gen = torch.Generator().manual_seed(11)
        s, info = flow.sample(4, None if c is None else c[:4], generator=gen)
    assert info.all_converged
    tol = flow.config.default_inverse_tol
    want = torch.tensor(rec["samples_seed11"], dtype=torch.float64)
    assert float((s.double() - want).abs().max()) <= 1e3 * tol * (1 + float(want.abs().max()))


def test_legacy_configs_migrate_to_one_config_type(legacy_store: ModelStore) -> None:
    kinds = {n: legacy_store.load(n).flow.config.potential.kind for n in ANSWERS}
    assert kinds == {
        "conditional": "picnn",
        "coupling": "coupling",
        "dense32": "icnn",
        "dense64": "icnn",
        "image": "conv",
    }
    image = legacy_store.load("image").flow.config
    assert image.image_shape == (1, 4, 4) and image.scales == [1, 1]
    assert legacy_store.load("conditional").flow.context_dim == 1
