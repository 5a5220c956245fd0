"""The ``train:`` section of an experiment config (optimiser, schedule, data loading)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    """How to train (DESIGN section 5).

    ``batch_size`` is the *global* batch: under ``torchrun`` with K processes each rank
    reads ``batch_size / K`` rows per step, so the same config trains the same model on
    one process or many. The learning rate warms up linearly over ``warmup_steps`` and
    then decays (``cosine`` or ``linear``) to ``min_lr_ratio * lr`` at the last step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=512, gt=0)
    epochs: int = Field(default=1, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    # The embedding tables' learning rate is lr x this (schedule included). A row is only
    # updated when its id is in the batch, so with many ids (items, pins) each row gets few
    # steps: a larger rate lets rare ids move from their random start (train/optim.py).
    embedding_lr_scale: float = Field(default=1.0, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=100, ge=0)
    decay: Literal["cosine", "linear", "none"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0)  # 0 turns clipping off
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = Field(default=20_000, gt=0)
    num_workers: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU threads per process (None: torch's default, one per core). Set it when several
    # runs share a machine: two processes each using every core can run 10-25x slower.
    threads: int | None = Field(default=None, gt=0)
    # Keep freed tensor memory in the process instead of returning it to the OS after each
    # step (glibc only; runtime/cpu_memory.py): 1.06-1.22x faster CPU steps, resident memory at
    # its high-water mark (benchmarks/bench_cpu_memory.py).
    retain_cpu_memory: bool = True
    log_every: int = Field(default=20, gt=0)
    checkpoint_every_steps: int = Field(default=0, ge=0)  # 0: only at the end of each epoch
    keep_checkpoints: int = Field(default=2, gt=0)
    eval_batch_size: int = Field(default=2048, gt=0)
    tensorboard: bool = True
    # After training, fit each head's intercept on the training days (train/recalibrate.py).
    recalibrate: bool = True
    # Polyak averaging: the model saved is an exponential moving average of the weights
    # (decay per step; about 1 / (1 - decay) steps averaged), not the last iterate.
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    # torch.compile the training objective (model + losses); the first steps pay for the
    # compilation (benchmarks/bench_peers.py --compile measures it on and off).
    compile: bool = False
    # DDP's find_unused_parameters: "auto" turns it on only when the config leaves some
    # parameters out of the loss (a sequence without SSL weight: its SSL projections).
    find_unused_parameters: Literal["auto"] | bool = "auto"

    @model_validator(mode="after")
    def _betas_in_range(self) -> TrainConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        return self
