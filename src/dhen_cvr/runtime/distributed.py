"""One process or many: the few collective operations training and evaluation need.

Under ``torchrun --nproc_per_node K`` (the environment has ``RANK``/``WORLD_SIZE``) the
process group is created once per process (gloo on CPU, NCCL on GPU) and lives until
exit; in a plain process every helper here is a no-op, so the trainer has one code path.

Collectives run where the process group can run them: NCCL takes only CUDA tensors
(on the current device, which :func:`init_distributed` sets to ``LOCAL_RANK``), gloo
only CPU ones, so :func:`all_reduce_sum` moves its tensor to :func:`collective_device`
and back. Pickled objects (:func:`all_gather_objects`, :func:`broadcast_object`) travel
over a gloo group next to an NCCL one, so gathering evaluation scores neither needs the
current device set right nor fills GPU memory (``torch.distributed`` documents that its
object collectives under NCCL stage through ``torch.cuda.current_device()``).
:class:`SyncBatchNorm1d` makes BatchNorm see the global batch (torch's own
``SyncBatchNorm`` is GPU-only), so a K-process run trains the one-process model.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dhen_cvr.errors import DhenCvrError

__all__ = [
    "DistContext",
    "SyncBatchNorm1d",
    "all_gather_arrays",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "collective_device",
    "init_distributed",
    "is_main_process",
    "pick_device",
    "set_contributes",
    "sync_batchnorm",
    "sync_batchnorm_layers",
]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job. ``rank 0`` is the one that writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: Literal["auto", "cpu", "cuda"], local_rank: int = 0) -> torch.device:
    """``auto``: the local GPU when there is one, else the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise DhenCvrError("train.device is 'cuda' but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(preference: Literal["auto", "cpu", "cuda"] = "auto") -> DistContext:
    """Join the ``torchrun`` job if there is one (idempotent), else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world_size <= 1 and not dist.is_initialized():
        return DistContext(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def is_main_process() -> bool:
    """True in a plain process and on rank 0 of a job (for printing)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _destroy() -> None:
    if dist.is_initialized():
        _OBJECT_GROUP.clear()
        dist.destroy_process_group()


def _uses_nccl() -> bool:
    return dist.is_initialized() and dist.get_backend() == "nccl"


def collective_device() -> torch.device:
    """The device the default process group's tensors must be on: the current CUDA
    device under NCCL, else the CPU (gloo, or no process group)."""
    if _uses_nccl():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_OBJECT_GROUP: list[Any] = []  # the gloo group for pickled objects under NCCL (made once)


def _object_group() -> Any:
    """None (the default group) unless it is NCCL; then a gloo group over the same ranks.
    Created lazily inside an object collective, which every rank enters in the same
    order, as ``new_group`` requires."""
    if not _uses_nccl():
        return None
    if not _OBJECT_GROUP:
        _OBJECT_GROUP.append(dist.new_group(backend="gloo"))
    return _OBJECT_GROUP[0]


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place; returned for convenience). ``values`` may
    live on any device; it is reduced on :func:`collective_device` (without a host sync
    when that is its own device)."""
    if ctx.is_distributed:
        device = collective_device()
        if values.device == device:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        else:
            moved = values.to(device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            values.copy_(moved)
    return values


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here."""
    if ctx.is_distributed:
        if _uses_nccl():  # name the device, or NCCL guesses one per rank
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, group=_object_group())
    return box[0]


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (any backend: see the module docstring)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=_object_group())
    return out


def all_gather_arrays(ctx: DistContext, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each named array over ranks (rank order), so metrics such as ROC-AUC
    are computed exactly on the union, never averaged per rank."""
    parts = all_gather_objects(ctx, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum of the gradients over ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class SyncBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` on ``B x C`` inputs whose training statistics are those of the
    *global* batch (all ranks, any backend, CPU or GPU), so K processes with ``B / K``
    rows each compute what one process computes on ``B`` rows. Its state dict is that of
    ``BatchNorm1d``. A rank with ``contributes = False`` (a placeholder batch) takes part
    in the collectives but adds no rows to the statistics. Outside a process group, in
    eval mode or without running statistics it is a plain ``BatchNorm1d``."""

    contributes: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and dist.is_initialized()):
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"SyncBatchNorm1d expects B x C inputs, got {tuple(x.shape)}")
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        w = 1.0 if self.contributes else 0.0
        # The global row count stays a tensor: no host sync in the forward pass.
        count = torch.full((1,), x.shape[0] * w, device=x.device, dtype=torch.float32)
        dist.all_reduce(count)
        mean = _AllReduceSum.apply(x.sum(0) * w) / count
        var = _AllReduceSum.apply(((x - mean) ** 2).sum(0) * w) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            if self.momentum is not None:
                m: float | torch.Tensor = self.momentum
            else:
                m = 1.0 / self.num_batches_tracked.float()
            self.running_mean.lerp_(mean.detach(), m)
            unbiased = var.detach() * count / (count - 1).clamp_min(1)
            self.running_var.lerp_(unbiased, m)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


def sync_batchnorm(module: nn.Module) -> None:
    """Replace every ``BatchNorm1d`` inside ``module`` by :class:`SyncBatchNorm1d` (same
    parameters and buffers); call before building the optimiser."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            synced = SyncBatchNorm1d(
                child.num_features,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            ).to(next(child.buffers()).device)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            sync_batchnorm(child)


def sync_batchnorm_layers(module: nn.Module) -> list[SyncBatchNorm1d]:
    """The :class:`SyncBatchNorm1d` layers inside ``module`` (found once, set per step)."""
    return [m for m in module.modules() if isinstance(m, SyncBatchNorm1d)]


def set_contributes(module: nn.Module, contributes: bool) -> None:
    """Whether this rank's rows count in the :class:`SyncBatchNorm1d` statistics."""
    for m in sync_batchnorm_layers(module):
        m.contributes = contributes
