"""What state each stored model version is in, and re-verifying the versions a replica serves.

The listing reads manifests only (cheap): a model whose latest manifest is missing or damaged
is listed as ``broken`` with the reason, never left out (/readyz counts it). Weights are
checked when a version loads; a replica keeps a loaded version in memory, so damage done to its
files later goes unseen there while a fresh replica refuses the version. :func:`verify_model`
re-checks every file of every version of a model (on demand, POST
/v1/models/{name}/verify; and every CPFLOW_VERIFY_INTERVAL_S for the loaded versions) and
unloads a version that no longer verifies, so this replica refuses it as a fresh one would.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from model_store import CorruptModel, ModelNotFound

__all__ = ["BROKEN", "READY", "catalogue", "verify_loaded", "verify_model", "verify_periodically"]

log = logging.getLogger("cpflow.models")

READY = "ready"
BROKEN = "broken"


def catalogue(store: Any) -> list[dict[str, Any]]:
    """One row per model (its latest version): name, version, dim, created_at, metrics, state,
    tenant (None: shared) and, for a broken one, the error; broken models are listed, not
    hidden."""
    rows = []
    for name in store.names():
        try:
            manifest = store.manifest(name, "latest")
        except (CorruptModel, ModelNotFound) as exc:
            versions = store.versions(name)
            rows.append(
                {
                    "name": name,
                    "version": versions[-1] if versions else None,
                    "state": BROKEN,
                    "error": str(exc),
                    "tenant": _owner(store, name),
                }
            )
            continue
        training = manifest.get("training") or {}
        rows.append(
            {
                "name": name,
                "version": manifest["version"],
                "dim": manifest["dim"],
                "created_at": manifest.get("created_at"),
                "metrics": training.get("metrics") or {},
                "state": READY,
                "tenant": manifest.get("tenant"),
            }
        )
    return rows


def _owner(store: Any, name: str) -> str | None:
    """The owner of a model whose latest manifest is damaged (from its other versions)."""
    try:
        return store.owner(name)
    except ModelNotFound:
        return None


async def verify_model(engine: Any, name: str) -> list[dict[str, Any]]:
    """Check every file of every version of ``name`` against its manifest; unload the loaded
    versions that fail. One row per version: version, state, loaded (after), error."""
    versions = await engine.io(engine.store.versions, name)
    if not versions:
        raise ModelNotFound(name)
    return [await _verify_version(engine, name, v) for v in versions]


async def verify_loaded(engine: Any) -> list[dict[str, Any]]:
    """Re-check the versions this replica has in memory (the periodic check)."""
    rows = []
    for name, version in engine.loaded():
        rows.append({"name": name, **await _verify_version(engine, name, version)})
    return rows


async def _verify_version(engine: Any, name: str, version: int) -> dict[str, Any]:
    try:
        await engine.io(engine.store.verify, name, version)
    except (CorruptModel, ModelNotFound) as exc:
        was_loaded = engine.forget(name, version)
        engine.metrics.model_verifications.labels("corrupt").inc()
        log.error(
            "model version failed verification",
            extra={"model": name, "version": version, "unloaded": was_loaded, "error": str(exc)},
        )
        return {"version": version, "state": BROKEN, "loaded": False, "error": str(exc)}
    engine.metrics.model_verifications.labels("ok").inc()
    return {
        "version": version,
        "state": READY,
        "loaded": engine.is_loaded(name, version),
        "error": None,
    }


async def verify_periodically(engine: Any, interval_s: float) -> None:
    """Run :func:`verify_loaded` every ``interval_s`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await verify_loaded(engine)
        except Exception:
            log.exception("periodic model verification failed")
