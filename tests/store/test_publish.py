"""Atomic publish: killed publishers leave nothing visible; concurrent publishers never collide."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from model_store import ModelNotFound, ModelStore
from tests.helpers.flows import make_flow
from tests.store.store_procs import fork_publisher


@pytest.fixture
def store(local_store):
    """The local folder's publish protocol (flock, temp folder, rename); the object store's
    counterparts (kill -9 mid-upload, 8 concurrent publishers) are in test_object_store.py."""
    return local_store


def _wait_for(path: Path, proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not proc.is_alive():
            pytest.fail(f"publisher exited early with code {proc.exitcode}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("publisher never reached the pause point")
        time.sleep(0.01)


def _hidden(store: ModelStore, name: str) -> list[str]:
    return sorted(p.name for p in (store.root / name).iterdir() if p.name.startswith(".tmp-"))


def _sigkill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("pause", ["pause_after_weights", "pause_in_lock"])
def test_sigkill_mid_publish_leaves_no_version(store, tmp_path, pause: str) -> None:
    """SIGKILL after the weights are on disk, or while holding the version lock."""
    marker = tmp_path / "paused"
    proc = fork_publisher(store.root, "killed", 1, tmp_path / "result", **{pause: marker})
    _wait_for(marker, proc)
    _sigkill(proc)

    assert store.versions("killed") == []
    assert store.list_models() == []
    with pytest.raises(ModelNotFound):
        store.load("killed")
    leftovers = _hidden(store, "killed")
    assert len(leftovers) == 1  # the dead publisher's temp folder, invisible to readers

    # The kernel dropped the dead process's locks: cleanup removes its folder, publish works.
    assert store.cleanup() == [f"killed/{leftovers[0]}"]
    assert _hidden(store, "killed") == []
    assert store.publish("killed", make_flow(2, 0, blocks=1, hidden=4)).version == 1
    assert store.load("killed").version == 1


def test_cleanup_spares_a_live_publisher(store, tmp_path) -> None:
    """A temp folder whose owner is alive (holding its lock) is not removed."""
    marker = tmp_path / "paused"
    proc = fork_publisher(store.root, "alive", 1, tmp_path / "result", pause_after_weights=marker)
    try:
        _wait_for(marker, proc)
        assert store.cleanup() == []
        assert len(_hidden(store, "alive")) == 1
        # Another publisher of the same name is not blocked by the slow one.
        assert store.publish("alive", make_flow(2, 0, blocks=1, hidden=4)).version == 1
        assert len(_hidden(store, "alive")) == 1
    finally:
        _sigkill(proc)
    assert len(store.cleanup("alive")) == 1
    # The next publish also cleans up after dead publishers on its own.
    proc = fork_publisher(store.root, "alive", 2, tmp_path / "result", pause_after_weights=marker)
    marker.unlink()
    _wait_for(marker, proc)
    _sigkill(proc)
    assert len(_hidden(store, "alive")) == 1
    assert store.publish("alive", make_flow(2, 0, blocks=1, hidden=4)).version == 2
    assert _hidden(store, "alive") == []


def test_eight_concurrent_publishers_get_distinct_versions(store, tmp_path) -> None:
    """Eight processes publish one name at once; each sleeps between allocating a version and
    renaming its folder, which would make racing publishers collide without the lock."""
    go = tmp_path / "go"
    procs = [
        fork_publisher(store.root, "race", seed, tmp_path / f"result{seed}", go=go,
                       race_delay=0.05)
        for seed in range(8)
    ]  # fmt: skip
    time.sleep(0.2)
    go.write_text("go")
    results = []
    for seed, proc in enumerate(procs):
        proc.join(timeout=180)
        assert proc.exitcode == 0
        results.append(json.loads((tmp_path / f"result{seed}").read_text()))
    versions = sorted(r["version"] for r in results)
    assert versions == list(range(1, 9))
    assert store.versions("race") == versions
    seeds = set()
    for result in results:
        loaded = store.load("race", result["version"])  # verifies every digest: complete
        assert loaded.manifest["version"] == result["version"]
        assert loaded.manifest["training"]["seed"] == result["seed"]  # nothing overwritten
        seeds.add(result["seed"])
    assert seeds == set(range(8))
    assert _hidden(store, "race") == []


def test_threads_of_one_process_also_exclude_each_other(store, monkeypatch) -> None:
    """The service publishes from worker threads: each lock takes its own open file, so flock
    also serialises threads of one process (with a widened allocate -> rename window)."""
    from concurrent.futures import ThreadPoolExecutor

    import model_store.store as store_module

    original = store_module.ModelStore._allocate_locked

    def delayed(self, name_dir):
        version = original(self, name_dir)
        time.sleep(0.05)
        return version

    monkeypatch.setattr(store_module.ModelStore, "_allocate_locked", delayed)
    flows = [make_flow(2, seed, blocks=1, hidden=4) for seed in range(4)]
    with ThreadPoolExecutor(4) as pool:
        versions = sorted(pool.map(lambda f: store.publish("threads", f).version, flows))
    assert versions == [1, 2, 3, 4]
    assert all(store.verify("threads", v)["version"] == v for v in versions)
