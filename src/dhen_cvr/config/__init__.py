"""Typed configuration: an experiment is ``model:``, ``loss:`` and ``train:`` sections
(:class:`ExperimentConfig`), read from YAML under ``configs/`` with ``--set`` overrides.

This package sits below training, evaluation and the runtime layer: each of them reads
its section from here, and nothing here imports them.
"""

from dhen_cvr.config.experiment import (
    PRESET_DIR,
    ExperimentConfig,
    apply_overrides,
    load_experiment_config,
    resolve_config_path,
)
from dhen_cvr.config.loss import LossConfig, SSLConfig
from dhen_cvr.config.train import TrainConfig

__all__ = [
    "PRESET_DIR",
    "ExperimentConfig",
    "LossConfig",
    "SSLConfig",
    "TrainConfig",
    "apply_overrides",
    "load_experiment_config",
    "resolve_config_path",
]
