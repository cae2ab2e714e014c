"""Private trainer checkpoints: tensors in safetensors, everything else in JSON; never pickle.

A checkpoint is ``state.json`` naming a ``state-<n>.safetensors`` file and its sha256. The JSON
is replaced atomically after the tensor file is fully written, so a crash mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "pack_optimizer",
    "save_checkpoint",
    "unpack_optimizer",
]

_META = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt, or from a different run)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` + ``meta`` as the directory's current checkpoint; return the JSON path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(meta.get("iteration", 0))
    tensor_name = f"state-{step}.safetensors"
    tensor_path = directory / tensor_name
    tmp = directory / (tensor_name + ".tmp")
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(flat, str(tmp))
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, tensor_path)
    record = dict(meta, tensor_file=tensor_name, tensor_sha256=_sha256(tensor_path))
    meta_tmp = directory / (_META + ".tmp")
    _fsync_write(meta_tmp, json.dumps(record, indent=1, sort_keys=True).encode())
    os.replace(meta_tmp, directory / _META)
    for old in directory.glob("state-*.safetensors"):
        if old.name != tensor_name:
            old.unlink(missing_ok=True)
    return directory / _META


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Return ``(tensors, meta)`` of the directory's checkpoint, or None when there is none."""
    directory = Path(directory)
    meta_path = directory / _META
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensor_path = directory / meta["tensor_file"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {meta_path} is unreadable: {exc}") from exc
    if not tensor_path.exists() or _sha256(tensor_path) != meta.get("tensor_sha256"):
        raise CheckpointError(
            f"checkpoint tensors {tensor_path} are missing or do not match their digest; "
            "delete the checkpoint directory to start over"
        )
    return load_file(str(tensor_path)), meta


def pack_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into safetensors-able tensors and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unpack_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """Inverse of :func:`pack_optimizer`: load the saved state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
