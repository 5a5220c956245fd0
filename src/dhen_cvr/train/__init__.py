"""Training: losses (supervised + self-supervised), the loop, where a run starts.
Public surface: :func:`train` (= :func:`plan_training` + :func:`run_training`),
:class:`TrainResult`, :class:`Trainer`; :func:`fit_intercepts` (the heads' intercept fit,
also used by the GBDT baseline)."""

from dhen_cvr.train.recalibrate import fit_intercepts
from dhen_cvr.train.run import TrainingPlan, plan_training, run_training, train
from dhen_cvr.train.trainer import BatchHook, Trainer, TrainResult

__all__ = [
    "BatchHook",
    "TrainResult",
    "Trainer",
    "TrainingPlan",
    "fit_intercepts",
    "plan_training",
    "run_training",
    "train",
]
