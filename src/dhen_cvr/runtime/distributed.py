"""One process or many: the few collective operations training and evaluation need.

Under ``torchrun --nproc_per_node K`` (the environment has ``RANK``/``WORLD_SIZE``) the
process group is created once per process (gloo on CPU, NCCL on GPU) and lives until
exit; in a plain process every helper here is a no-op, so the trainer has one code path.
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
    "init_distributed",
    "is_main_process",
    "pick_device",
    "set_contributes",
    "sync_batchnorm",
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
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place; returned for convenience)."""
    if ctx.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here."""
    if ctx.is_distributed:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
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
        n = torch.tensor([x.shape[0] * w], device=x.device)
        dist.all_reduce(n)
        count = float(n.item())
        mean = _AllReduceSum.apply(x.sum(0) * w) / count
        var = _AllReduceSum.apply(((x - mean) ** 2).sum(0) * w) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1 / int(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * count / max(count - 1, 1), m)
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


def set_contributes(module: nn.Module, contributes: bool) -> None:
    """Whether this rank's rows count in the :class:`SyncBatchNorm1d` statistics."""
    for m in module.modules():
        if isinstance(m, SyncBatchNorm1d):
            m.contributes = contributes
