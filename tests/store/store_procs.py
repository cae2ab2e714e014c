"""Process helpers for the store tests: fresh interpreters, forked publishers with pause hooks.

Forked publishers are real OS processes (own file descriptors and flocks, killable with
SIGKILL) that skip the seconds an interpreter needs to import torch on a busy machine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def worker_env() -> dict[str, str]:
    """Environment for store_worker.py: the repository importable (``tests`` as a package),
    one thread per process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_worker(*args: str, timeout: float = 180) -> str:
    """Run store_worker.py in a fresh interpreter; fail the test with its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.store.store_worker", *args],
        cwd=ROOT,
        check=False,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"worker {args[0]} failed:\n{proc.stderr}"
    return proc.stdout


def publish_with_hooks(root: str, name: str, seed: int, hooks: dict[str, Any]) -> int:
    """Publish a small flow; hooks pause or slow the publisher so a test can kill or race it.

    hooks: go (file to wait for), pause_after_weights / pause_in_lock (marker file written at
    the pause, then sleep), race_delay (seconds between allocating a version and renaming).
    """
    import torch

    import model_store.store as store_module
    from model_store import ModelStore
    from tests.helpers.flows import make_flow

    torch.set_num_threads(1)
    flow = make_flow(2, seed, blocks=1, hidden=4)
    if "pause_after_weights" in hooks:
        marker = hooks["pause_after_weights"]
        original_write = store_module._write_file

        def slow_write(path, data):
            original_write(path, data)
            Path(marker).write_text(str(path))
            time.sleep(120)

        store_module._write_file = slow_write
    original_allocate = store_module.ModelStore._allocate_locked
    if "pause_in_lock" in hooks:
        marker = hooks["pause_in_lock"]

        def slow_allocate(self, name_dir):
            version = original_allocate(self, name_dir)
            Path(marker).write_text(str(version))
            time.sleep(120)
            return version

        store_module.ModelStore._allocate_locked = slow_allocate
    if "race_delay" in hooks:
        delay = float(hooks["race_delay"])

        def delayed_allocate(self, name_dir):
            version = original_allocate(self, name_dir)
            time.sleep(delay)
            return version

        store_module.ModelStore._allocate_locked = delayed_allocate
    if "go" in hooks:  # wait for a start signal so that publishers really overlap
        while not os.path.exists(hooks["go"]):
            time.sleep(0.005)
    published = ModelStore(root).publish(name, flow, training={"seed": seed})
    return published.version


def _child(root: str, name: str, seed: int, hooks: dict[str, Any], result_file: str) -> None:
    version = publish_with_hooks(root, name, seed, hooks)
    Path(result_file).write_text(json.dumps({"version": version, "seed": seed}))


def fork_publisher(
    root: Path, name: str, seed: int, result_file: Path, **hooks: Any
) -> multiprocessing.Process:
    """Start a forked publisher process; it writes {"version", "seed"} to result_file."""
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(
        target=_child,
        args=(str(root), name, seed, {k: str(v) for k, v in hooks.items()}, str(result_file)),
        daemon=True,
    )
    proc.start()
    return proc
