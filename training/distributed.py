"""Data-parallel training with torch.distributed: the process group, DDP and what the ranks
must agree on.

Launched by torchrun (``torchrun --nproc-per-node N -m training.cli ...``, or
``cpflow-train --nproc N``, which runs torchrun itself), every process runs the same trainer
over the whole data set. Semantics:

* ``batch_size`` is per process; the global batch is ``batch_size x world size``. Every rank
  draws the same global batch (same seeded permutation) and trains on its slice, and probes
  and dequantisation noise are drawn for the global batch and sliced, so N processes with
  batch B take the step one process with batch N*B takes on the same rows (the learning rate
  applies to that global batch).
* DDP averages the gradients (gloo on CPU, nccl on CUDA); the loss of each slice is weighted
  so that the average is the global batch's mean even when slices differ in size.
* Rank 0 alone validates (the value is broadcast, so early stopping and divergence are decided
  identically everywhere), writes checkpoints, makes plots and publishes one version.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist

from training.settings import TorchrunSettings

__all__ = ["Dist", "current", "init_from_env", "launch"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, total: int) -> tuple[int, int]:
        """(start, stop) of this rank's part of a global batch of ``total`` rows."""
        per, extra = divmod(total, self.world)
        start = self.rank * per + min(self.rank, extra)
        return start, start + per + (1 if self.rank < extra else 0)

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (every rank must call)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is set on any rank (every rank must call)."""
        if self.world == 1:
            return [bool(f) for f in flags]
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else None
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP around ``module`` (its forward is the objective), or the module itself."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)


def current() -> Dist:
    """The running process group, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    local = TorchrunSettings().local_rank
    rank = dist.get_rank()
    return Dist(rank, dist.get_world_size(), rank if local is None else local)


def init_from_env(device: str | None = None) -> Dist:
    """Join the group torchrun describes in the environment (WORLD_SIZE > 1): nccl for CUDA
    devices (each rank on cuda:LOCAL_RANK), gloo otherwise. A no-op for one process."""
    torchrun = TorchrunSettings()
    if torchrun.world_size <= 1 or dist.is_initialized():
        return current()
    cuda = (device or "cpu").startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(torchrun.local_rank or 0)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return current()


def launch(nproc: int, module: str, args: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Start ``python -m module args`` as a torchrun group of ``nproc`` processes on this
    machine (a rendezvous of its own, so groups never meet each other)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", module, *args]
    return subprocess.Popen(cmd, **popen)
