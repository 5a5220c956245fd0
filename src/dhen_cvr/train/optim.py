"""The optimiser and the learning-rate schedule (DESIGN section 5; paper Appendix A)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dhen_cvr.config.train import TrainConfig

__all__ = ["build_optimizer", "learning_rate", "set_learning_rate"]


def learning_rate(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine/linear decay to
    ``min_lr_ratio * lr`` at ``total_steps`` (constant after)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "none":
        return cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    done = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.decay == "cosine":
        return floor + 0.5 * (1.0 + math.cos(math.pi * done)) * (cfg.lr - floor)
    return cfg.lr - done * (cfg.lr - floor)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, norms or per-feature scales).

    Groups: embedding-table weights (``nn.Embedding``; weight decay as matrices, and
    ``lr_scale = cfg.embedding_lr_scale``; only when that is not 1), other matrices, and
    the rest. The trainer sets each group's rate to ``lr x group["lr_scale"]``
    (:func:`set_learning_rate`).

    The fused kernel (one pass over all parameters; CPU and CUDA in torch >= 2.4; 6.5x
    the single-tensor loop and 3.9x ``foreach`` on a CPU for tiny-sized parameters) where
    the device supports it, else ``foreach``. Same update rule either way."""
    # At scale 1 the tables stay in the matrices' group: the same two groups as before
    # the option existed, so optimiser states in older checkpoints still load.
    tables = (
        set()
        if cfg.embedding_lr_scale == 1.0
        else {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    )
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in params if id(p) in tables],
            "weight_decay": cfg.weight_decay,
            "lr_scale": cfg.embedding_lr_scale,
        },
        {
            "params": [p for p in params if p.dim() >= 2 and id(p) not in tables],
            "weight_decay": cfg.weight_decay,
            "lr_scale": 1.0,
        },
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr x group["lr_scale"]`` (1 where a group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
