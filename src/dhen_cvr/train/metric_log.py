"""Training metrics: windowed means of the step losses to ``metrics.jsonl`` and
TensorBoard; the last, partial window is written at the end of training."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dhen_cvr.errors import DhenCvrError
from dhen_cvr.runtime.checkpoint import TrainProgress
from dhen_cvr.runtime.distributed import DistContext

__all__ = ["MetricLog"]


class MetricLog:
    """Averages the step losses over ``every`` steps and writes them, with examples/s,
    to ``RUN/metrics.jsonl`` (one JSON object per line) and TensorBoard ``RUN/tb``.
    Rank 0 writes; every rank keeps the window so ``add`` returns the same record."""

    def __init__(self, run: Path, ctx: DistContext, *, tensorboard: bool, every: int) -> None:
        self.path = run / "metrics.jsonl" if ctx.is_main else None
        self.every = every
        self.writer: Any = None
        self._last: tuple[TrainProgress, float, int] = (TrainProgress(), 0.0, 0)
        if ctx.is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tb"))
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(
        self, progress: TrainProgress, losses: dict[str, float], *, lr: float, epoch: int
    ) -> dict[str, float] | None:
        """Add one step's losses; every ``every`` steps write and return the window's
        record (mean losses, examples/s, and the lr and epoch of its last step)."""
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self._last = (progress, lr, epoch)
        return self.flush() if self.steps >= self.every else None

    def flush(self) -> dict[str, float] | None:
        """Write the window so far (also a partial one: the end of a run shorter than, or
        not a multiple of, ``every`` steps); None when it is empty."""
        if not self.steps:
            return None
        progress, lr, epoch = self._last
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        record = {k: v / self.steps for k, v in self.sums.items() if k != "examples"}
        record |= {"examples_per_s": self.sums["examples"] / elapsed, "lr": lr, "epoch": epoch}
        self._reset()
        if self.path is not None:
            line = {"step": progress.step, "examples_seen": progress.examples_seen, **record}
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(line) + "\n")
            except OSError as err:
                raise DhenCvrError(f"cannot write {self.path}: {err.strerror or err}") from err
        if self.writer is not None:
            for key, value in record.items():
                self.writer.add_scalar(f"train/{key}", value, progress.step)
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
