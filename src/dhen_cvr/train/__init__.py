"""Training: losses (supervised + self-supervised), the loop, where a run starts.
Public surface: :func:`train` (= :func:`plan_training` + :func:`run_training`),
:class:`TrainResult`, :class:`Trainer`."""

from dhen_cvr.train.run import TrainingPlan, plan_training, run_training, train
from dhen_cvr.train.trainer import BatchHook, Trainer, TrainResult

__all__ = [
    "BatchHook",
    "TrainResult",
    "Trainer",
    "TrainingPlan",
    "plan_training",
    "run_training",
    "train",
]
