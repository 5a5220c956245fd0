"""Training: losses (supervised + self-supervised), the trainer, incremental days, DDP,
checkpoints. Public surface: :func:`train`, :func:`train_incremental`, :func:`load_trained_model`.

Exports resolve lazily so that ``dhen_cvr.config`` can import the config classes of this
package without importing the trainer (which imports ``dhen_cvr.config``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "dhen_cvr.train.trainer",
    "TrainResult": "dhen_cvr.train.trainer",
    "train_incremental": "dhen_cvr.train.incremental",
    "IncrementalResult": "dhen_cvr.train.incremental",
    "load_checkpoint": "dhen_cvr.train.checkpoint",
    "load_trained_model": "dhen_cvr.train.checkpoint",
    "LossConfig": "dhen_cvr.train.losses",
    "TrainConfig": "dhen_cvr.train.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dhen_cvr.train' has no attribute {name!r}")
