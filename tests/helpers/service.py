"""Helpers for the service tests: publish small models, run a real uvicorn server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.helpers.flows import make_flow
from tests.helpers.ports import free_port

API_KEY = "test-key-1"
REPO = Path(__file__).resolve().parents[2]


def publish_models(root: Path) -> None:
    """The models the service tests use."""
    from model_store import ModelStore

    store = ModelStore(root)
    store.publish("toy2d", make_flow(2), training={"metrics": {"test_nll": 2.5}},
                  plots={"density.png": b"\x89PNG\r\n\x1a\nnot-really-a-png"})  # fmt: skip
    store.publish("toy4d", make_flow(4, seed=1))
    store.publish("toy32d", make_flow(32, blocks=4, hidden=64, seed=1))  # for long requests
    # the name the OpenAPI examples use; with held-out scores, so percentiles and drift answer
    store.publish("moons", moons := make_flow(2, seed=3), training=held_out_scores(moons))
    store.publish("broken", make_flow(2, seed=2))
    # Damage the weights after publishing: the manifest's sha256 no longer matches.
    weights = root / "broken" / "1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))


def held_out_scores(flow) -> dict:
    """A manifest's training record with the held-out scores of 500 rows of ``make_flow``'s
    data, N(1, diag(0.5 ... 2.0)^2), as training publishes them."""
    import numpy as np
    import torch

    from model_store.calibration import reference_summary

    rows = np.random.default_rng(0).normal(size=(500, flow.dim)) * np.linspace(0.5, 2.0, flow.dim)
    with torch.no_grad():
        held = flow.log_prob(torch.as_tensor(rows + 1.0, dtype=torch.float32), method="exact")
    return {"calibration": reference_summary(held.numpy(), split="test", method="exact")}


@contextlib.contextmanager
def run_server(env_extra: dict[str, str], *, log_path: Path) -> Iterator[str]:
    """Start ``uvicorn --factory service.app:create_app`` and yield its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPFLOW_")}
    env.update(
        {
            "CPFLOW_LOG_LEVEL": "WARNING",
            "CPFLOW_TORCH_THREADS": "1",
            "CPFLOW_INFERENCE_THREADS": "2",
            "CPFLOW_DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(env_extra)
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
