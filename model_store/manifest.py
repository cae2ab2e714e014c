"""The manifest: a JSON description of one stored version, and its structural checks."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_DIGEST_FILE",
    "MANIFEST_FILE",
    "ONNX_FILE",
    "ONNX_LOG_PROB_FILE",
    "PLOTS_DIR",
    "WEIGHTS_FILE",
    "check_manifest",
    "dump_manifest",
    "json_safe",
    "manifest_columns",
    "manifest_flow_config",
    "utc_now",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# sha256 of manifest.json's bytes: the manifest lists every other file's digest, this covers it.
MANIFEST_DIGEST_FILE = "manifest.sha256"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
ONNX_LOG_PROB_FILE = "log_prob.onnx"
PLOTS_DIR = "plots"

_REQUIRED = {
    "format_version": int,
    "name": str,
    "version": int,
    "created_at": str,
    "library_version": str,
    "flow_config": dict,
    "dim": int,
    "training": dict,
    "files": dict,
    "plots": list,
    "onnx": dict,
}


def utc_now() -> str:
    """Current UTC time as ISO 8601 with a trailing 'Z', second precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def json_safe(value: Any, where: str = "training") -> Any:
    """Copy ``value`` into plain JSON types; non-finite floats become None (JSON has no NaN).

    Raises TypeError naming the offending key for anything JSON cannot hold.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item(), where)  # numpy / torch scalars
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} must be a string")
            out[key] = json_safe(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist(), where)
    raise TypeError(f"{where}: {type(value).__name__} is not JSON serialisable")


def dump_manifest(manifest: dict[str, Any]) -> bytes:
    """Serialise a manifest deterministically (sorted keys, no NaN) to UTF-8 bytes."""
    return (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def check_manifest(manifest: object, name: str, version: int) -> str | None:
    """Return what is wrong with a parsed manifest for ``name``/``version``, or None if sound."""
    if not isinstance(manifest, dict):
        return "is not a JSON object"
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            return f"lacks the field {key!r}"
        value = manifest[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"field {key!r} should be {kind.__name__}, got {type(value).__name__}"
    if manifest["format_version"] > FORMAT_VERSION:
        return (
            f"has format_version {manifest['format_version']}, newer than this library reads "
            f"({FORMAT_VERSION}); upgrade cpflow"
        )
    if manifest["name"] != name or manifest["version"] != version:
        return (
            f"describes {manifest['name']!r} version {manifest['version']}, "
            "not the folder it lies in"
        )
    tenant = manifest.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        return f"field 'tenant' should be str, got {type(tenant).__name__}"
    files = manifest["files"]
    if WEIGHTS_FILE not in files:
        return f"does not list {WEIGHTS_FILE!r}"
    for filename, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64:
            return f"has a malformed sha256 for {filename!r}"
    return None


def manifest_flow_config(manifest: dict[str, Any]) -> Any:
    """The manifest's :class:`cpflow.FlowConfig` (any kind, old manifests migrated), or None
    when it holds none that validates. Callers read ``image_shape`` and ``context_dim`` from
    it, so the kinds need no branches of their own."""
    from cpflow import FlowConfig

    try:
        return FlowConfig.model_validate(manifest.get("flow_config"))
    except (TypeError, ValueError):
        return None


def manifest_columns(manifest: dict[str, Any]) -> list[str]:
    """The names of a model's data columns: those of the table it was trained on (the
    manifest's ``training.columns``), else ``x1`` ... ``x<dim>``."""
    dim = manifest.get("dim")
    dim = dim if isinstance(dim, int) and not isinstance(dim, bool) else 0
    training = manifest.get("training")
    columns = training.get("columns") if isinstance(training, dict) else None
    if (
        isinstance(columns, list)
        and len(columns) == dim
        and all(isinstance(c, str) and c for c in columns)
    ):
        return list(columns)
    return [f"x{j + 1}" for j in range(dim)]
