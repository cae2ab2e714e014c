"""What a training run is between two iterations: :class:`TrainState`, and its checkpoint form.

The dataclass's fields are the single list of what a resume needs. Each field names how it is
stored (its ``codec``: a module's or optimizer's state, a generator's state, a tensor, named
tensors, or plain JSON), and :func:`state_to_checkpoint` / :func:`restore_state` loop over
the fields, so a field added here is saved and restored without another line elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch

from training.checkpoint import CheckpointError, pack_optimizer, unpack_optimizer

__all__ = ["TrainState", "restore_state", "state_to_checkpoint"]

Tensors = dict[str, torch.Tensor]


class _Codec(Protocol):
    """How one field becomes tensors + a JSON value, and back into the live value."""

    def dump(self, value: Any) -> tuple[Tensors, Any]: ...

    def load(self, value: Any, tensors: Tensors, meta: Any) -> Any: ...


class _Module:
    def dump(self, value: torch.nn.Module) -> tuple[Tensors, Any]:
        return dict(value.state_dict()), None

    def load(self, value: torch.nn.Module, tensors: Tensors, meta: Any) -> torch.nn.Module:
        value.load_state_dict(tensors)
        return value


class _Optimizer:
    def dump(self, value: torch.optim.Optimizer) -> tuple[Tensors, Any]:
        return pack_optimizer(value)

    def load(
        self, value: torch.optim.Optimizer, tensors: Tensors, meta: Any
    ) -> torch.optim.Optimizer:
        unpack_optimizer(value, tensors, meta)
        return value


class _Generator:
    def dump(self, value: torch.Generator) -> tuple[Tensors, Any]:
        return {"state": value.get_state().cpu()}, None

    def load(self, value: torch.Generator, tensors: Tensors, meta: Any) -> torch.Generator:
        value.set_state(tensors["state"].to(torch.uint8))
        return value


class _Tensor:
    """An optional tensor (None is recorded as absent)."""

    def dump(self, value: torch.Tensor | None) -> tuple[Tensors, Any]:
        return ({} if value is None else {"value": value}), value is not None

    def load(self, value: Any, tensors: Tensors, meta: Any) -> torch.Tensor | None:
        return tensors["value"] if meta else None


class _NamedTensors:
    """An optional dict of tensors (a state_dict kept aside)."""

    def dump(self, value: Tensors | None) -> tuple[Tensors, Any]:
        return dict(value or {}), value is not None

    def load(self, value: Any, tensors: Tensors, meta: Any) -> Tensors | None:
        return dict(tensors) if meta else None


class _Json:
    """Numbers, flags and lists of them (and of JSON records); inf is kept as JSON Infinity."""

    def dump(self, value: Any) -> tuple[Tensors, Any]:
        return {}, value

    def load(self, value: Any, tensors: Tensors, meta: Any) -> Any:
        return list(meta) if isinstance(meta, list) else type(value)(meta)


_CODECS: dict[str, _Codec] = {
    "module": _Module(),
    "optimizer": _Optimizer(),
    "generator": _Generator(),
    "tensor": _Tensor(),
    "tensors": _NamedTensors(),
    "json": _Json(),
}


# Field metadata: which codec stores the field.
_MODULE, _OPTIMIZER, _GENERATOR = (
    {"codec": "module"},
    {"codec": "optimizer"},
    {"codec": "generator"},
)
_TENSOR, _TENSORS, _JSON = {"codec": "tensor"}, {"codec": "tensors"}, {"codec": "json"}


@dataclass
class TrainState:
    """Everything that changes while training and that a resumed run must continue from."""

    model: torch.nn.Module = field(metadata=_MODULE)
    optimizer: torch.optim.Optimizer = field(metadata=_OPTIMIZER)
    rng_batch: torch.Generator = field(metadata=_GENERATOR)  # batch order, dequantisation noise
    rng_loss: torch.Generator = field(metadata=_GENERATOR)  # the surrogate's probes
    perm: torch.Tensor | None = field(metadata=_TENSOR, default=None)  # this epoch's row order
    best_weights: Tensors | None = field(metadata=_TENSORS, default=None)
    iteration: int = field(metadata=_JSON, default=0)
    epoch: int = field(metadata=_JSON, default=0)
    epoch_rows: int = field(metadata=_JSON, default=0)  # rows of the epoch already drawn
    history: list[dict[str, Any]] = field(metadata=_JSON, default_factory=list)
    best_val: float = field(metadata=_JSON, default=math.inf)
    best_iteration: int = field(metadata=_JSON, default=0)
    bad_validations: int = field(metadata=_JSON, default=0)
    lr_decays: int = field(metadata=_JSON, default=0)  # plateau schedule: 10x decays so far
    stopped_early: bool = field(metadata=_JSON, default=False)
    elapsed_s: float = field(
        metadata=_JSON, default=0.0
    )  # wall time of the run until the last save
    loss_window: list[float] = field(metadata=_JSON, default_factory=list)  # since last validation
    cg_window: list[float] = field(metadata=_JSON, default_factory=list)


def state_to_checkpoint(state: TrainState) -> tuple[Tensors, dict[str, Any]]:
    """Every field of ``state`` as tensors (``<field>.<name>``) and JSON (``meta[<field>]``)."""
    tensors: Tensors = {}
    meta: dict[str, Any] = {}
    for f in fields(state):
        own, meta[f.name] = _CODECS[f.metadata["codec"]].dump(getattr(state, f.name))
        tensors.update({f"{f.name}.{key}": value for key, value in own.items()})
    return tensors, meta


def restore_state(state: TrainState, tensors: Tensors, meta: dict[str, Any]) -> None:
    """Load every field of ``state`` from a checkpoint written by :func:`state_to_checkpoint`."""
    missing = [f.name for f in fields(state) if f.name not in meta]
    if missing:
        raise CheckpointError(
            f"checkpoint lacks {', '.join(missing)} (written by another version of cpflow?); "
            "use another checkpoint directory or resume=False"
        )
    for f in fields(state):
        prefix = f"{f.name}."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        codec = _CODECS[f.metadata["codec"]]
        setattr(state, f.name, codec.load(getattr(state, f.name), own, meta[f.name]))
