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
    """Writes one record per log window (the trainer's mean step losses, examples/s since
    the previous record, lr, epoch) to ``RUN/metrics.jsonl`` (one JSON object per line)
    and TensorBoard ``RUN/tb``. Rank 0 writes; every rank returns the same record."""

    def __init__(
        self, run: Path, ctx: DistContext, *, tensorboard: bool, examples_seen: int
    ) -> None:
        self.path = run / "metrics.jsonl" if ctx.is_main else None
        self.writer: Any = None
        if ctx.is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tb"))
        self.started = time.perf_counter()
        self.examples = examples_seen  # at the start of the first window

    def write(
        self, progress: TrainProgress, means: dict[str, float], *, lr: float, epoch: int
    ) -> dict[str, float]:
        """Write and return the record of the window that ends at ``progress`` (``means``:
        its mean losses; ``lr`` and ``epoch``: those of its last step)."""
        now = time.perf_counter()
        elapsed = max(now - self.started, 1e-9)
        window_examples = progress.examples_seen - self.examples
        record = dict(means)
        record |= {"examples_per_s": window_examples / elapsed, "lr": lr, "epoch": epoch}
        self.started, self.examples = now, progress.examples_seen
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
